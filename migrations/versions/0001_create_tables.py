"""Create the message and group membership tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "channel_layer_pg_message",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("prefix", sa.Text, nullable=False),
        sa.Column("queue", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
    )
    op.create_index(
        "channel_layer_pg_message_queue_idx", "channel_layer_pg_message", ["prefix", "queue", "id"]
    )
    op.create_index("channel_layer_pg_message_expires_idx", "channel_layer_pg_message", ["expires_at"])
    op.create_table(
        "channel_layer_pg_group_member",
        sa.Column("prefix", sa.Text, primary_key=True),
        sa.Column("group_name", sa.Text, primary_key=True),
        sa.Column("channel", sa.Text, primary_key=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "channel_layer_pg_group_member_expires_idx", "channel_layer_pg_group_member", ["expires_at"]
    )


def downgrade() -> None:
    op.drop_table("channel_layer_pg_group_member")
    op.drop_table("channel_layer_pg_message")
