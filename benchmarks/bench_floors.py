"""What the workloads cost with no layer at all: the floors every layer's figures stand on.

A send is at least one round trip to the server, a receive of a stored message another, and a
call from sync code at least what async_to_sync itself costs. Measured here, in the same run as
the table, so a ratio between two layers can be read against how much of each figure is floor:
two layers that both sit a little above the same floor cannot be far apart in ratio.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import async_to_sync
from bench_env import connect

FLOOR_PREFIX = "bench_floor"
_ROUNDS, _PER_ROUND = 5, 400
_INSERT = (
    "INSERT INTO channel_layer_pg_message (prefix, queue, channel, expires_at, payload) "
    "VALUES ($1, $2, $2, now() + interval '60 s', $3)"
)
_DELETE_OLDEST = (
    "DELETE FROM channel_layer_pg_message WHERE id = (SELECT id FROM channel_layer_pg_message "
    "WHERE prefix = $1 AND queue = $2 ORDER BY id LIMIT 1) RETURNING payload"
)


async def floors(pg_url: str) -> list[str]:
    """One line each: raw asyncpg round trips on the layer's table, and async_to_sync of a no-op."""
    conn = await connect(pg_url)
    try:
        # The same commit setting as our layer's default, so the floor is ours too.
        await conn.execute("SET synchronous_commit = off")
        queue, payload = f"{FLOOR_PREFIX}.q", b"\x81\xa4type\xa1x"

        async def select_one() -> None:
            await conn.fetchval("SELECT 1")

        async def insert_then_delete() -> None:
            await conn.execute(_INSERT, FLOOR_PREFIX, queue, payload)
            await conn.fetchval(_DELETE_OLDEST, FLOOR_PREFIX, queue)

        round_trip = await _median_us(select_one)
        send_receive = await _median_us(insert_then_delete)
    finally:
        try:
            await conn.execute("DELETE FROM channel_layer_pg_message WHERE prefix = $1", FLOOR_PREFIX)
        finally:
            await conn.close()
    sync_call = await asyncio.to_thread(_sync_noop_us)
    return [
        f"floors (no layer): a round trip (SELECT 1) {round_trip / 1000:.2f} ms; "
        f"INSERT then DELETE … RETURNING of one row in the layer's table {send_receive / 1000:.2f} ms "
        "(the least a send plus a receive can cost); "
        f"async_to_sync of a coroutine that does nothing, from a plain thread {sync_call / 1000:.2f} ms "
        "(the least a sync call can cost)"
    ]


async def _median_us(operation: Callable[[], Awaitable[Any]]) -> float:
    for _ in range(50):  # warm up: prepared statements, caches
        await operation()
    rounds = []
    for _ in range(_ROUNDS):
        started = time.perf_counter()
        for _ in range(_PER_ROUND):
            await operation()
        rounds.append((time.perf_counter() - started) / _PER_ROUND * 1e6)
    return statistics.median(rounds)


async def _nothing() -> None:
    return None


def _sync_noop_us() -> float:
    """Microseconds per async_to_sync call of a no-op; run it in a thread with no event loop."""
    call = async_to_sync(_nothing)
    for _ in range(50):
        call()
    rounds = []
    for _ in range(_ROUNDS):
        started = time.perf_counter()
        for _ in range(_PER_ROUND):
            call()
        rounds.append((time.perf_counter() - started) / _PER_ROUND * 1e6)
    return statistics.median(rounds)
