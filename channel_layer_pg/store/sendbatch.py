"""Gathering concurrent sends into one statement.

A statement that inserts fifty rows costs little more than one that inserts one, so sends
that arrive while others are in flight wait for the next free slot and go together. A send
that finds a slot free goes at once on its own: batching never adds latency when there is
nothing to batch with.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PendingSend:
    queue: str
    channel: str
    capacity: int
    payload: bytes


SendOne = Callable[[PendingSend], Awaitable[bool]]
# Stores a batch; returns the 1-based positions of the sends that were stored.
SendMany = Callable[[Sequence[PendingSend]], Awaitable[set[int]]]


class SendBatcher:
    def __init__(self, send_one: SendOne, send_many: SendMany, *, slots: int) -> None:
        self._send_one = send_one
        self._send_many = send_many
        self._slots = slots
        self._in_flight = 0
        self._pending: list[tuple[PendingSend, asyncio.Future[bool]]] = []
        self._flushes: set[asyncio.Task[None]] = set()

    async def send(self, item: PendingSend) -> bool:
        """Whether ``item`` was stored (False: its queue was full)."""
        if self._in_flight < self._slots and not self._pending:
            self._in_flight += 1
            try:
                return await self._send_one(item)
            finally:
                self._in_flight -= 1
                self._flush_pending()
        stored: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((item, stored))
        self._flush_pending()
        # A cancelled caller stops waiting; its send, already in a batch, may still be stored.
        return await stored

    async def drain(self) -> None:
        """Wait for every batch in flight, so none is cut off by closing the pool."""
        while self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)

    def _flush_pending(self) -> None:
        if not self._pending or self._in_flight >= self._slots:
            return
        batch, self._pending = self._pending, []
        self._in_flight += 1
        flush = asyncio.get_running_loop().create_task(self._flush(batch))
        self._flushes.add(flush)
        flush.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[tuple[PendingSend, asyncio.Future[bool]]]) -> None:
        try:
            stored = await self._send_many([item for item, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
        else:
            for position, (_, future) in enumerate(batch, start=1):
                if not future.done():
                    future.set_result(position in stored)
        finally:
            self._in_flight -= 1
            self._flush_pending()
