"""Tell the planner that one queue is a small part of the message table.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Every statement of the layer finds one queue's rows through the (prefix, queue, id) index.
# When ANALYZE happened to see one queue holding every row (one busy channel), the planner
# took "queue = $2" to match the whole table, and a plan made for any queue (the generic
# plan PostgreSQL switches to after five calls) walked the primary key in id order looking
# for the queue's first row: a send to an empty queue read the whole backlog of another one
# (49 ms a send with 200,000 rows queued elsewhere, tests/test_plans.py shows the plan). Queues
# are many in every deployment (one per process, one per normal channel), so the estimate is
# fixed here: each distinct value covers two rows on average, whatever ANALYZE samples.
_DISTINCT = "-0.5"


def upgrade() -> None:
    op.execute(f"ALTER TABLE channel_layer_pg_message ALTER COLUMN queue SET (n_distinct = {_DISTINCT})")
    # The setting counts from the next ANALYZE; plans made before it keep the old estimate.
    op.execute("ANALYZE channel_layer_pg_message")


def downgrade() -> None:
    op.execute("ALTER TABLE channel_layer_pg_message ALTER COLUMN queue RESET (n_distinct)")
