"""The layer's SQL, built once as SQLAlchemy Core statements with bound parameters only.

Every statement is a single statement: PostgreSQL runs it atomically, so a cancelled caller
leaves either all of it or none of it behind. The layer autocommits each one; a transactional
send (``connection=``) runs SEND and GROUP_SEND inside the application's own transaction
instead, which is why "now" (store.sql) is the statement's time, not the transaction's.

Capacity is per channel. A normal channel is a queue of its own. A process-local channel is
stored under its process's queue (its non-local part), which that process claims from with
one statement, but only the rows for that channel count against its capacity: one local
channel that stops receiving fills its own capacity, never its neighbours'.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

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
    false,
    func,
    insert,
    literal,
    literal_column,
    null,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, OID, aggregate_order_by
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.sql.dml import ReturningDelete

from ..naming import topic_for
from . import sql
from .schema import group_member, message

if TYPE_CHECKING:
    from ..config import LayerConfig


def _build_send() -> Select[Any]:
    """Store one message for one channel if it has room, and wake its queue's readers.

    Returns 1 if the row was stored (and its readers notified), 0 if the channel was full.
    """
    queue = bindparam("queue", type_=Text)
    channel = bindparam("channel", type_=Text)
    capacity = bindparam("capacity", type_=BigInteger)
    row = select(
        sql.prefix, queue, channel, sql.now + sql.expiry, bindparam("payload", type_=LargeBinary)
    ).where(sql.has_room(queue, channel, capacity))
    inserted = (
        insert(message)
        .from_select(["prefix", "queue", "channel", "expires_at", "payload"], row)
        .returning(message.c.id)
        .cte("inserted")
    )
    notify = func.pg_notify(bindparam("topic", type_=Text), literal(""))
    return select(func.count(notify).label("inserted")).select_from(inserted)


SEND = _build_send()


def send_parameters(
    prefix: str, expiry: timedelta, payload: bytes, queue: str, channel: str, capacity: int
) -> dict[str, Any]:
    """The bound parameters of SEND: one message for one channel."""
    return {
        "prefix": prefix,
        "queue": queue,
        "channel": channel,
        "capacity": capacity,
        "expiry": expiry,
        "payload": payload,
        "topic": topic_for(prefix, queue),
    }


def _build_send_many() -> Select[Any]:
    """Many concurrent sends in one statement; the ords (1-based positions) that were stored.

    Each send is checked against its channel's live rows plus the sends before it in the
    batch for the same channel, so a batch never overfills a channel; rows are inserted in
    batch order.
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
        func.row_number().over(partition_by=sends.c.channel, order_by=sends.c.ord).label("position"),
    ).cte("ranked")
    rows = (
        select(
            sql.prefix, ranked.c.queue, ranked.c.channel, sql.now + sql.expiry, ranked.c.payload, ranked.c.ord
        )
        .where(
            sql.has_room(
                ranked.c.queue, ranked.c.channel, ranked.c.capacity, ranked.c.position, correlate=ranked
            )
        )
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
    return select(rows.c.ord, sql.notified(inserted.c.queue).label("notified"))


SEND_MANY = _build_send_many()


def _build_group_send() -> Select[Any]:
    """group_send in one statement: read the members, store the message for those with room.

    Stores one row per normal channel and one per receiving process, listing the members of
    that process it is for (``recipients``; the process fans it out), each member checked
    against its own capacity (store.sql.capacity_of). Wakes each stored queue's readers.

    The members under ``own_suffix`` (the calling layer's own process-local channels, None
    for a transactional send) are not stored but returned (``here``): the layer delivers
    to them in memory. Returns how many other members there were (``elsewhere``) and how many
    of those were reached (``reached``).
    """
    own_suffix = bindparam("own_suffix", type_=Text)
    members = (
        select(
            group_member.c.channel,
            sql.queue_of(group_member.c.channel).label("queue"),
            sql.capacity_of(group_member.c.channel).label("capacity"),
        )
        .where(
            group_member.c.prefix == sql.prefix,
            group_member.c.group_name == bindparam("group", type_=Text),
            sql.unexpired(group_member.c.expires_at),
        )
        .cte("members")
    )
    is_here = func.coalesce(func.right(members.c.queue, func.length(own_suffix)) == own_suffix, false())
    # One id span per queue, however many of its process's members the group has.
    queues = select(members.c.queue).where(~is_here).distinct().subquery("queues")
    # MATERIALIZED: inlined, the planner evaluates the span once per member instead.
    spans = (
        select(queues.c.queue, sql.id_span(queues.c.queue, correlate=queues).label("span"))
        .cte("spans")
        .prefix_with("MATERIALIZED")
    )
    roomy = (
        select(members.c.queue, members.c.channel)
        .join_from(members, spans, spans.c.queue == members.c.queue)
        .where(
            sql.has_room(
                members.c.queue, members.c.channel, members.c.capacity, span=spans.c.span, correlate=members
            )
        )
        .cte("roomy")
    )
    local = sql.is_process_local(roomy.c.queue)
    targets = (
        select(
            roomy.c.queue,
            case((local, roomy.c.queue), else_=func.min(roomy.c.channel)).label("channel"),
            case((local, func.array_agg(aggregate_order_by(roomy.c.channel, roomy.c.channel)))).label(
                "recipients"
            ),
            func.count().label("members"),
        )
        .group_by(roomy.c.queue)
        .cte("targets")
    )
    stored = select(
        sql.prefix,
        targets.c.queue,
        targets.c.channel,
        targets.c.recipients,
        sql.now + sql.expiry,
        bindparam("payload", type_=LargeBinary),
    ).order_by(targets.c.queue)
    inserted = (
        insert(message)
        .from_select(["prefix", "queue", "channel", "recipients", "expires_at", "payload"], stored)
        .returning(message.c.queue)
        .cte("inserted")
    )
    return select(
        select(func.array_agg(members.c.channel)).where(is_here).scalar_subquery().label("here"),
        select(func.count()).select_from(members).where(~is_here).scalar_subquery().label("elsewhere"),
        select(func.coalesce(func.sum(targets.c.members), 0)).scalar_subquery().label("reached"),
        select(func.count(func.pg_notify(sql.topic_of(inserted.c.queue), literal(""))))
        .scalar_subquery()
        .label("notified"),
    )


GROUP_SEND = _build_group_send()


def group_send_parameters(
    config: LayerConfig, payload: bytes, group: str, own_suffix: str | None
) -> dict[str, Any]:
    """The bound parameters of GROUP_SEND."""
    return {
        "prefix": config.prefix,
        "group": group,
        "own_suffix": own_suffix,
        "expiry": config.expiry,
        "payload": payload,
        **config.capacity_parameters(),
    }


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
                sql.prefix,
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
        sql.notified(inserted.c.queue).label("notified"),
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
            message.c.prefix == sql.prefix,
            message.c.queue == bindparam("queue", type_=Text),
            or_(
                and_(message.c.recipients.is_(None), message.c.channel == any_(waiting)),
                message.c.recipients.overlap(waiting),
            ),
            sql.unexpired(message.c.expires_at),
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
            message.c.prefix == sql.prefix,
            message.c.queue == bindparam("queue", type_=Text),
            sql.unexpired(message.c.expires_at),
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
# runs) guesses a tenth of the expired rows, and a review measured it reading the whole table
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

__all__ = [
    "CLAIM",
    "CLAIM_CHANNEL",
    "DATABASE_IDENTITY",
    "DELETE_EXPIRED_MESSAGES",
    "DELETE_LAPSED_MEMBERS",
    "FLUSH_GROUPS",
    "FLUSH_MESSAGES",
    "GROUP_ADD",
    "GROUP_ADD_FOREVER",
    "GROUP_DISCARD",
    "GROUP_SEND",
    "NOTIFY",
    "RESTORE",
    "SEND",
    "SEND_MANY",
]
