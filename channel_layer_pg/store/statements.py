"""The layer's SQL, built once as SQLAlchemy Core statements with bound parameters only.

Every statement is a single statement: PostgreSQL runs it atomically, so a cancelled caller
leaves either all of it or none of it behind. The layer autocommits each one; a transactional
send (``connection=``) runs SEND, ENQUEUE and GROUP_MEMBERS inside the application's own
transaction instead, which is why "now" below is the statement's time, not the transaction's.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    CompoundSelect,
    DateTime,
    Interval,
    LargeBinary,
    Select,
    Text,
    and_,
    any_,
    bindparam,
    case,
    cast,
    delete,
    func,
    insert,
    literal,
    literal_column,
    null,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, OID
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.sql.dml import ReturningDelete
from sqlalchemy.sql.elements import TextClause

from ..naming import TOPIC_PREFIX
from .schema import group_member, message

_prefix = bindparam("prefix", type_=Text)
# now() is the start of the transaction: inside an application's transaction that may be long
# ago, so a message would expire early and expired rows would still count against capacity.
# For the layer's own autocommitted statements the two differ by microseconds.
_now = func.statement_timestamp()


def _unexpired(expires_at: Any) -> Any:
    """``expires_at`` is still ahead, written so that the planner cannot answer it by index.

    The expiry indexes exist for cleanup, which wants the expired rows. For a statement that
    wants one queue's (or group's) rows, an expiry index finds every unexpired row of every
    queue, to be filtered and sorted; yet the planner picks it whenever its statistics make
    the table look small or the queue index look large (bloated by delivered messages), and
    asyncpg keeps that plan for the connection's life. tests/test_plans.py builds such a table
    (0.77-0.81 ms per receive of a backlog on a bench database in that state, 0.34-0.35 with
    this).
    """
    return expires_at.op("+")(literal_column("interval '0'", Interval)) > _now


def _live_count(queue: Any, capacity: Any, *, correlate: Any = None) -> Any:
    """How many unexpired rows ``queue`` holds, counting no further than ``capacity``.

    The LIMIT keeps a capacity check bounded however long a backlog is, but below that it
    visits every row: with a capacity of thousands, a send to a long queue cost a millisecond.
    """
    live = (
        select(literal(1))
        .where(message.c.prefix == _prefix, message.c.queue == queue, _unexpired(message.c.expires_at))
        .limit(capacity)
    )
    if correlate is not None:
        live = live.correlate(correlate)
    return select(func.count()).select_from(live.subquery("live")).scalar_subquery()


def _id_span(queue: Any, *, correlate: Any = None) -> Any:
    """An upper bound on the rows ``queue`` holds, from two index lookups: 0 if it is empty.

    Ids only grow, so a queue holds at most as many rows as there are ids from its oldest row
    to the newest row of the whole table. The newest is looked up only if the queue has a
    row: the primary key's newest entries are mostly rows already received, dead until
    VACUUM, and finding the newest live row walks back over all of them (seen here: a send
    to an empty queue behind 50,000 such rows, 0.47 ms with the lookup, 0.36 ms without).
    """
    oldest_row = select(func.min(message.c.id).label("id")).where(
        message.c.prefix == _prefix, message.c.queue == queue
    )
    if correlate is not None:
        oldest_row = oldest_row.correlate(correlate)
    oldest = oldest_row.subquery("oldest")
    newest = select(func.max(message.c.id)).scalar_subquery()
    span = select(case((oldest.c.id.is_(None), literal_column("0")), else_=newest - oldest.c.id + 1))
    if correlate is not None:
        span = span.correlate(correlate)
    return span.scalar_subquery()


def _has_room(queue: Any, capacity: Any, taken: Any = 1, *, correlate: Any = None) -> Any:
    """Whether ``queue`` has room for ``taken`` more rows under ``capacity``.

    The cheap bound settles it whenever the queue's oldest row is recent; only a queue with an
    old row left in it pays for counting. PostgreSQL evaluates OR's arms in order and runs a
    subquery only when its value is needed.
    """
    return or_(
        taken + _id_span(queue, correlate=correlate) <= capacity,
        taken + _live_count(queue, capacity, correlate=correlate) <= capacity,
    )


def _build_enqueue() -> Select[Any]:
    """Store one copy of a group message per target with room, and wake each one's readers.

    Targets arrive as parallel arrays (see fanout.Target): a normal channel, or one process
    with the space-separated list of its local members. Every target has a queue of its own,
    so each is checked against its own queue's live rows. Returns the queues stored to.
    """
    targets = (
        func.unnest(
            bindparam("queues", type_=ARRAY(Text)),
            bindparam("channels", type_=ARRAY(Text)),
            bindparam("recipients", type_=ARRAY(Text)),
            bindparam("capacities", type_=ARRAY(BigInteger)),
            bindparam("topics", type_=ARRAY(Text)),
        )
        .table_valued("queue", "channel", "recipients", "capacity", "topic", with_ordinality="ord")
        .render_derived(with_types=False)
    )
    target = targets.alias("target")
    rows = (
        select(
            _prefix,
            target.c.queue,
            target.c.channel,
            func.string_to_array(func.nullif(target.c.recipients, ""), " "),
            _now + bindparam("expiry", type_=Interval),
            bindparam("payload", type_=LargeBinary),
        )
        .where(_has_room(target.c.queue, target.c.capacity, correlate=target))
        .order_by(target.c.ord)
    )
    inserted = (
        insert(message)
        .from_select(["prefix", "queue", "channel", "recipients", "expires_at", "payload"], rows)
        .returning(message.c.queue)
        .cte("inserted")
    )
    woken = targets.alias("woken")
    return select(inserted.c.queue, func.pg_notify(woken.c.topic, literal("")).label("notified")).join_from(
        inserted, woken, woken.c.queue == inserted.c.queue
    )


ENQUEUE = _build_enqueue()


def _build_send() -> Select[Any]:
    """ENQUEUE for the one-target case: the hot path of send(), without unnest and window.

    Returns 1 if the row was stored (and its readers notified), 0 if the queue was full.
    """
    queue = bindparam("queue", type_=Text)
    capacity = bindparam("capacity", type_=BigInteger)
    row = select(
        _prefix,
        queue,
        bindparam("channel", type_=Text),
        _now + bindparam("expiry", type_=Interval),
        bindparam("payload", type_=LargeBinary),
    ).where(_has_room(queue, capacity))
    inserted = (
        insert(message)
        .from_select(["prefix", "queue", "channel", "expires_at", "payload"], row)
        .returning(message.c.id)
        .cte("inserted")
    )
    notify = func.pg_notify(bindparam("topic", type_=Text), literal(""))
    return select(func.count(notify).label("inserted")).select_from(inserted)


SEND = _build_send()


def _build_send_many() -> Select[Any]:
    """Many concurrent sends in one statement; the ords (1-based positions) that were stored.

    Each send is checked against its queue's live rows plus the sends before it in the batch
    for the same queue, so a batch never overfills a queue; rows are inserted in batch order.
    """
    sends = (
        func.unnest(
            bindparam("queues", type_=ARRAY(Text)),
            bindparam("channels", type_=ARRAY(Text)),
            bindparam("capacities", type_=ARRAY(BigInteger)),
            bindparam("payloads", type_=ARRAY(LargeBinary)),
        )
        .table_valued("queue", "channel", "capacity", "payload", with_ordinality="ord")
        .render_derived(with_types=False)
        .alias("send")
    )
    ranked = select(
        sends,
        func.row_number().over(partition_by=sends.c.queue, order_by=sends.c.ord).label("position"),
    ).cte("ranked")
    rows = (
        select(
            _prefix,
            ranked.c.queue,
            ranked.c.channel,
            _now + bindparam("expiry", type_=Interval),
            ranked.c.payload,
            ranked.c.ord,
        )
        .where(_has_room(ranked.c.queue, ranked.c.capacity, ranked.c.position, correlate=ranked))
        .cte("accepted")
    )
    inserted = (
        insert(message)
        .from_select(
            ["prefix", "queue", "channel", "expires_at", "payload"],
            select(rows.c[0], rows.c.queue, rows.c.channel, rows.c[3], rows.c.payload).order_by(rows.c.ord),
        )
        .returning(message.c.queue)
        .cte("inserted")
    )
    return select(rows.c.ord, _notified(inserted.c.queue).label("notified"))


def _notified(written_queue: Any) -> Any:
    """NOTIFY the topic of each queue in ``written_queue`` once; how many were notified.

    The topics come as parallel arrays ``topic_queues`` and ``topics`` (naming.topic_for):
    hashing in Python costs less than in SQL, and only queues that got a row are woken.
    """
    topics = (
        func.unnest(bindparam("topic_queues", type_=ARRAY(Text)), bindparam("topics", type_=ARRAY(Text)))
        .table_valued("queue", "topic")
        .render_derived(with_types=False)
        .alias("topic")
    )
    woken = select(topics.c.topic).where(topics.c.queue.in_(select(written_queue))).subquery("woken")
    return select(func.count(func.pg_notify(woken.c.topic, literal("")))).scalar_subquery()


SEND_MANY = _build_send_many()


def _build_restore() -> Select[Any]:
    """Put messages of normal channels that were claimed but never received back, under their own ids.

    A layer closing with such messages in hand (a claim that ended after its receiver was
    cancelled) would otherwise lose them, though other processes could still receive them.
    Their old ids put them back ahead of whatever was sent since, in their original order.
    An id is never in the table twice, so restoring twice cannot deliver twice. Capacity is
    not checked again: these messages were counted in it when they were sent.
    """
    restored = (
        func.unnest(
            bindparam("ids", type_=ARRAY(BigInteger)),
            bindparam("channels", type_=ARRAY(Text)),
            bindparam("expires", type_=ARRAY(DateTime(timezone=True))),
            bindparam("payloads", type_=ARRAY(LargeBinary)),
        )
        .table_valued("id", "channel", "expires_at", "payload")
        .render_derived(with_types=False)
        .alias("restored")
    )
    inserted = (
        pg_insert(message)
        .from_select(
            ["id", "prefix", "queue", "channel", "expires_at", "payload"],
            select(
                restored.c.id,
                _prefix,
                restored.c.channel,  # a normal channel is a queue of its own
                restored.c.channel,
                restored.c.expires_at,
                restored.c.payload,
            ),
        )
        .on_conflict_do_nothing(index_elements=[message.c.id])
        .returning(message.c.queue)
        .cte("inserted")
    )
    return select(
        select(func.count()).select_from(inserted).scalar_subquery().label("restored"),
        _notified(inserted.c.queue).label("notified"),
    )


RESTORE = _build_restore()


def _build_claim() -> CompoundSelect[Any]:
    """Claim the oldest messages for the waiting channels of one queue, at most ``limit`` rows.

    FOR UPDATE SKIP LOCKED lets concurrent readers of a queue claim disjoint rows, and the claim
    and the removal are one atomic statement, so no message can reach two readers. A direct
    message is deleted. A per-process group message gives up only the recipients that are
    waiting (the row goes once none is left): the others keep their copy in the table, in
    id order with their direct messages, so a member that is not receiving now still gets
    its messages in the order they were stored. Returns each row with its recipients as they
    were before the claim; the reader delivers to those among the waiting channels.
    """
    waiting = bindparam("channels", type_=ARRAY(Text))
    # A group row's recipients that are not waiting, computed once per row as a set
    # difference (hashed or sorted: linear in the members). "recipients <@ waiting" and
    # "recipient <> ALL (waiting)" compare every pair, and cost 0.4 s each for a row of
    # 10,000 members with as many waiting (benchmarks/scaling.py, the group series).
    member = func.unnest(message.c.recipients).column_valued("member")
    waiting_member = func.unnest(waiting).column_valued("waiting_member")
    not_waiting = select(member).except_(select(waiting_member)).scalar_subquery()
    remaining = case((message.c.recipients.is_(None), null()), else_=func.array(not_waiting))
    picked = (
        select(message.c.id, message.c.recipients, remaining.label("remaining"))
        .where(
            message.c.prefix == _prefix,
            message.c.queue == bindparam("queue", type_=Text),
            or_(
                and_(message.c.recipients.is_(None), message.c.channel == any_(waiting)),
                message.c.recipients.overlap(waiting),
            ),
            _unexpired(message.c.expires_at),
        )
        .order_by(message.c.id)
        .limit(bindparam("limit", type_=BigInteger))
        .with_for_update(skip_locked=True)
        .cte("picked")
    )
    delivered_all = or_(picked.c.recipients.is_(None), func.cardinality(picked.c.remaining) == 0)
    columns = (message.c.id, message.c.channel, picked.c.recipients, message.c.expires_at, message.c.payload)
    deleted = (
        delete(message).where(message.c.id == picked.c.id, delivered_all).returning(*columns).cte("deleted")
    )
    updated = (
        update(message)
        .where(message.c.id == picked.c.id, ~delivered_all)
        .values(recipients=picked.c.remaining)
        .returning(*columns)
        .cte("updated")
    )
    return union_all(select(deleted), select(updated))


CLAIM = _build_claim()


def _build_claim_channel() -> ReturningDelete[Any]:
    """CLAIM for a queue that is one normal channel: the oldest ``limit`` rows, deleted.

    Such a queue holds only direct rows for that channel (a group stores a plain row for
    each normal member), so there are no recipients to give up one by one. A consumer of a
    busy work queue runs this once per message: through asyncpg it took 247 us where CLAIM
    took 306 (one run, same backlog).
    """
    picked = (
        select(message.c.id)
        .where(
            message.c.prefix == _prefix,
            message.c.queue == bindparam("queue", type_=Text),
            _unexpired(message.c.expires_at),
        )
        .order_by(message.c.id)
        .limit(bindparam("limit", type_=BigInteger))
        .with_for_update(skip_locked=True)
        .cte("picked")
    )
    columns = (message.c.id, message.c.channel, message.c.recipients, message.c.expires_at, message.c.payload)
    return delete(message).where(message.c.id == picked.c.id).returning(*columns)


CLAIM_CHANNEL = _build_claim_channel()

_member_expiry = bindparam("member_expires_at_interval", type_=Interval)
_group_add_values = pg_insert(group_member).values(
    prefix=_prefix,
    group_name=bindparam("group", type_=Text),
    channel=bindparam("channel", type_=Text),
    expires_at=_now + _member_expiry,
)
GROUP_ADD = _group_add_values.on_conflict_do_update(
    index_elements=[group_member.c.prefix, group_member.c.group_name, group_member.c.channel],
    set_={"expires_at": _group_add_values.excluded.expires_at},
)
# group_expiry=0 means memberships never lapse.
GROUP_ADD_FOREVER = (
    pg_insert(group_member)
    .values(
        prefix=_prefix,
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
    group_member.c.prefix == _prefix,
    group_member.c.group_name == bindparam("group", type_=Text),
    group_member.c.channel == bindparam("channel", type_=Text),
)

GROUP_MEMBERS = (
    select(group_member.c.channel)
    .where(
        group_member.c.prefix == _prefix,
        group_member.c.group_name == bindparam("group", type_=Text),
        _unexpired(group_member.c.expires_at),
    )
    .order_by(group_member.c.channel)
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

FLUSH_MESSAGES = delete(message).where(message.c.prefix == _prefix)
FLUSH_GROUPS = delete(group_member).where(group_member.c.prefix == _prefix)

# Cleanup works in bounded batches so no statement holds many row locks or runs long. The batch
# is written into the statement: a generic plan for LIMIT $1 (PostgreSQL's choice after five
# runs) guesses a tenth of the expired rows, and a review measured it reading the whole table
# for every batch after a mass expiry (91 ms a batch of 1,000).
CLEANUP_BATCH = 1000
_batch = literal_column(str(CLEANUP_BATCH), BigInteger)
_expired_messages = (
    select(message.c.id).where(message.c.expires_at <= _now).limit(_batch).with_for_update(skip_locked=True)
)
DELETE_EXPIRED_MESSAGES = delete(message).where(message.c.id.in_(_expired_messages))

_lapsed_members = (
    select(group_member.c.prefix, group_member.c.group_name, group_member.c.channel)
    .where(group_member.c.expires_at <= _now)
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

__all__ = [
    "CLAIM",
    "CLAIM_CHANNEL",
    "DATABASE_IDENTITY",
    "DELETE_EXPIRED_MESSAGES",
    "DELETE_LAPSED_MEMBERS",
    "ENQUEUE",
    "FLUSH_GROUPS",
    "FLUSH_MESSAGES",
    "GROUP_ADD",
    "GROUP_ADD_FOREVER",
    "GROUP_DISCARD",
    "GROUP_MEMBERS",
    "NOTIFY",
    "SEND",
]


def _build_group_send() -> TextClause:
    """group_send in one statement, for layers whose channels all have the same capacity.

    Reads the members, stores one row per normal channel and one per receiving process
    (listing its members) where there is room, and wakes each stored queue's readers. The
    calling layer's own process-local members are left out and returned (``here``): the
    layer delivers to them in memory. Returns how many members elsewhere there were
    (``elsewhere``) and how many of them were reached (``reached``). The topics are computed
    here as naming.topic_for computes them, since the queues are known only in here.
    """
    capacity = "CAST(:capacity AS BIGINT)"
    prefix = "CAST(:prefix AS TEXT)"

    def alive(alias: str) -> str:  # as _unexpired() writes it
        return f"{alias}.expires_at + interval '0' > statement_timestamp()"

    queue_rows = (
        "SELECT count(*) FROM (SELECT 1 FROM channel_layer_pg_message m "
        f"WHERE m.prefix = {prefix} AND m.queue = t.queue AND {alive('m')} "
        f"LIMIT {capacity}) AS live"
    )
    # The same test as _has_room: the id span settles it unless the queue's oldest row is old.
    id_span = (
        "(SELECT CASE WHEN oldest.id IS NULL THEN 0 "
        "ELSE (SELECT max(id) FROM channel_layer_pg_message) - oldest.id + 1 END "
        "FROM (SELECT min(m.id) AS id FROM channel_layer_pg_message m "
        f"WHERE m.prefix = {prefix} AND m.queue = t.queue) AS oldest)"
    )
    sql = f"""
WITH members AS (
    SELECT g.channel,
           CASE WHEN strpos(g.channel, '!') > 0 THEN left(g.channel, strpos(g.channel, '!'))
                ELSE g.channel END AS queue
    FROM channel_layer_pg_group_member g
    WHERE g.prefix = {prefix} AND g.group_name = CAST(:group AS TEXT)
      AND {alive("g")}
), here AS (
    SELECT channel FROM members
    WHERE right(queue, length(CAST(:own_suffix AS TEXT))) = CAST(:own_suffix AS TEXT)
), targets AS (
    SELECT queue,
           CASE WHEN strpos(queue, '!') > 0 THEN queue ELSE min(channel) END AS channel,
           CASE WHEN strpos(queue, '!') > 0 THEN array_agg(channel ORDER BY channel) END AS recipients,
           count(*) AS members
    FROM members
    WHERE right(queue, length(CAST(:own_suffix AS TEXT))) <> CAST(:own_suffix AS TEXT)
    GROUP BY queue
), inserted AS (
    INSERT INTO channel_layer_pg_message (prefix, queue, channel, recipients, expires_at, payload)
    SELECT {prefix}, t.queue, t.channel, t.recipients,
           statement_timestamp() + CAST(:expiry AS INTERVAL), CAST(:payload AS BYTEA)
    FROM targets t
    WHERE 1 + {id_span} <= {capacity} OR 1 + ({queue_rows}) <= {capacity}
    ORDER BY t.queue
    RETURNING queue
)
SELECT (SELECT array_agg(channel) FROM here) AS here,
       (SELECT coalesce(sum(members), 0) FROM targets) AS elsewhere,
       (SELECT coalesce(sum(t.members), 0) FROM targets t JOIN inserted i ON i.queue = t.queue) AS reached,
       (SELECT count(pg_notify('{TOPIC_PREFIX}' || left(encode(sha256(convert_to({prefix} || ':' || i.queue,
                                 'UTF8')), 'hex'), 32), ''))
        FROM inserted i) AS notified
"""
    return text(sql).bindparams(
        bindparam("prefix", type_=Text),
        bindparam("group", type_=Text),
        bindparam("own_suffix", type_=Text),
        bindparam("capacity", type_=BigInteger),
        bindparam("expiry", type_=Interval),
        bindparam("payload", type_=LargeBinary),
    )


GROUP_SEND = _build_group_send()
