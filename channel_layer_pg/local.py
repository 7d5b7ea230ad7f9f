"""This process's channels: a line of messages per channel, and the receives waiting on them.

ClaimedBuffer holds the lines, shared by every event loop of the layer; Waiters holds the
receives waiting on one loop, and Wakeup is the flag a loop's reader sleeps on.


A message lands here when its receiver was cancelled after the claim, when a batch claimed
more for a channel than it had waiters (claims ask for at most one row per waiter, so that
stays small), or when the layer sent it to one of its own process-local channels, which
never needs the table (see PostgresChannelLayer.send). The buffer belongs to the layer, not
to one loop, so the next receive on the channel gets it first, on whichever loop that
receive runs.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Container
from dataclasses import dataclass
from datetime import UTC, datetime

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
        now = datetime.now(UTC)
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

    def __bool__(self) -> bool:
        """Whether any channel has a message in line (read without the lock: a hint)."""
        return bool(self._rows)

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
        now = datetime.now(UTC)
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
        now = datetime.now(UTC)
        rows = self._rows[channel]
        kept = deque(row for row in rows if row.expires_at > now)
        if kept:
            self._rows[channel] = kept
        else:
            del self._rows[channel]
        return len(rows) - len(kept)


class Waiters:
    """The receives waiting on one event loop, per channel, longest-waiting first."""

    __slots__ = ("_by_channel", "_on_handed_over")

    def __init__(self, on_handed_over: Callable[[str], None] | None = None) -> None:
        self._by_channel: dict[str, deque[asyncio.Future[Claimed]]] = {}
        self._on_handed_over = on_handed_over  # the fault hooks' handed_over, in tests

    def __bool__(self) -> bool:
        return bool(self._by_channel)

    def add(self, channel: str, waiter: asyncio.Future[Claimed]) -> None:
        self._by_channel.setdefault(channel, deque()).append(waiter)

    def remove(self, channel: str, waiter: asyncio.Future[Claimed]) -> None:
        waiters = self._by_channel.get(channel)
        if waiters is None:
            return
        try:
            waiters.remove(waiter)
        except ValueError:
            pass
        if not waiters:
            del self._by_channel[channel]

    def waiting(self, channel: str) -> bool:
        return bool(self._by_channel.get(channel))

    def channels(self) -> list[str]:
        return list(self._by_channel)

    def wanted(self, *, skipping: Container[str]) -> dict[str, int]:
        """How many receives wait per channel, leaving out the channels in ``skipping``."""
        return {
            channel: len(waiters) for channel, waiters in self._by_channel.items() if channel not in skipping
        }

    def give(self, row: Claimed) -> bool:
        """Hand ``row`` to the longest-waiting live receive of its channel, if there is one."""
        waiters = self._by_channel.get(row.channel)
        delivered = False
        while waiters and not delivered:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(row)
                delivered = True
                if self._on_handed_over is not None:
                    self._on_handed_over(row.channel)
        if waiters is not None and not waiters:
            del self._by_channel[row.channel]
        return delivered

    def fail(self, exc: BaseException) -> None:
        for waiters in self._by_channel.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
        self._by_channel.clear()


class Wakeup:
    """A flag the reader task sleeps on, with a timeout.

    Not asyncio.Event with asyncio.wait_for: before Python 3.12 wait_for drops a cancellation
    that lands as the event is set, and a reader that missed close()'s cancel stayed
    subscribed for its whole linger. Waiting on a bare future also spares a task per wait.
    """

    __slots__ = ("_flag", "_future")

    def __init__(self) -> None:
        self._flag = False
        self._future: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._flag = True
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    def clear(self) -> None:
        self._flag = False

    async def wait(self, timeout: float) -> bool:
        """Wait until set, at most ``timeout`` seconds; whether it was set."""
        if not self._flag:
            loop = asyncio.get_running_loop()
            self._future = future = loop.create_future()
            timer = loop.call_later(timeout, _resolve, future)
            try:
                await future
            finally:
                timer.cancel()
                self._future = None
        return self._flag


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
