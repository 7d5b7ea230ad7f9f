"""Storing messages: send, a batch of sends, group_send, and putting claimed messages back."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    LargeBinary,
    Select,
    Text,
    and_,
    bindparam,
    case,
    false,
    func,
    insert,
    literal,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by, array
from sqlalchemy.dialects.postgresql import insert as pg_insert

from ...naming import topic_for
from .. import sql
from ..schema import group_member, message

if TYPE_CHECKING:
    from ...config import LayerConfig


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
    # Room is settled per queue where it can be, however many of a process's members the
    # group has: the queue's id span, else its live rows counted up to its members' largest
    # capacity. MATERIALIZED: inlined, the planner evaluates such subqueries once per member.
    queues = (
        select(
            members.c.queue,
            func.min(members.c.capacity).label("least"),
            func.max(members.c.capacity).label("most"),
        )
        .where(~is_here)
        .group_by(members.c.queue)
        .subquery("queues")
    )
    spans = (
        select(queues, sql.id_span(queues.c.queue, correlate=queues).label("span"))
        .cte("spans")
        .prefix_with("MATERIALIZED")
    )
    bounds = (
        select(
            spans.c.queue,
            spans.c.least,
            case(
                (spans.c.span + 1 <= spans.c.least, spans.c.span),
                else_=sql.live_count(spans.c.queue, spans.c.most, correlate=spans),
            ).label("bound"),
        )
        .cte("bounds")
        .prefix_with("MATERIALIZED")
    )
    # A process's queue that holds more rows than a member's capacity: each member's own
    # rows, counted in one pass over the queue (a direct row counts for its channel, a group
    # row for each of its recipients).
    counted = (
        select(
            bounds.c.queue,
            func.unnest(func.coalesce(message.c.recipients, array([message.c.channel]))).label("channel"),
        )
        .join_from(bounds, message, and_(message.c.prefix == sql.prefix, message.c.queue == bounds.c.queue))
        .where(
            sql.is_process_local(bounds.c.queue),
            bounds.c.bound + 1 > bounds.c.least,
            sql.unexpired(message.c.expires_at),
        )
        .subquery("counted")
    )
    counts = (
        select(counted.c.queue, counted.c.channel, func.count().label("live"))
        .group_by(counted.c.queue, counted.c.channel)
        .cte("counts")
        .prefix_with("MATERIALIZED")
    )
    roomy = (
        select(members.c.queue, members.c.channel)
        .join_from(members, bounds, bounds.c.queue == members.c.queue)
        .outerjoin(counts, and_(counts.c.queue == members.c.queue, counts.c.channel == members.c.channel))
        .where(
            or_(
                bounds.c.bound + 1 <= members.c.capacity,
                and_(
                    sql.is_process_local(members.c.queue),
                    func.coalesce(counts.c.live, 0) + 1 <= members.c.capacity,
                ),
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
