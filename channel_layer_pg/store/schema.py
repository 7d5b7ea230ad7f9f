"""The layer's tables as SQLAlchemy Core definitions; Alembic migrations create them."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, DateTime, Identity, Index, LargeBinary, MetaData, Table, Text
from sqlalchemy.dialects.postgresql import ARRAY

metadata = MetaData()

VERSION_TABLE = "channel_layer_pg_alembic_version"  # ours, so the host app's Alembic history is untouched

# One row per undelivered message. "queue" is what readers claim from: the channel name
# itself, or for a process-local channel its non-local part ("x.abc!"), so one process claims
# all its local traffic with one statement. A group_send stores one row per receiving
# process, not per member: "recipients" then lists the process-local channels it is for
# ("channel" holds the non-local part), and the receiving process fans it out. Capacity
# counts per channel: a channel's own rows and the group rows that list it.
message = Table(
    "channel_layer_pg_message",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("prefix", Text, nullable=False),
    Column("queue", Text, nullable=False),
    Column("channel", Text, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("recipients", ARRAY(Text), nullable=True),
    Index("channel_layer_pg_message_queue_idx", "prefix", "queue", "id"),
    Index("channel_layer_pg_message_expires_idx", "expires_at"),
)

# Membership is unique per (prefix, group, channel): adding twice refreshes the expiry.
group_member = Table(
    "channel_layer_pg_group_member",
    metadata,
    Column("prefix", Text, primary_key=True),
    Column("group_name", Text, primary_key=True),
    Column("channel", Text, primary_key=True),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Index("channel_layer_pg_group_member_expires_idx", "expires_at"),
)


def schema_translation(schema: str | None) -> dict[str | None, str] | None:
    """SQLAlchemy's schema_translate_map that puts the tables in ``schema`` (None: unqualified)."""
    return None if schema is None else {None: schema}


def regclass_name(table_name: str, schema: str | None) -> str:
    """``table_name`` as to_regclass() reads it, qualified by ``schema`` if given."""
    if schema is None:
        return table_name
    return '"' + schema.replace('"', '""') + '".' + table_name
