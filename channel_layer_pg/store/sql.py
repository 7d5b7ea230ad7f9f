"""The pieces every statement is built from: "now", liveness, a queue's room, NOTIFY topics.

Each is written once here; statements/ and stats.py compose them. Where SQL must compute
what Python also computes (a channel's queue, a queue's NOTIFY topic), the two are tied by
tests/test_statements.py.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Interval,
    Text,
    and_,
    any_,
    bindparam,
    case,
    func,
    literal,
    literal_column,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY

from ..naming import TOPIC_DIGEST_LENGTH, TOPIC_PREFIX
from .schema import message

prefix = bindparam("prefix", type_=Text)
expiry = bindparam("expiry", type_=Interval)
# now() is the start of the transaction: inside an application's transaction that may be long
# ago, so a message would expire early and expired rows would still count against capacity.
# For the layer's own autocommitted statements the two differ by microseconds.
now = func.statement_timestamp()


def unexpired(expires_at: Any) -> Any:
    """``expires_at`` is still ahead, written so that the planner cannot answer it by index.

    The expiry indexes exist for cleanup, which wants the expired rows. For a statement that
    wants one queue's (or group's) rows, an expiry index finds every unexpired row of every
    queue, to be filtered and sorted; yet the planner picks it whenever its statistics make
    the table look small or the queue index look large (bloated by delivered messages), and
    asyncpg keeps that plan for the connection's life. tests/test_plans.py builds such a table
    (0.77-0.81 ms per receive of a backlog on a bench database in that state, 0.34-0.35 with
    this).
    """
    return expires_at.op("+")(literal_column("interval '0'", Interval)) > now


def queue_of(channel: Any) -> Any:
    """The queue ``channel`` is stored under, as naming.non_local_name computes it."""
    return case((is_process_local(channel), local_queue_of(channel)), else_=channel)


def local_queue_of(channel: Any) -> Any:
    """queue_of() for a ``channel`` known to be process-local: no CASE to evaluate per row."""
    return func.left(channel, func.strpos(channel, "!"))


def is_process_local(name: Any) -> Any:
    return func.strpos(name, "!") > 0


def topic_of(queue: Any) -> Any:
    """The NOTIFY topic of ``queue`` under the bound prefix, as naming.topic_for computes it."""
    digest = func.encode(func.sha256(func.convert_to(prefix + literal(":") + queue, "UTF8")), "hex")
    return literal(TOPIC_PREFIX) + func.left(digest, TOPIC_DIGEST_LENGTH)


def for_channel(channel: Any) -> Any:
    """Rows of a channel's queue that are for that channel: its own, and group rows naming it.

    A normal channel is a queue of its own whose rows are all for it; a process-local channel
    shares its queue with the process's other local channels, and each counts only its own.
    """
    return or_(message.c.channel == channel, channel == any_(message.c.recipients))


def live_count(queue: Any, capacity: Any, *, channel: Any = None, correlate: Any = None) -> Any:
    """How many unexpired rows ``queue`` holds, for ``channel`` only if given, up to ``capacity``.

    The LIMIT keeps the count bounded however long a backlog is, but below that it visits
    every row: with a capacity of thousands, a send to a long queue cost a millisecond. For
    one channel of a process's queue it visits the rows of the process's other channels too.
    """
    conditions = [message.c.prefix == prefix, message.c.queue == queue, unexpired(message.c.expires_at)]
    if channel is not None:
        conditions.append(for_channel(channel))
    live = select(literal(1)).where(*conditions).limit(capacity)
    if correlate is not None:
        live = live.correlate(correlate)
    return select(func.count()).select_from(live.subquery("live")).scalar_subquery()


def id_span(queue: Any, *, correlate: Any = None) -> Any:
    """An upper bound on the rows ``queue`` holds, from two index lookups: 0 if it is empty.

    Ids only grow, so a queue holds at most as many rows as there are ids from its oldest row
    to the newest row of the whole table, and each of its channels at most that many. The
    newest is looked up only if the queue has a row: the primary key's newest entries are
    mostly rows already received, dead until VACUUM, and finding the newest live row walks
    back over all of them (seen here: a send to an empty queue behind 50,000 such rows,
    0.47 ms with the lookup, 0.36 ms without).
    """
    oldest_row = select(func.min(message.c.id).label("id")).where(
        message.c.prefix == prefix, message.c.queue == queue
    )
    if correlate is not None:
        oldest_row = oldest_row.correlate(correlate)
    oldest = oldest_row.subquery("oldest")
    newest = select(func.max(message.c.id)).scalar_subquery()
    span = select(case((oldest.c.id.is_(None), literal_column("0")), else_=newest - oldest.c.id + 1))
    if correlate is not None:
        span = span.correlate(correlate)
    return span.scalar_subquery()


def has_room(queue: Any, channel: Any, capacity: Any, taken: Any = 1, *, correlate: Any = None) -> Any:
    """Whether ``channel`` (stored under ``queue``) has room for ``taken`` more rows.

    From the cheapest bound to the exact count, each run only if the one before cannot tell
    (PostgreSQL evaluates OR's arms in order, and a subquery only when its value is needed):
    the queue's id span (two index lookups: settles it whenever the queue's oldest row is
    recent); the queue's live rows, counted up to ``capacity`` (settles it for a normal
    channel, and for a process whose queue holds fewer rows than one channel's capacity);
    and, for a process-local channel only, that channel's own rows in its process's queue.
    """
    return or_(
        taken + id_span(queue, correlate=correlate) <= capacity,
        taken + live_count(queue, capacity, correlate=correlate) <= capacity,
        and_(
            is_process_local(queue),
            taken + live_count(queue, capacity, channel=channel, correlate=correlate) <= capacity,
        ),
    )


def notified(written_queue: Any) -> Any:
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


def capacity_of(channel: Any) -> Any:
    """``channel``'s capacity: the first of the patterns it matches, else the default.

    The patterns are config.LayerConfig.channel_capacity translated to PostgreSQL regular
    expressions (config.LayerConfig.capacity_parameters), bound as parallel arrays.
    """
    pattern_list = bindparam("capacity_patterns", type_=ARRAY(Text))
    patterns = (
        func.unnest(pattern_list, bindparam("capacity_limits", type_=ARRAY(BigInteger)))
        .table_valued("pattern", "capacity", with_ordinality="ord")
        .render_derived(with_types=False)
        .alias("pattern")
    )
    first_match = (
        select(patterns.c.capacity)
        .where(channel.op("~")(patterns.c.pattern))
        .order_by(patterns.c.ord)
        .limit(1)
        .scalar_subquery()
    )
    default = bindparam("capacity", type_=BigInteger)
    # CASE runs the subquery only when there are patterns: most layers have none.
    return case((func.cardinality(pattern_list) == 0, default), else_=func.coalesce(first_match, default))
