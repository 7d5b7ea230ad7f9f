"""Everything the layer holds for one event loop: an engine, a listener, readers, cleanup.

asyncpg connections belong to the loop that opened them, so each loop that uses the layer
gets its own; the layer keeps one of these per loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from . import statements
from .config import LayerConfig
from .database import connection, create_engine
from .listener import Listener
from .naming import topic_for
from .reader import Claimed, QueueReader

logger = logging.getLogger("channel_layer_pg")

CLEANUP_INTERVAL = 30.0
CLEANUP_BATCH = 1000


class LoopBackend:
    def __init__(self, config: LayerConfig, *, pooled: bool) -> None:
        self._config = config
        self.engine: AsyncEngine
        self.engine, self._owns_engine = create_engine(config, pooled=pooled)
        self._listener = Listener(self.engine, config)
        self._readers: dict[str, QueueReader] = {}
        self._cleanup_task: asyncio.Task[None] | None = None

    async def execute(self, statement: Any, parameters: dict[str, Any]) -> Sequence[Any]:
        async with connection(self.engine, self._config) as conn:
            result = await conn.execute(statement, parameters)
            return result.all() if result.returns_rows else ()

    async def enqueue(self, payload: bytes, targets: Sequence[tuple[str, str, int]]) -> int:
        """Store ``payload`` once per (queue, channel, capacity) target with room; how many were."""
        self._ensure_cleanup()
        prefix = self._config.prefix
        (row,) = await self.execute(
            statements.ENQUEUE,
            {
                "prefix": prefix,
                "expiry": self._config.expiry,
                "payload": payload,
                "queues": [queue for queue, _, _ in targets],
                "channels": [channel for _, channel, _ in targets],
                "capacities": [capacity for _, _, capacity in targets],
                "topics": [topic_for(prefix, queue) for queue, _, _ in targets],
            },
        )
        return int(row.inserted)

    async def receive(self, queue: str, channel: str) -> bytes:
        self._ensure_cleanup()
        reader = self._readers.get(queue)
        if reader is None:
            reader = QueueReader(
                queue, topic_for(self._config.prefix, queue), self._listener, self._claim, self._forget
            )
            self._readers[queue] = reader
        return await reader.receive(channel)

    async def close(self, exc: BaseException) -> None:
        if self._cleanup_task is not None:
            self._cleanup_task.cancel()
            await asyncio.gather(self._cleanup_task, return_exceptions=True)
        readers, self._readers = list(self._readers.values()), {}
        await asyncio.gather(*(reader.close(exc) for reader in readers))
        await self._listener.close()
        if self._owns_engine:
            await self.engine.dispose()

    def fail_waiters(self, exc: BaseException) -> None:
        for reader in self._readers.values():
            reader.fail_waiters(exc)

    async def _claim(self, queue: str, channels: Sequence[str], limit: int) -> list[Claimed]:
        rows = await self.execute(
            statements.CLAIM,
            {"prefix": self._config.prefix, "queue": queue, "channels": channels, "limit": limit},
        )
        return [Claimed(row.id, row.channel, row.expires_at, row.payload) for row in rows]

    def _forget(self, reader: QueueReader) -> None:
        if self._readers.get(reader.queue) is reader:
            del self._readers[reader.queue]

    def _ensure_cleanup(self) -> None:
        if self._cleanup_task is None or self._cleanup_task.done():
            self._cleanup_task = asyncio.get_running_loop().create_task(
                self._clean_periodically(), name="channel_layer_pg cleanup"
            )

    async def _clean_periodically(self) -> None:
        while True:
            await asyncio.sleep(CLEANUP_INTERVAL)
            try:
                await self.delete_expired()
            except Exception as exc:
                logger.warning("removing expired rows failed: %s", exc)

    async def delete_expired(self) -> int:
        """Remove expired messages and lapsed memberships in bounded batches; rows removed."""
        removed = 0
        for statement in (statements.DELETE_EXPIRED_MESSAGES, statements.DELETE_LAPSED_MEMBERS):
            while True:
                async with connection(self.engine, self._config) as conn:
                    result = await conn.execute(statement, {"batch": CLEANUP_BATCH})
                removed += result.rowcount
                if result.rowcount < CLEANUP_BATCH:
                    break
        if removed:
            logger.info("removed %d expired messages and lapsed group memberships", removed)
        return removed

    def clear_buffers(self) -> None:
        for reader in self._readers.values():
            reader.clear_buffers()
