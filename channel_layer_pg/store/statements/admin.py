"""Group membership, flush, cleanup, and the checks a layer runs on its database."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import (
    BigInteger,
    Interval,
    Text,
    and_,
    bindparam,
    cast,
    delete,
    func,
    literal,
    literal_column,
    select,
)
from sqlalchemy.dialects.postgresql import OID
from sqlalchemy.dialects.postgresql import insert as pg_insert

from .. import sql
from ..schema import group_member, message

if TYPE_CHECKING:
    pass


_member_expiry = bindparam("member_expires_at_interval", type_=Interval)
_group_add_values = pg_insert(group_member).values(
    prefix=sql.prefix,
    group_name=bindparam("group", type_=Text),
    channel=bindparam("channel", type_=Text),
    expires_at=sql.now + _member_expiry,
)
GROUP_ADD = _group_add_values.on_conflict_do_update(
    index_elements=[group_member.c.prefix, group_member.c.group_name, group_member.c.channel],
    set_={"expires_at": _group_add_values.excluded.expires_at},
)
# group_expiry=0 means memberships never lapse.
GROUP_ADD_FOREVER = (
    pg_insert(group_member)
    .values(
        prefix=sql.prefix,
        group_name=bindparam("group", type_=Text),
        channel=bindparam("channel", type_=Text),
        expires_at=literal_column("'infinity'::timestamptz"),
    )
    .on_conflict_do_update(
        index_elements=[group_member.c.prefix, group_member.c.group_name, group_member.c.channel],
        set_={"expires_at": literal_column("'infinity'::timestamptz")},
    )
)

GROUP_DISCARD = delete(group_member).where(
    group_member.c.prefix == sql.prefix,
    group_member.c.group_name == bindparam("group", type_=Text),
    group_member.c.channel == bindparam("channel", type_=Text),
)


# Which database a session is in, compared between the layer's connection and an application's
# before a transactional send. The system identifier is set by initdb and survives restarts, so
# it names the server however a session reaches it (host name, address, socket); the database
# name is unique within it; the table's oid is whatever the session's search_path makes the name
# mean (None if nothing). Every part is readable by any role that may use the layer.
_control = func.pg_control_system().table_valued("system_identifier").alias("control")
DATABASE_IDENTITY = select(
    select(_control.c.system_identifier).scalar_subquery().label("system"),
    func.current_database().label("database"),
    cast(func.to_regclass(bindparam("table", message.name, type_=Text)), OID).label("message_table"),
)

# Reads no row, yet fails unless both tables exist and the role may read them: a cheap check
# that the database answers and has the schema.
PING = select(
    select(message.c.id).limit(0).scalar_subquery().label("message"),
    select(group_member.c.prefix).limit(0).scalar_subquery().label("group_member"),
)

FLUSH_MESSAGES = delete(message).where(message.c.prefix == sql.prefix)
FLUSH_GROUPS = delete(group_member).where(group_member.c.prefix == sql.prefix)

# Cleanup works in bounded batches so no statement holds many row locks or runs long. The batch
# is written into the statement: a generic plan for LIMIT $1 (PostgreSQL's choice after five
# runs) guesses a tenth of the expired rows, and was measured reading the whole table
# for every batch after a mass expiry (91 ms a batch of 1,000).
CLEANUP_BATCH = 1000
_batch = literal_column(str(CLEANUP_BATCH), BigInteger)
_expired_messages = (
    select(message.c.id)
    .where(message.c.expires_at <= sql.now)
    .limit(_batch)
    .with_for_update(skip_locked=True)
)
DELETE_EXPIRED_MESSAGES = delete(message).where(message.c.id.in_(_expired_messages))

_lapsed_members = (
    select(group_member.c.prefix, group_member.c.group_name, group_member.c.channel)
    .where(group_member.c.expires_at <= sql.now)
    .limit(_batch)
    .with_for_update(skip_locked=True)
    .subquery("lapsed")
)
DELETE_LAPSED_MEMBERS = delete(group_member).where(
    and_(
        group_member.c.prefix == _lapsed_members.c.prefix,
        group_member.c.group_name == _lapsed_members.c.group_name,
        group_member.c.channel == _lapsed_members.c.channel,
    )
)

# Wakes whoever LISTENs on ``topic``. The listener sends one through the pool when it first
# connects, to check that what the layer's statements send reaches its LISTEN connection.
NOTIFY = select(func.pg_notify(bindparam("topic", type_=Text), literal("", Text)))
