"""One group message row per receiving process; vacuum the message table by row count.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# A queue table turns over its rows all day: vacuum and analyze it after a fixed number of
# changed rows rather than after a fraction of a table that is mostly empty.
_AUTOVACUUM = {
    "autovacuum_vacuum_scale_factor": "0",
    "autovacuum_vacuum_threshold": "5000",
    "autovacuum_analyze_scale_factor": "0",
    "autovacuum_analyze_threshold": "5000",
}


def upgrade() -> None:
    # The process-local channels a group message is for; NULL for a message to "channel" alone.
    op.add_column(
        "channel_layer_pg_message", sa.Column("recipients", postgresql.ARRAY(sa.Text), nullable=True)
    )
    settings = ", ".join(f"{name} = {value}" for name, value in _AUTOVACUUM.items())
    op.execute(f"ALTER TABLE channel_layer_pg_message SET ({settings})")


def downgrade() -> None:
    op.execute(f"ALTER TABLE channel_layer_pg_message RESET ({', '.join(_AUTOVACUUM)})")
    op.drop_column("channel_layer_pg_message", "recipients")
