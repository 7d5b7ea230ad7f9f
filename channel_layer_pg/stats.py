"""What the layer holds under one prefix (LayerStats), and how it reads in a terminal."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Backlog:
    """A channel's or a process's queued (unexpired) messages."""

    name: str
    messages: int
    oldest_age: float  # seconds since the oldest of them was sent


@dataclass(frozen=True)
class GroupSize:
    name: str
    members: int  # memberships that have not lapsed


@dataclass(frozen=True)
class ListenSession:
    """One LISTEN connection: a layer instance receiving on one event loop."""

    pid: int  # the server process serving it
    user: str | None
    client: str | None  # "address:port" or "local socket"; None if hidden from this role
    connected_for: float | None  # seconds; None if hidden from this role


@dataclass(frozen=True)
class LayerStats:
    """What the layer holds under ``prefix``; the lists hold the largest ``limit`` entries.

    Ages assume messages were sent with ``expiry`` seconds to live (no send time is stored;
    a message's age is ``expiry`` minus the time it has left).
    """

    prefix: str
    limit: int
    expiry: float
    messages: int  # unexpired rows, group messages stored for a process counted once
    expired_messages: int  # expired rows the periodic cleanup has not removed yet
    oldest_message_age: float | None
    channel_count: int  # channels with queued messages
    channels: tuple[Backlog, ...]  # largest first; a group message counts for each recipient
    process_count: int  # layer instances whose process-local channels have queued messages
    processes: tuple[Backlog, ...]  # rows per process queue, largest first
    group_count: int
    membership_count: int
    lapsed_memberships: int  # lapsed memberships the periodic cleanup has not removed yet
    groups: tuple[GroupSize, ...]  # largest first
    listener_count: int
    listeners: tuple[ListenSession, ...]  # oldest connection first
    # Whether the server accepts the layer's writes now (False on a hot standby, mid-failover,
    # or under default_transaction_read_only), and whether it is a standby in recovery.
    writable: bool
    in_recovery: bool
    # The tables' migration revision (None if unversioned or this role may not read it), and
    # the one this release of the package needs.
    schema_revision: str | None
    schema_head: str
    # The asking layer's own figures; None when asked from outside (LayerStats built by hand).
    # Messages waiting in its memory (sent to its own process-local channels, or claimed for a
    # receive that was cancelled):
    held_in_process: int | None = None
    # Capacity drops since it was made: sends that raised ChannelFull, and deliveries of a
    # group_send skipped because the member's channel was full.
    sends_refused: int | None = None
    deliveries_skipped: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only: for ``json.dumps`` and metrics exporters."""
        data = asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}

    def format(self) -> str:
        """The stats as text for a terminal: totals, then a table per list."""
        return format_stats(self)


def check_limit(limit: object) -> None:
    """Refuse a ``limit`` (how many of each list stats hold) that is not a positive int."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError(f"limit must be an int, not {type(limit).__name__}")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")


def with_process_figures(
    stats: LayerStats, *, held_in_process: int, sends_refused: int, deliveries_skipped: int
) -> LayerStats:
    return replace(
        stats,
        held_in_process=held_in_process,
        sends_refused=sends_refused,
        deliveries_skipped=deliveries_skipped,
    )


# -- as text for a terminal: a line of totals per section, then its largest entries --------

_INDENT = "  "


def format_stats(stats: LayerStats) -> str:
    lines = [
        f"prefix {stats.prefix!r} (message ages assume an expiry of {stats.expiry:g} s)",
        f"database: {_writable(stats)}; {_revision(stats)}",
    ]
    age = stats.oldest_message_age
    oldest = "" if age is None else f", the oldest {duration(age)} old"
    lines.append(
        f"messages: {stats.messages:,} queued{oldest}; {stats.expired_messages:,} expired, awaiting cleanup"
    )
    if stats.held_in_process is not None:
        lines.append(f"messages held in this process's memory: {stats.held_in_process:,}")
    if stats.sends_refused is not None and stats.deliveries_skipped is not None:
        lines.append(
            f"capacity drops by this layer: {stats.sends_refused:,} sends refused with ChannelFull, "
            f"{stats.deliveries_skipped:,} group_send deliveries skipped"
        )
    lines += [
        "",
        f"channels with queued messages: {stats.channel_count:,}",
        *_backlog_table("CHANNEL", stats.channels, stats.channel_count),
        "",
        f"processes with queued messages on their process-local channels: {stats.process_count:,}",
        *_backlog_table("PROCESS (its channels' non-local part)", stats.processes, stats.process_count),
        "",
        f"groups: {stats.group_count:,}, with {stats.membership_count:,} members; "
        f"{stats.lapsed_memberships:,} lapsed memberships, awaiting cleanup",
        *_table(
            ("MEMBERS", "GROUP"),
            [(f"{group.members:,}", group.name) for group in stats.groups],
            right_aligned=1,
            more=stats.group_count - len(stats.groups),
        ),
        "",
        "listen connections (one per layer instance and event loop that receives, and one per "
        f"instance with process-local channels): {stats.listener_count:,}",
        *_table(
            ("PID", "USER", "CLIENT", "CONNECTED FOR"),
            [
                (
                    str(session.pid),
                    session.user or "?",
                    session.client or "(hidden from this role)",
                    "?" if session.connected_for is None else duration(session.connected_for),
                )
                for session in stats.listeners
            ],
            right_aligned=1,
            more=stats.listener_count - len(stats.listeners),
        ),
    ]
    return "\n".join(lines)


def _writable(stats: LayerStats) -> str:
    if stats.writable:
        return "accepts writes: yes"
    if stats.in_recovery:
        return "accepts writes: NO (in recovery: a hot standby, or a failover in progress)"
    return "accepts writes: NO (default_transaction_read_only is on)"


def _revision(stats: LayerStats) -> str:
    head = stats.schema_head
    if stats.schema_revision is None:
        return f"schema revision unknown (no version table, or this role may not read it; head is {head})"
    if stats.schema_revision == head:
        return f"schema at revision {head} (head)"
    return f"schema at revision {stats.schema_revision}, NOT at head {head}: run migrate"


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _backlog_table(label: str, backlogs: Sequence[Backlog], count: int) -> list[str]:
    return _table(
        ("MESSAGES", "OLDEST", label),
        [(f"{backlog.messages:,}", duration(backlog.oldest_age), backlog.name) for backlog in backlogs],
        right_aligned=2,
        more=count - len(backlogs),
    )


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, right_aligned: int, more: int
) -> list[str]:
    """Columns padded to their widest cell; the first ``right_aligned`` ones (numbers) on the right."""
    if not rows:
        return []
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if index < right_aligned else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return (_INDENT + "  ".join(padded)).rstrip()

    lines = [line(headers), *(line(row) for row in rows)]
    if more > 0:
        lines.append(f"{_INDENT}... and {more:,} more")
    return lines
