"""Messages in this process that no receiver has taken yet, shared by all event loops.

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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from .naming import is_process_local, non_local_name


class Share:
    """The copies of one group message delivered in memory, which count once, as its row would."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held = 0


@dataclass(frozen=True)
class Claimed:
    """A message on its way to a receiver: a row removed from the table, or sent in memory."""

    id: int
    channel: str
    expires_at: datetime
    payload: bytes
    share: Share | None = None  # set on the copies of one group message sent in memory


class ClaimedBuffer:
    def __init__(self) -> None:
        self._rows: dict[str, deque[Claimed]] = {}
        # Rows held per queue, for the capacity of messages delivered within the process.
        self._per_queue: dict[str, int] = {}
        self._lock = threading.Lock()  # receives on the I/O thread and the main loop share it

    def take(self, channel: str) -> Claimed | None:
        """The oldest unexpired row for ``channel``, dropping expired ones on the way."""
        now = datetime.now(timezone.utc)
        with self._lock:
            rows = self._rows.get(channel)
            while rows:
                row = rows.popleft()
                self._count(row, -1)
                if row.expires_at > now:
                    if not rows:
                        del self._rows[channel]
                    return row
            self._rows.pop(channel, None)
            return None

    def offer(self, rows: Sequence[Claimed], queue: str, capacity: int) -> bool:
        """Queue ``rows`` (all for channels of ``queue``) unless it holds ``capacity`` already.

        Like a row in the table, the rows of one offer go in together or not at all, and
        count once against the capacity until the last of them is taken or expires: a
        group message to a process's many members is one message, as its row would be.
        """
        with self._lock:
            if self._per_queue.get(queue, 0) >= capacity:
                self._drop_expired_locked()
                if self._per_queue.get(queue, 0) >= capacity:
                    return False
            share = Share() if len(rows) > 1 else None
            for row in rows:
                if share is not None:
                    row = Claimed(row.id, row.channel, row.expires_at, row.payload, share)
                self._rows.setdefault(row.channel, deque()).append(row)
                self._count(row, 1)
            return True

    def put_back(self, row: Claimed) -> None:
        """Queue ``row`` behind what is buffered for its channel (it was claimed later)."""
        with self._lock:
            self._rows.setdefault(row.channel, deque()).append(row)
            self._count(row, 1)

    def put_front(self, row: Claimed) -> None:
        """Queue ``row`` first in line: its receiver was cancelled, and it is the oldest."""
        with self._lock:
            self._rows.setdefault(row.channel, deque()).appendleft(row)
            self._count(row, 1)

    def count(self) -> int:
        """How many messages are held, expired ones not yet dropped included."""
        with self._lock:
            return sum(self._per_queue.values())

    def holds(self, channel: str) -> bool:
        with self._lock:
            return bool(self._rows.get(channel))

    def drop_expired(self) -> int:
        """Forget expired messages, also of channels nobody receives on any more; how many."""
        with self._lock:
            return self._drop_expired_locked()

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
                    self._count(row, -1)
                    if row.expires_at > now:
                        taken.append(row)
        return sorted(taken, key=lambda row: row.id)

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()
            self._per_queue.clear()

    def _drop_expired_locked(self) -> int:
        now = datetime.now(timezone.utc)
        dropped = 0
        for channel in list(self._rows):
            rows = self._rows[channel]
            kept = deque(row for row in rows if row.expires_at > now)
            dropped += len(rows) - len(kept)
            for row in rows:
                if row.expires_at <= now:
                    self._count(row, -1)
            if kept:
                self._rows[channel] = kept
            else:
                del self._rows[channel]
        return dropped

    def _count(self, row: Claimed, change: int) -> None:
        """Count ``row`` in (+1) or out (-1) of its queue's held messages."""
        if row.share is not None:
            row.share.held += change
            # A group message counts while any of its copies is held.
            if (change > 0 and row.share.held != 1) or (change < 0 and row.share.held != 0):
                return
        queue = non_local_name(row.channel)
        held = self._per_queue.get(queue, 0) + change
        if held > 0:
            self._per_queue[queue] = held
        else:
            self._per_queue.pop(queue, None)
