"""The layer's own pool: connections it keeps open between statements.

The layer runs one short autocommitted statement per checkout, and SQLAlchemy's async pool
costs 40 to 150 us per checkout and return (``benchmarks/bench.py pool-checkout``), as much as
a whole one-row INSERT on loopback; this pool costs about 1 us. So for an engine the layer makes
(whose SQLAlchemy pool is a NullPool: it only opens connections) this is the pool: up to
``most`` connections, of which up to ``keep`` stay open while idle, each for at most
``idle_timeout`` seconds. For an application's engine (``keep=0``) every connection goes back
to the application's pool after each statement.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..errors import LayerClosedError
from .backoff import Backoff
from .driver_errors import server_full

logger = logging.getLogger("channel_layer_pg.pool")

# After the server refused a connection for want of slots, how long to make do with those
# open before asking again. Each refused attempt still costs the server a backend process,
# so a server that stays full is asked less and less often.
_FULL_FIRST, _FULL_MOST = 1.0, 5.0


class Held:
    """One checked-out connection and the asyncpg connection under it."""

    __slots__ = ("connection", "driver", "idle_since")

    def __init__(self, connection: AsyncConnection, driver: Any) -> None:
        self.connection = connection
        self.driver = driver
        self.idle_since = 0.0  # time.monotonic() when last returned to the idle connections


class HeldConnections:
    def __init__(self, engine: AsyncEngine, *, keep: int, most: int, idle_timeout: float | None) -> None:
        self._engine = engine
        self._keep = keep
        self._most = most
        self._idle_timeout = idle_timeout
        self._count = 0
        # Oldest-returned first: taken from the end (the warmest), expired from the start.
        self._idle: list[Held] = []
        self._waiting: deque[asyncio.Future[Held | None]] = deque()
        self._closed = False
        self._full_until = 0.0
        self._full_backoff = Backoff(_FULL_FIRST, _FULL_MOST)
        self._all_returned: asyncio.Future[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._closing_expired: set[asyncio.Task[None]] = set()

    async def acquire(self) -> Held:
        """A connection for one statement; give it back with ``release`` or ``discard``."""
        while True:
            if self._closed:
                # A statement retrying after close(): the engine may be disposed already, and
                # a connection opened now would outlive the layer.
                raise LayerClosedError("the channel layer was closed")
            if self._idle:
                # Most recently used first: it is the likeliest to be alive and warm.
                return self._idle.pop()
            if self._count < self._most and (self._count == 0 or time.monotonic() >= self._full_until):
                self._count += 1
                connection = None
                try:
                    connection = await self._engine.connect()
                    raw = await connection.get_raw_connection()
                except BaseException as exc:
                    self._count -= 1
                    self._note_returned()  # a close() may be waiting for this one
                    make_do = bool(self._count) and server_full(exc)
                    if not make_do:
                        # The slot is free for a waiter. Before the await below: a second
                        # cancel there would skip anything after it, and leave them waiting.
                        self._wake_one(None)
                    if connection is not None:
                        await _abandon(connection)
                    if not make_do:
                        raise
                    # The server has no connection to spare (max_connections, or the role's
                    # CONNECTION LIMIT): make do with the ones in use, and ask again later.
                    wait = self._full_backoff.next()
                    self._full_until = time.monotonic() + wait
                    logger.warning(
                        "PostgreSQL refused another connection (%s); waiting for one of the %d open "
                        "(asking again in %.1f s at the earliest)",
                        exc,
                        self._count,
                        wait,
                    )
                    continue
                self._full_backoff.reset()
                return Held(connection, raw.driver_connection)
            waiter: asyncio.Future[Held | None] = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                held = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                    # Handed to us just as we were cancelled: pass it on.
                    await self.release(waiter.result())  # type: ignore[arg-type]
                raise
            if held is not None:
                return held
            # None: a connection was discarded, so there is room to open a new one.

    async def release(self, held: Held) -> None:
        """Return a connection that is fit for the next statement."""
        if self._closed:
            await self._give_back(held)
        elif self._wake_one(held):
            return
        elif len(self._idle) < self._keep:
            held.idle_since = time.monotonic()
            self._idle.append(held)
            if self._expiry is None and self._idle_timeout is not None:
                self._expiry = asyncio.get_running_loop().call_later(self._idle_timeout, self._close_expired)
        else:
            await self._give_back(held)

    async def discard(self, held: Held) -> None:
        """Throw away a connection that died or whose protocol state cannot be trusted."""
        self._count -= 1
        try:
            await held.connection.invalidate()
            await held.connection.close()
        finally:
            self._wake_one(None)
            self._note_returned()

    async def close(self, timeout: float) -> None:
        """Return every connection to the pool, waiting up to ``timeout`` s for those in use.

        Statements still in flight (shielded claims and sends whose callers were cancelled)
        finish first: a connection returned after the engine is disposed would never close.
        """
        self._closed = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        idle, self._idle = self._idle, []
        for held in idle:
            await self._give_back(held)
        if self._closing_expired:
            await asyncio.gather(*self._closing_expired, return_exceptions=True)
        if self._count:
            self._all_returned = asyncio.get_running_loop().create_future()
            done, _ = await asyncio.wait({self._all_returned}, timeout=timeout)
            if not done:
                logger.warning("closing with %d statements still running after %g s", self._count, timeout)

    def abandon(self) -> None:
        """Drop the idle connections of a loop that was closed under the layer, without it.

        Nothing can run on a closed loop, so they cannot be closed the usual way; each is cut
        loose from SQLAlchemy's pool (whose clean-up at garbage collection would fail on the
        closed loop and log an error) and marked aborted, so nothing complains at collection.
        Its socket closes when it is collected, and the server ends the session then.
        """
        self._closed = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        idle, self._idle = self._idle, []
        for held in idle:
            abandon_connection(held.connection, held.driver)

    async def _give_back(self, held: Held) -> None:
        # To the engine's pool: a NullPool (the layer's own engine) closes it, an
        # application's pool keeps it.
        self._count -= 1
        try:
            await held.connection.close()
        finally:
            self._wake_one(None)
            self._note_returned()

    def _close_expired(self) -> None:
        """Close the connections idle for ``idle_timeout`` s; come back when the next one is."""
        self._expiry = None
        if self._closed or self._idle_timeout is None:
            return
        now = time.monotonic()
        expired = 0
        while expired < len(self._idle) and now - self._idle[expired].idle_since >= self._idle_timeout:
            expired += 1
        if expired:
            # Out of the idle list at once, so no statement takes one while it closes.
            closing, self._idle = self._idle[:expired], self._idle[expired:]
            task = asyncio.get_running_loop().create_task(self._give_back_expired(closing))
            self._closing_expired.add(task)
            task.add_done_callback(self._closing_expired.discard)
        if self._idle:
            due = self._idle[0].idle_since + self._idle_timeout - now
            self._expiry = asyncio.get_running_loop().call_later(due, self._close_expired)

    async def _give_back_expired(self, closing: list[Held]) -> None:
        logger.debug("closing %d connections idle for %g s", len(closing), self._idle_timeout)
        for held in closing:
            try:
                await self._give_back(held)
            except Exception:  # it died idle: closed either way, and nobody is waiting on it
                logger.debug("closing an idle connection failed", exc_info=True)

    def _note_returned(self) -> None:
        if self._count == 0 and self._all_returned is not None and not self._all_returned.done():
            self._all_returned.set_result(None)

    def _wake_one(self, held: Held | None) -> bool:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(held)
                return True
        return False


async def _abandon(connection: AsyncConnection) -> None:
    """Close a connection that failed before its first statement, whatever state it is in."""
    try:
        await connection.invalidate()
        await connection.close()
    except Exception:
        pass  # already failing: the caller hears of the first error, not of this one


def abandon_connection(connection: AsyncConnection, driver: Any) -> None:
    """Cut ``connection`` loose from its pool and mark it aborted, on a loop already closed."""
    try:
        connection.sync_connection.connection.detach()  # type: ignore[union-attr]
    except Exception:
        logger.debug("detaching a connection of a closed event loop failed", exc_info=True)
    try:
        # Marks it aborted, then fails to schedule the transport's close on the closed loop.
        driver.terminate()
    except RuntimeError:
        pass
