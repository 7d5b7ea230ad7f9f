"""What PgBouncer in transaction mode costs the layer, and what synchronous_commit costs there.

    python benchmarks/pgbouncer.py [--url URL] [--rounds N] [--trips N] [--inserts N]

Starts two Debian pgbouncers (tests/pgbouncer.py: pool_mode = transaction, two server
connections) in front of --url: one whose connect_query sets synchronous_commit = off, one
that leaves the server's setting. Every setup is measured in each of --rounds rounds, the
setups taking turns, so that a busy machine slows them alike; the table shows medians.
Needs the schema migrated into --url; creates, and drops, a scratch table for the INSERTs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack

import asyncpg
from sqlalchemy.engine import make_url

# The repository root, for the PgBouncer helper the tests use.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from channel_layer_pg import PostgresChannelLayer
from tests.pgbouncer import running_pgbouncer

SCRATCH = "channel_layer_pg_bench_scratch"
CONCURRENT = 200
SYNC_OFF = "SET synchronous_commit = off"


async def round_trips(layer: PostgresChannelLayer, trips: int) -> list[float]:
    """Seconds per send-then-receive on one channel, one message at a time."""
    times = []
    for _ in range(trips):
        start = time.perf_counter()
        await layer.send("bench.round-trip", {"type": "x"})
        await layer.receive("bench.round-trip")
        times.append(time.perf_counter() - start)
    return times


async def concurrent_sends(layer: PostgresChannelLayer, batches: int) -> float:
    """Sends per second, CONCURRENT at a time."""
    start = time.perf_counter()
    for batch in range(batches):
        await asyncio.gather(*(layer.send(f"bench.c-{batch}-{n}", {"type": "x"}) for n in range(CONCURRENT)))
    return batches * CONCURRENT / (time.perf_counter() - start)


async def insert_rate(dsn: str, count: int, *, cache: bool, setup: str | None, set_local: bool) -> float:
    """Single-row INSERTs per second on one asyncpg connection, each its own transaction."""
    conn = await asyncpg.connect(dsn, statement_cache_size=100 if cache else 0)
    try:
        if setup is not None:
            await conn.execute(setup)
        insert = f"INSERT INTO {SCRATCH} (payload) VALUES ($1)"
        payload = b"x" * 100
        start = time.perf_counter()
        for _ in range(count):
            if set_local:
                async with conn.transaction():
                    await conn.execute("SET LOCAL synchronous_commit = off")
                    await conn.execute(insert, payload)
            else:
                await conn.execute(insert, payload)
        return count / (time.perf_counter() - start)
    finally:
        await conn.close()


def asyncpg_dsn(url: str) -> str:
    parsed = make_url(url)
    host = parsed.query.get("host")
    direct = parsed.set(drivername="postgresql", query={"host": host} if host else {})
    return direct.render_as_string(hide_password=False)


async def measure(url: str, rounds: int, trips: int, inserts: int) -> list[tuple[str, str]]:
    direct = asyncpg_dsn(url)
    admin = await asyncpg.connect(direct)
    await admin.execute(f"CREATE TABLE IF NOT EXISTS {SCRATCH} (id bigserial PRIMARY KEY, payload bytea)")
    try:
        with ExitStack() as bouncers:
            off = bouncers.enter_context(running_pgbouncer(url, connect_query=SYNC_OFF))
            on = bouncers.enter_context(running_pgbouncer(url))
            async with AsyncExitStack() as layers:
                setups = {
                    "direct (named statements, synchronous_commit=off)": {"url": url},
                    "PgBouncer, connect_query synchronous_commit=off": {"url": off.url, "listen_url": url},
                    "PgBouncer, server's synchronous_commit=on": {"url": on.url, "listen_url": url},
                }
                opened = {}
                for label, options in setups.items():
                    prefix = f"b{uuid.uuid4().hex[:10]}"
                    layer = PostgresChannelLayer(prefix=prefix, capacity=1_000_000, **options)
                    opened[label] = await layers.enter_async_context(layer)
                    layers.push_async_callback(layer.flush)
                    await round_trips(layer, 20)  # warm-up: connections, LISTEN
                rows = await layer_rows(opened, rounds, trips)
            rows += await insert_rows(direct, off.url, on.url, rounds, inserts)
    finally:
        await admin.execute(f"DROP TABLE IF EXISTS {SCRATCH}")
        await admin.close()
    return rows


async def layer_rows(
    layers: dict[str, PostgresChannelLayer], rounds: int, trips: int
) -> list[tuple[str, str]]:
    times: dict[str, list[float]] = {label: [] for label in layers}
    rates: dict[str, list[float]] = {label: [] for label in layers}
    for _ in range(rounds):
        for label, layer in layers.items():
            times[label] += await round_trips(layer, trips // rounds)
            rates[label].append(await concurrent_sends(layer, 2))
    rows = []
    for label in layers:
        rows.append((f"layer send+receive p50, {label}", f"{statistics.median(times[label]) * 1000:.2f} ms"))
        rows.append(
            (f"layer {CONCURRENT} concurrent sends, {label}", f"{statistics.median(rates[label]):,.0f}/s")
        )
    return rows


async def insert_rows(direct: str, off: str, on: str, rounds: int, inserts: int) -> list[tuple[str, str]]:
    per_round = inserts // rounds
    setups: dict[str, Callable[[], Awaitable[float]]] = {
        "direct, named statements, synchronous_commit=off": lambda: insert_rate(
            direct, per_round, cache=True, setup=SYNC_OFF, set_local=False
        ),
        "direct, unnamed statements, synchronous_commit=off": lambda: insert_rate(
            direct, per_round, cache=False, setup=SYNC_OFF, set_local=False
        ),
        "PgBouncer, connect_query synchronous_commit=off": lambda: insert_rate(
            off, per_round, cache=False, setup=None, set_local=False
        ),
        "PgBouncer, BEGIN; SET LOCAL synchronous_commit=off; INSERT; COMMIT": lambda: insert_rate(
            on, per_round, cache=False, setup=None, set_local=True
        ),
        "PgBouncer, server's synchronous_commit=on": lambda: insert_rate(
            on, per_round, cache=False, setup=None, set_local=False
        ),
    }
    rates: dict[str, list[float]] = {label: [] for label in setups}
    for _ in range(rounds):
        for label, run in setups.items():
            rates[label].append(await run())
    return [(f"INSERTs, {label}", f"{statistics.median(rates[label]):,.0f}/s") for label in setups]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("CHANNEL_LAYER_PG_URL", "postgresql://postgres@127.0.0.1:5432/bench"),
        help="PostgreSQL with the schema migrated (default: $CHANNEL_LAYER_PG_URL or .../bench)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds, each measuring every setup")
    parser.add_argument("--trips", type=int, default=1000, help="send+receive round trips per setup")
    parser.add_argument("--inserts", type=int, default=2000, help="single-row INSERTs per setup")
    args = parser.parse_args()
    rows = asyncio.run(measure(args.url, args.rounds, args.trips, args.inserts))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
