"""The statements behind PostgresChannelLayer.stats(), and turning their rows into LayerStats.

Two statements gather it. STATS reads each table once, in one snapshot: rows are first
grouped by (queue, channel, recipients), which leaves a few thousand groups even for a backlog
of a million rows, and every figure is computed from those groups. LISTENERS reads
pg_stat_activity. Messages and memberships are never read, only counted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    Text,
    bindparam,
    case,
    cast,
    column,
    func,
    literal_column,
    null,
    select,
    table,
    true,
    union_all,
)
from sqlalchemy.sql.base import Executable

from ..naming import listener_application_name
from ..stats import Backlog, GroupSize, LayerStats, ListenSession
from . import health, sql
from .schema import group_member, message

Fetch = Callable[[Executable, dict[str, Any]], Awaitable[list[Any]]]

_limit = bindparam("limit", type_=BigInteger)


def _seconds_until(moment: Any) -> Any:
    return func.extract("epoch", moment - sql.now)


def _row(kind: str, name: Any, live: Any, expired: Any, expires_in: Any, entries: Any) -> Any:
    """The columns every row of STATS has, in order; None for a column a kind leaves empty."""
    return select(
        literal_column(f"'{kind}'", Text).label("kind"),
        (cast(null(), Text) if name is None else name).label("name"),
        cast(live, BigInteger).label("live"),
        cast(null() if expired is None else expired, BigInteger).label("expired"),
        cast(null() if expires_in is None else _seconds_until(expires_in), Float).label("expires_in"),
        cast(null() if entries is None else entries, BigInteger).label("entries"),
    )


def _build_stats() -> Any:
    """One row per listed channel, process and group, plus a total row for each table.

    Every row has the same columns: kind, name, live (messages or members), expired (rows
    awaiting cleanup; totals only), expires_in (seconds until the oldest live message
    expires) and entries (how many channels, processes or groups there are in all).
    """
    live = message.c.expires_at > sql.now
    grouped = (
        select(
            message.c.queue,
            message.c.channel,
            message.c.recipients,
            func.count().filter(live).label("live"),
            func.count().filter(~live).label("expired"),
            func.min(message.c.expires_at).filter(live).label("oldest"),
        )
        .where(message.c.prefix == sql.prefix)
        .group_by(message.c.queue, message.c.channel, message.c.recipients)
        .cte("grouped")
    )
    # A group message stored once for a process is queued for each of its recipients.
    recipient = func.unnest(grouped.c.recipients).table_valued("recipient").render_derived().lateral("r")
    channel = func.coalesce(recipient.c.recipient, grouped.c.channel)
    per_channel = (
        select(
            channel.label("name"),
            func.sum(grouped.c.live).label("live"),
            func.min(grouped.c.oldest).label("oldest"),
        )
        .select_from(grouped.outerjoin(recipient, true()))
        .where(grouped.c.live > 0)
        .group_by(channel)
        .cte("per_channel")
    )
    channels = (
        _row(
            "channel", per_channel.c.name, per_channel.c.live, None, per_channel.c.oldest, func.count().over()
        )
        .order_by(per_channel.c.live.desc(), per_channel.c.name)
        .limit(_limit)
    )
    # A process's queue is the non-local part its process-local channels share: "x.abc!".
    process_rows = func.sum(grouped.c.live)
    processes = (
        _row("process", grouped.c.queue, process_rows, None, func.min(grouped.c.oldest), func.count().over())
        .where(grouped.c.queue.like("%!"))
        .group_by(grouped.c.queue)
        .having(process_rows > 0)
        .order_by(process_rows.desc(), grouped.c.queue)
        .limit(_limit)
    )
    messages = _row(
        "messages",
        None,
        func.coalesce(func.sum(grouped.c.live), 0),
        func.coalesce(func.sum(grouped.c.expired), 0),
        func.min(grouped.c.oldest),
        None,
    )

    member_live = group_member.c.expires_at > sql.now
    per_group = (
        select(
            group_member.c.group_name.label("name"),
            func.count().filter(member_live).label("live"),
            func.count().filter(~member_live).label("lapsed"),
        )
        .where(group_member.c.prefix == sql.prefix)
        .group_by(group_member.c.group_name)
        .cte("per_group")
    )
    groups = (
        _row("group", per_group.c.name, per_group.c.live, None, None, func.count().over())
        .where(per_group.c.live > 0)
        .order_by(per_group.c.live.desc(), per_group.c.name)
        .limit(_limit)
    )
    memberships = _row(
        "memberships",
        None,
        func.coalesce(func.sum(per_group.c.live), 0),
        func.coalesce(func.sum(per_group.c.lapsed), 0),
        None,
        func.count().filter(per_group.c.live > 0),
    )
    parts = (channels, processes, messages, groups, memberships)
    return union_all(*(select(part.subquery()) for part in parts))


STATS = _build_stats()

_activity = table(
    "pg_stat_activity",
    column("pid"),
    column("usename"),
    column("datname"),
    column("application_name"),
    column("client_addr"),
    column("client_port"),
    column("backend_start"),
)

# Another role's sessions show their pid, user and application_name to everyone, but their
# address and start only to superusers and members of pg_read_all_stats (or of that role).
LISTENERS = (
    select(
        _activity.c.pid,
        _activity.c.usename.label("user"),
        case(
            (_activity.c.backend_start.is_(None), null()),
            (_activity.c.client_addr.is_(None), literal_column("'local socket'", Text)),
            else_=func.host(_activity.c.client_addr) + ":" + cast(_activity.c.client_port, Text),
        ).label("client"),
        cast(func.extract("epoch", sql.now - _activity.c.backend_start), Float).label("connected_for"),
        func.count().over().label("entries"),
    )
    .where(
        _activity.c.datname == func.current_database(),
        _activity.c.application_name == bindparam("application_name", type_=Text),
    )
    .order_by(_activity.c.backend_start, _activity.c.pid)
    .limit(_limit)
)


async def collect(
    fetch: Fetch, *, prefix: str, expiry: float, limit: int, schema: str | None = None
) -> LayerStats:
    """Gather LayerStats with ``fetch`` (a LoopBackend's)."""
    found = await health.read(fetch, schema=schema)
    rows = await fetch(STATS, {"prefix": prefix, "limit": limit})
    sessions = await fetch(LISTENERS, {"application_name": listener_application_name(prefix), "limit": limit})
    by_kind: dict[str, list[Any]] = {}
    for row in rows:
        by_kind.setdefault(row["kind"], []).append(row)

    def age(expires_in: float) -> float:
        return max(0.0, expiry - expires_in)

    def backlogs(kind: str) -> tuple[Backlog, ...]:
        return tuple(
            Backlog(row["name"], row["live"], age(row["expires_in"])) for row in by_kind.get(kind, [])
        )

    def entries(kind: str) -> int:
        listed = by_kind.get(kind)
        return int(listed[0]["entries"]) if listed else 0

    (totals,) = by_kind["messages"]
    (memberships,) = by_kind["memberships"]
    return LayerStats(
        prefix=prefix,
        limit=limit,
        expiry=expiry,
        messages=totals["live"],
        expired_messages=totals["expired"],
        oldest_message_age=None if totals["expires_in"] is None else age(totals["expires_in"]),
        channel_count=entries("channel"),
        channels=backlogs("channel"),
        process_count=entries("process"),
        processes=backlogs("process"),
        group_count=memberships["entries"],
        membership_count=memberships["live"],
        lapsed_memberships=memberships["expired"],
        groups=tuple(GroupSize(row["name"], row["live"]) for row in by_kind.get("group", [])),
        listener_count=sessions[0]["entries"] if sessions else 0,
        listeners=tuple(
            ListenSession(row["pid"], row["user"], row["client"], row["connected_for"]) for row in sessions
        ),
        writable=found.writable and not found.in_recovery,
        in_recovery=found.in_recovery,
        schema_revision=found.revision,
        schema_head=found.head,
    )
