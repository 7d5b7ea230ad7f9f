"""Which processes are alive, and removing what dead ones left: their memberships and queues.

A process (one layer instance) is alive while one of its LISTEN sessions holds the shared
advisory lock on its key (naming.liveness_lock_key: the namespace 0x636C in the top 16 bits,
the 48 random bits of its process id below). pg_locks lists the locks every session holds,
to any role, without taking any: the check never gets in the way of an owner re-taking its
lock after a reconnect, as pg_try_advisory_lock from the cleaner would.

A process's rows are found by name: its process-local channels are ``<prefix>.<id>!<local>``
and its queue ``<prefix>.<id>!``: ``.<id>`` is the 14 characters before the ``!``.
Normal channels (no ``!``) have no owning process and are never touched here.

Written as SQL text: bit arithmetic on pg_locks' columns reads better there than in Core.
"""

from __future__ import annotations

from sqlalchemy import ARRAY, Text, bindparam, text

from ...naming import LIVENESS_LOCK_NAMESPACE
from .admin import CLEANUP_BATCH

_NAMESPACE = str(LIVENESS_LOCK_NAMESPACE)

# Keys (bigint form: classid is the high 32 bits, objid the low, objsubid 1) held in this
# database, in the layer's namespace, decoded back to process ids.
_LIVE = f"""
    SELECT 'p' || lpad(to_hex(((l.classid::int8 << 32) | l.objid::int8) & x'ffffffffffff'::int8), 12, '0')
           AS process
    FROM pg_catalog.pg_locks l
    WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
      AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())
      AND (l.classid::int8 >> 16) = {_NAMESPACE}
"""

# The process ids of every live process: cheap, it reads only the lock table.
LIVE_PROCESSES = text(
    f"SELECT coalesce(array_agg(DISTINCT live.process), '{{}}') AS processes FROM ({_LIVE}) live"
)

# The processes that own rows (memberships, queued messages) and hold no lock now. It reads
# every membership (about 80 ms per 100,000 on 2 cores); the candidate queues are made
# distinct before the pattern test, so the regular expression runs once per queue, not per row.
LOCKLESS_OWNERS = text(
    rf"""
    WITH queues AS MATERIALIZED (
        SELECT left(m.channel, strpos(m.channel, '!')) AS queue
        FROM channel_layer_pg_group_member m WHERE strpos(m.channel, '!') > 0
        UNION
        SELECT q.queue FROM channel_layer_pg_message q WHERE q.queue LIKE '%!'
    ), owners AS (
        SELECT DISTINCT substring(queue FROM '\.(p[0-9a-f]{{12}})!$') AS process FROM queues
    )
    SELECT coalesce(array_agg(owners.process), '{{}}') AS processes FROM owners
    WHERE owners.process IS NOT NULL AND owners.process NOT IN ({_LIVE})
    """
)

# Each removes a batch of a dead process's rows; ``dead`` are ids found lockless before, and
# each statement checks again, in itself, that no lock has appeared since (a process that was
# reconnecting, or just starting), so a live process never loses a row. ARRAY(...) makes that
# check one initplan, run once per statement rather than once per row. The ORDER BY walks the
# index: with enable_seqscan off (store/db.py) a sequential scan is priced so high that
# PostgreSQL would JIT-compile the statement, measured at 0.8 s of 1 s.
_STILL_DEAD = f"""
    SELECT '.' || d.process FROM unnest(CAST(:dead AS text[])) AS d(process)
    WHERE d.process NOT IN ({_LIVE})
"""
DELETE_DEAD_MEMBERS = text(
    f"""
    DELETE FROM channel_layer_pg_group_member g
    USING (
        SELECT m.prefix, m.group_name, m.channel FROM channel_layer_pg_group_member m
        WHERE strpos(m.channel, '!') > 14
          AND right(left(m.channel, strpos(m.channel, '!') - 1), 14) = ANY(ARRAY({_STILL_DEAD}))
        ORDER BY m.prefix, m.group_name, m.channel
        LIMIT {CLEANUP_BATCH} FOR UPDATE SKIP LOCKED
    ) gone
    WHERE g.prefix = gone.prefix AND g.group_name = gone.group_name AND g.channel = gone.channel
    """
).bindparams(bindparam("dead", type_=ARRAY(Text)))
DELETE_DEAD_MESSAGES = text(
    f"""
    DELETE FROM channel_layer_pg_message
    WHERE id IN (
        SELECT q.id FROM channel_layer_pg_message q
        WHERE q.queue LIKE '%!' AND right(left(q.queue, -1), 14) = ANY(ARRAY({_STILL_DEAD}))
        ORDER BY q.prefix, q.queue, q.id
        LIMIT {CLEANUP_BATCH} FOR UPDATE SKIP LOCKED
    )
    """
).bindparams(bindparam("dead", type_=ARRAY(Text)))
