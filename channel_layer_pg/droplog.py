"""Logging what capacity turned away, without one line per drop.

A consumer that stops reading while its group stays busy makes every group_send skip it, and
a sender that retries a full channel gets ChannelFull every time: a line per drop would bury
everything else in the log. So the first drop after a quiet spell is logged at once, in full,
and the drops of the following SUMMARY_INTERVAL seconds are counted and logged as one summary
line when the interval ends: at most two lines per interval, however hard the flood.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter

from .faults import FaultHooks

logger = logging.getLogger("channel_layer_pg.capacity")

SUMMARY_INTERVAL = 10.0
# A summary names the channels and groups that dropped most; the rest are only counted.
_NAMES_IN_SUMMARY = 5


class DropLog:
    """Thread-safe: a layer's calls come from its event loop and from its I/O thread."""

    def __init__(self, faults: FaultHooks | None = None) -> None:
        self._summary_interval = (
            SUMMARY_INTERVAL if faults is None else faults.drop_summary_interval or SUMMARY_INTERVAL
        )
        self._lock = threading.Lock()
        self._interval = 0  # numbers intervals, so a late timer cannot end a newer one
        self._started = 0.0  # monotonic time of the drop that opened the interval
        self._quiet_after = 0.0  # and of the interval's end
        self._refused: Counter[str] = Counter()  # channel -> sends refused
        self._skipped: Counter[str] = Counter()  # group -> member deliveries skipped
        # Every drop since the layer was made, for stats and metrics; never reset.
        self._refused_total = 0
        self._skipped_total = 0

    def send_refused(self, channel: str, capacity: int) -> None:
        """A send raised ChannelFull."""
        with self._lock:
            self._refused_total += 1
        if not self._counted(self._refused, channel, 1):
            logger.info(
                "send to %r refused: the channel holds its capacity of %d messages", channel, capacity
            )

    def members_skipped(self, group: str, skipped: int, members: int) -> None:
        """A group_send skipped ``skipped`` of ``members`` members because their channels were full."""
        with self._lock:
            self._skipped_total += skipped
        if not self._counted(self._skipped, group, skipped):
            logger.info(
                "group_send to %r skipped %d of %d members: their channels are full", group, skipped, members
            )

    def totals(self) -> tuple[int, int]:
        """Sends refused and member deliveries skipped since the layer was made."""
        with self._lock:
            return self._refused_total, self._skipped_total

    def flush(self) -> None:
        """Log the drops counted so far, if any; the layer calls this as it closes."""
        with self._lock:
            summary = self._take_summary()
        _log(summary)

    def _counted(self, counter: Counter[str], name: str, drops: int) -> bool:
        """Count the drop if an interval is open (True); else open one (False: log the drop)."""
        now = time.monotonic()
        with self._lock:
            if now < self._quiet_after:
                counter[name] += drops
                return True
            # The previous interval's summary, if its timer never ran (see _end_later).
            summary = self._take_summary()
            self._interval += 1
            self._started, self._quiet_after = now, now + self._summary_interval
            interval = self._interval
        _log(summary)
        self._end_later(interval)
        return False

    def _end_later(self, interval: int) -> None:
        # On a loop that async_to_sync closes right after the call this never runs; the
        # summary then comes with the next drop, or at close.
        asyncio.get_running_loop().call_later(self._summary_interval, self._end, interval)

    def _end(self, interval: int) -> None:
        with self._lock:
            if interval != self._interval:
                return
            summary = self._take_summary()
            self._quiet_after = 0.0
        _log(summary)

    def _take_summary(self) -> str:
        refused, skipped = self._refused, self._skipped
        if not refused and not skipped:
            return ""
        self._refused, self._skipped = Counter(), Counter()
        parts = []
        if refused:
            parts.append(f"{refused.total()} sends refused with ChannelFull ({_top(refused)})")
        if skipped:
            parts.append(f"{skipped.total()} member deliveries skipped by group_send ({_top(skipped)})")
        seconds = time.monotonic() - self._started
        return f"capacity drops in the {seconds:.1f} s after the one logged before: " + "; ".join(parts)


def _log(summary: str) -> None:
    if summary:
        logger.info("%s", summary)


def _top(counts: Counter[str]) -> str:
    named = ", ".join(f"{name!r} {count}" for name, count in counts.most_common(_NAMES_IN_SUMMARY))
    rest = len(counts) - _NAMES_IN_SUMMARY
    return f"{named} and {rest} more" if rest > 0 else named
