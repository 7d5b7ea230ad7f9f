"""Which processes are alive, and removing what dead ones left: their memberships and queues.

A process (one layer instance) is alive while one of its sessions holds the shared advisory
lock on its key (naming.liveness_lock_key: the namespace 0x636C in the top 16 bits, the 48
random bits of its process id below). pg_locks lists the locks every session holds, to any
role, without taking any: the check never gets in the way of an owner re-taking its lock
after a reconnect, as pg_try_advisory_lock from the cleaner would.

A process's rows are found by name: its process-local channels are ``<prefix>.<id>!<local>``
and its queue ``<prefix>.<id>!``, the id of the shape naming.PROCESS_ID_PATTERN. Normal
channels (no ``!``) have no owning process and are never touched here.

The lock table is read as SQL text (bit arithmetic on pg_locks' columns reads better there,
and pg_catalog is named in full); the layer's tables through schema.py, so that the
``schema`` option applies to them as to every other statement (db.py's schema_translate_map).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Text,
    any_,
    bindparam,
    column,
    delete,
    func,
    literal,
    literal_column,
    select,
    text,
    union,
)
from sqlalchemy.dialects.postgresql import ARRAY

from ...naming import (
    LIVENESS_LOCK_NAMESPACE,
    PROCESS_ID_BITS,
    PROCESS_ID_HEX_DIGITS,
    PROCESS_ID_LENGTH,
    PROCESS_ID_PATTERN,
)
from .. import sql
from ..schema import group_member, message
from .admin import CLEANUP_BATCH

# Keys (bigint form: classid is the high 32 bits, objid the low, objsubid 1) held in this
# database, in the layer's namespace, decoded back to process ids.
_LIVE_SQL = f"""
    SELECT 'p' || lpad(to_hex(((l.classid::int8 << 32) | l.objid::int8) & {(1 << PROCESS_ID_BITS) - 1}::int8),
                       {PROCESS_ID_HEX_DIGITS}, '0') AS process
    FROM pg_catalog.pg_locks l
    WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
      AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
      AND (((l.classid::int8 << 32) | l.objid::int8) >> {PROCESS_ID_BITS}) = {LIVENESS_LOCK_NAMESPACE}
"""


def _live() -> Any:
    """A fresh subquery of the live process ids (each statement names its own)."""
    return select(text(_LIVE_SQL).columns(column("process", Text)).subquery("live").c.process)


# The process ids of every live process: cheap, it reads only the lock table.
LIVE_PROCESSES = text(
    f"SELECT coalesce(array_agg(DISTINCT live.process), '{{}}') AS processes FROM ({_LIVE_SQL}) live"
)

_NO_PROCESSES = literal_column("'{}'", ARRAY(Text))


def _owner(queue: Any) -> Any:
    """``.<id>`` of a process-local ``queue`` (``<prefix>.<id>!``): its last characters but the ``!``."""
    return func.right(func.left(queue, -1), PROCESS_ID_LENGTH + 1)


# The processes that own rows (memberships, queued messages) and hold no lock now. It reads
# every membership (about 80 ms per 100,000 on 2 cores); the candidate queues are made
# distinct before the pattern test, so the regular expression runs once per queue, not per row.
_queues = (
    union(
        select(sql.local_queue_of(group_member.c.channel).label("queue")).where(
            sql.is_process_local(group_member.c.channel)
        ),
        select(message.c.queue).where(message.c.queue.like("%!")),
    )
    .cte("queues")
    .prefix_with("MATERIALIZED")
)
_owners = (
    select(func.substring(_queues.c.queue, literal(rf"\.({PROCESS_ID_PATTERN})!$")).label("process"))
    .select_from(_queues)
    .distinct()
    .cte("owners")
)
LOCKLESS_OWNERS = select(
    func.coalesce(func.array_agg(_owners.c.process), _NO_PROCESSES).label("processes")
).where(_owners.c.process.is_not(None), _owners.c.process.not_in(_live()))

# Each removes a batch of a dead process's rows; ``dead`` are ids found lockless before, and
# each statement checks again, in itself, that no lock has appeared since (a process that was
# reconnecting, or just starting), so a live process never loses a row. ARRAY(...) makes that
# check one initplan, run once per statement rather than once per row. The ORDER BY walks the
# index: with enable_seqscan off (store/db.py) a sequential scan is priced so high that
# PostgreSQL would JIT-compile the statement, measured at 0.8 s of 1 s.
_dead = (
    func.unnest(bindparam("dead", type_=ARRAY(Text)))
    .table_valued("process")
    .render_derived(with_types=False)
    .alias("d")
)
_still_dead = func.array(
    select(literal(".") + _dead.c.process).where(_dead.c.process.not_in(_live())).scalar_subquery()
)

_m = group_member.alias("m")
_gone_members = (
    select(_m.c.prefix, _m.c.group_name, _m.c.channel)
    .where(sql.is_process_local(_m.c.channel), _owner(sql.local_queue_of(_m.c.channel)) == any_(_still_dead))
    .order_by(_m.c.prefix, _m.c.group_name, _m.c.channel)
    .limit(CLEANUP_BATCH)
    .with_for_update(skip_locked=True)
    .subquery("gone")
)
DELETE_DEAD_MEMBERS = delete(group_member).where(
    group_member.c.prefix == _gone_members.c.prefix,
    group_member.c.group_name == _gone_members.c.group_name,
    group_member.c.channel == _gone_members.c.channel,
)

_q = message.alias("q")
DELETE_DEAD_MESSAGES = delete(message).where(
    message.c.id.in_(
        select(_q.c.id)
        .where(_q.c.queue.like("%!"), _owner(_q.c.queue) == any_(_still_dead))
        .order_by(_q.c.prefix, _q.c.queue, _q.c.id)
        .limit(CLEANUP_BATCH)
        .with_for_update(skip_locked=True)
    )
)
