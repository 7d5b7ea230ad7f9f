"""This process's lines of messages, one per channel, that no receiver has taken yet.

A message lands here when its receiver was cancelled after the claim, when a batch claimed
more for a channel than it had waiters (claims ask for at most one row per waiter, so that
stays small), or when the layer sent it to one of its own process-local channels, which
never needs the table (see PostgresChannelLayer.send). The buffer belongs to the layer, not
to one loop, so the next receive on the channel gets it first, on whichever loop that
receive runs.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone

from .naming import is_process_local


@dataclass(frozen=True)
class Claimed:
    """A message on its way to a receiver: a row removed from the table, or sent in memory."""

    id: int
    channel: str
    expires_at: datetime
    payload: bytes


class ClaimedBuffer:
    """A bounded line of messages per channel; every event loop of the layer shares it."""

    def __init__(self) -> None:
        self._rows: dict[str, deque[Claimed]] = {}
        self._lock = threading.Lock()  # receives on the I/O thread and the main loop share it

    def take(self, channel: str) -> Claimed | None:
        """The oldest unexpired row for ``channel``, dropping expired ones on the way."""
        now = datetime.now(timezone.utc)
        with self._lock:
            rows = self._rows.get(channel)
            while rows:
                row = rows.popleft()
                if row.expires_at > now:
                    if not rows:
                        del self._rows[channel]
                    return row
            self._rows.pop(channel, None)
            return None

    def offer(self, row: Claimed, capacity: int) -> bool:
        """Queue ``row`` unless its channel holds ``capacity`` unexpired messages already.

        Each channel counts only its own messages: one that stops receiving fills its own
        line and is refused more, while the other channels of the process keep theirs.
        """
        with self._lock:
            rows = self._rows.get(row.channel)
            if rows is not None and len(rows) >= capacity:
                self._drop_expired_locked(row.channel)
                rows = self._rows.get(row.channel)
                if rows is not None and len(rows) >= capacity:
                    return False
            self._rows.setdefault(row.channel, deque()).append(row)
            return True

    def put_back(self, row: Claimed) -> None:
        """Queue ``row`` behind what is buffered for its channel (it was claimed later)."""
        with self._lock:
            self._rows.setdefault(row.channel, deque()).append(row)

    def put_front(self, row: Claimed) -> None:
        """Queue ``row`` first in line: its receiver was cancelled, and it is the oldest."""
        with self._lock:
            self._rows.setdefault(row.channel, deque()).appendleft(row)

    def count(self) -> int:
        """How many messages are held, expired ones not yet dropped included."""
        with self._lock:
            return sum(len(rows) for rows in self._rows.values())

    def holds(self, channel: str) -> bool:
        with self._lock:
            return bool(self._rows.get(channel))

    def drop_expired(self) -> int:
        """Forget expired messages, also of channels nobody receives on any more; how many."""
        with self._lock:
            return sum(self._drop_expired_locked(channel) for channel in list(self._rows))

    def take_shared(self) -> list[Claimed]:
        """Remove and return the unexpired rows of normal channels, in id order.

        Other processes may receive on a normal channel, so a closing layer puts these back
        in the table; the rest are for process-local channels that only this layer could
        receive on.
        """
        now = datetime.now(timezone.utc)
        taken: list[Claimed] = []
        with self._lock:
            for channel in [channel for channel in self._rows if not is_process_local(channel)]:
                for row in self._rows.pop(channel):
                    if row.expires_at > now:
                        taken.append(row)
        return sorted(taken, key=lambda row: row.id)

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()

    def _drop_expired_locked(self, channel: str) -> int:
        now = datetime.now(timezone.utc)
        rows = self._rows[channel]
        kept = deque(row for row in rows if row.expires_at > now)
        if kept:
            self._rows[channel] = kept
        else:
            del self._rows[channel]
        return len(rows) - len(kept)
