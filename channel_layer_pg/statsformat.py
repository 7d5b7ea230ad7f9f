"""LayerStats as text for a terminal: a line of totals per section, then its largest entries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .stats import Backlog, LayerStats

_INDENT = "  "


def format_stats(stats: LayerStats) -> str:
    lines = [f"prefix {stats.prefix!r} (message ages assume an expiry of {stats.expiry:g} s)"]
    age = stats.oldest_message_age
    oldest = "" if age is None else f", the oldest {duration(age)} old"
    lines.append(
        f"messages: {stats.messages:,} queued{oldest}; {stats.expired_messages:,} expired, awaiting cleanup"
    )
    if stats.held_in_process is not None:
        lines.append(f"messages held in this process's memory: {stats.held_in_process:,}")
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
        f"listen connections (one per layer instance and event loop that receives): {stats.listener_count:,}",
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
