"""Connections the layer keeps checked out of the engine's pool between statements.

A checkout from SQLAlchemy's async pool (connect, get the driver connection, close) costs about
35 us here, a third of a whole one-row INSERT on loopback (about 100 us). The layer runs one
short autocommitted statement per checkout, so it keeps the connections it has used and hands
them straight to the next statement. Up to ``keep`` of them stay open while idle (the pool would
keep as many); beyond that they go back to the pool as soon as they are free, where overflow
connections are closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

logger = logging.getLogger("channel_layer_pg")


class Held:
    """One checked-out connection and the asyncpg connection under it."""

    __slots__ = ("connection", "driver")

    def __init__(self, connection: AsyncConnection, driver: Any) -> None:
        self.connection = connection
        self.driver = driver


class HeldConnections:
    def __init__(self, engine: AsyncEngine, *, keep: int, most: int) -> None:
        self._engine = engine
        self._keep = keep
        # Our own limit, below the pool's: a statement waiting on the pool would not see a
        # connection we hold idle, so we wait on our own queue instead. One slot stays free for
        # the listener, which checks a connection out now and then and detaches it.
        self._most = most
        self._count = 0
        self._idle: list[Held] = []
        self._waiting: deque[asyncio.Future[Held | None]] = deque()
        self._closed = False
        self._all_returned: asyncio.Future[None] | None = None

    async def acquire(self) -> Held:
        """A connection for one statement; give it back with ``release`` or ``discard``."""
        while True:
            if self._idle:
                # Most recently used first: it is the likeliest to be alive and warm.
                return self._idle.pop()
            if self._count < self._most:
                self._count += 1
                try:
                    connection = await self._engine.connect()
                    raw = await connection.get_raw_connection()
                except BaseException:
                    self._count -= 1
                    self._wake_one(None)
                    raise
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
            self._idle.append(held)
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
        idle, self._idle = self._idle, []
        for held in idle:
            await self._give_back(held)
        if self._count:
            self._all_returned = asyncio.get_running_loop().create_future()
            done, _ = await asyncio.wait({self._all_returned}, timeout=timeout)
            if not done:
                logger.warning("closing with %d statements still running after %g s", self._count, timeout)

    async def _give_back(self, held: Held) -> None:
        self._count -= 1
        try:
            await held.connection.close()
        finally:
            self._wake_one(None)
            self._note_returned()

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
