"""Floors: what the workloads cost with no layer at all, in ms, printed above the comparison table.

On a plain asyncpg connection with ``synchronous_commit=off`` (our layer's default): a
``SELECT 1`` round trip; an ``INSERT`` of one row into channel_layer_pg_message followed by a
``DELETE ... RETURNING`` of it (the least a send plus a receive through a table can cost); and
``async_to_sync`` of a coroutine that does nothing, from a plain thread (the least any sync
call can cost). Each is the median of 5 rounds of 400 calls, after 50 not timed. Two layers
that both sit a little above the same floor cannot be far apart in ratio.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import async_to_sync
from harness.db import connect

PREFIX = "bench_floor"
# The floor a send plus a receive is measured against: one row in, then the oldest out.
INSERT_ONE = (
    "INSERT INTO channel_layer_pg_message (prefix, queue, channel, expires_at, payload) "
    "VALUES ($1, $2, $2, now() + interval '60 s', $3)"
)
DELETE_OLDEST = (
    "DELETE FROM channel_layer_pg_message WHERE id = (SELECT id FROM channel_layer_pg_message "
    "WHERE prefix = $1 AND queue = $2 ORDER BY id LIMIT 1) RETURNING payload"
)


async def _median_ms(timed: Callable[[int], Awaitable[float]]) -> float:
    """Median ms per call over 5 rounds of 400; ``timed(n)`` makes n calls, returns the seconds."""
    await timed(50)  # not counted: prepared statements, caches
    return statistics.median([await timed(400) / 400 * 1000 for _ in range(5)])


def _calls(operation: Callable[[], Awaitable[Any]]) -> Callable[[int], Awaitable[float]]:
    async def timed(n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            await operation()
        return time.perf_counter() - started

    return timed


def _sync_calls(n: int) -> float:
    """n calls of async_to_sync, in a thread with no event loop (asyncio.to_thread's)."""
    call = async_to_sync(_nothing)
    started = time.perf_counter()
    for _ in range(n):
        call()
    return time.perf_counter() - started


async def _nothing() -> None:
    return None


async def floors(pg_url: str) -> str:
    conn = await connect(pg_url)
    try:
        await conn.execute("SET synchronous_commit = off")
        queue, payload = f"{PREFIX}.q", b"\x81\xa4type\xa1x"

        async def insert_then_delete() -> None:
            await conn.execute(INSERT_ONE, PREFIX, queue, payload)
            await conn.fetchval(DELETE_OLDEST, PREFIX, queue)

        round_trip = await _median_ms(_calls(lambda: conn.fetchval("SELECT 1")))
        send_receive = await _median_ms(_calls(insert_then_delete))
    finally:
        try:
            await conn.execute("DELETE FROM channel_layer_pg_message WHERE prefix = $1", PREFIX)
        finally:
            await conn.close()
    sync_call = await _median_ms(lambda n: asyncio.to_thread(_sync_calls, n))
    return (
        f"floors (no layer): a round trip (SELECT 1) {round_trip:.2f} ms; INSERT then DELETE … RETURNING of "
        f"one row in the layer's table {send_receive:.2f} ms (the least a send plus a receive can cost); "
        f"async_to_sync of a coroutine that does nothing, from a plain thread {sync_call:.2f} ms "
        "(the least a sync call can cost)"
    )
