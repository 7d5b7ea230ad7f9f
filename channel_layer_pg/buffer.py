"""Messages claimed from the table that no receiver has taken yet, shared by all event loops.

A message lands here when its receiver was cancelled after the claim, or when a batch
claimed more for a channel than it had waiters; claims ask for at most one row per waiter, so
it stays small. The buffer belongs to the layer, not to one loop, so the next receive on the
channel gets it first, on whichever loop that receive runs.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone


@dataclass(frozen=True)
class Claimed:
    """A message row removed from the table, on its way to a receiver."""

    id: int
    channel: str
    expires_at: datetime
    payload: bytes


class ClaimedBuffer:
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

    def put_back(self, row: Claimed) -> None:
        """Queue ``row`` behind what is buffered for its channel (it was claimed later)."""
        with self._lock:
            self._rows.setdefault(row.channel, deque()).append(row)

    def put_front(self, row: Claimed) -> None:
        """Queue ``row`` first in line: its receiver was cancelled, and it is the oldest."""
        with self._lock:
            self._rows.setdefault(row.channel, deque()).appendleft(row)

    def holds(self, channel: str) -> bool:
        with self._lock:
            return bool(self._rows.get(channel))

    def drop_expired(self) -> int:
        """Forget expired messages, also of channels nobody receives on any more; how many."""
        now = datetime.now(timezone.utc)
        dropped = 0
        with self._lock:
            for channel in list(self._rows):
                rows = self._rows[channel]
                kept = deque(row for row in rows if row.expires_at > now)
                dropped += len(rows) - len(kept)
                if kept:
                    self._rows[channel] = kept
                else:
                    del self._rows[channel]
        return dropped

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()
