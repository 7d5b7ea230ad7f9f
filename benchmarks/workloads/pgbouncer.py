"""PgBouncer: what transaction pooling costs the layer, and what synchronous_commit costs there.

    python benchmarks/bench.py pgbouncer [--url URL] [--rounds 5] [--trips 1000] [--inserts 2000]

Starts two Debian pgbouncers (the tests' helper, tests/pgbouncer.py: pool_mode = transaction,
two server connections) in front of --url: one whose connect_query sets
``synchronous_commit = off``, one that leaves the server's setting. Measured for the layer
direct and through each: ``send`` then ``receive`` p50 in ms, and 200 concurrent sends in
sends/s; and single-row INSERTs per second on one asyncpg connection, each its own
transaction, in five setups. Every setup is measured in each of --rounds rounds, taking turns,
so that a busy machine slows them alike; the table shows medians. Needs the schema migrated
into --url; creates, and drops, a scratch table for the INSERTs.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack
from functools import partial
from typing import Any

from harness.cli import add_url, print_header
from harness.compare import fresh_prefix
from harness.db import connect
from harness.layers import ours
from harness.procs import round_trips
from harness.table import render

SCRATCH = "channel_layer_pg_bench_scratch"
CONCURRENT = 200
SYNC_OFF = "SET synchronous_commit = off"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def running_pgbouncer(url: str, **options: Any) -> Any:
    """tests/pgbouncer.py, loaded by its path: the repository root on sys.path would shadow
    whichever channel_layer_pg PYTHONPATH chose."""
    spec = importlib.util.spec_from_file_location(
        "bench_pgbouncer", os.path.join(ROOT, "tests", "pgbouncer.py")
    )
    if spec is None or spec.loader is None:
        raise RuntimeError("tests/pgbouncer.py not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.running_pgbouncer(url, **options)


async def concurrent_sends(layer: Any, batches: int) -> float:
    start = time.perf_counter()
    for batch in range(batches):
        await asyncio.gather(*(layer.send(f"bench.c-{batch}-{n}", {"type": "x"}) for n in range(CONCURRENT)))
    return batches * CONCURRENT / (time.perf_counter() - start)


async def insert_rate(url: str, count: int, *, cache: bool, setup: str | None, set_local: bool) -> float:
    conn = await connect(url, statement_cache_size=100 if cache else 0)
    try:
        if setup is not None:
            await conn.execute(setup)
        insert, payload = f"INSERT INTO {SCRATCH} (payload) VALUES ($1)", b"x" * 100
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


async def _medians(setups: dict[str, Callable[[], Awaitable[Any]]], rounds: int) -> dict[str, list[Any]]:
    """Each setup once per round, taking turns."""
    results: dict[str, list[Any]] = {label: [] for label in setups}
    for _ in range(rounds):
        for label, run in setups.items():
            results[label].append(await run())
    return results


async def measure(url: str, rounds: int, trips: int, inserts: int) -> list[list[str]]:
    admin = await connect(url)
    await admin.execute(f"CREATE TABLE IF NOT EXISTS {SCRATCH} (id bigserial PRIMARY KEY, payload bytea)")
    rows = []
    try:
        with ExitStack() as bouncers:
            off = bouncers.enter_context(running_pgbouncer(url, connect_query=SYNC_OFF))
            on = bouncers.enter_context(running_pgbouncer(url))
            async with AsyncExitStack() as stack:
                layers = {}
                for label, options in {
                    "direct (named statements, synchronous_commit=off)": {"url": url},
                    "PgBouncer, connect_query synchronous_commit=off": {"url": off.url, "listen_url": url},
                    "PgBouncer, server's synchronous_commit=on": {"url": on.url, "listen_url": url},
                }.items():
                    layer = ours(options.pop("url"), fresh_prefix(), capacity=1_000_000, **options)
                    layers[label] = await stack.enter_async_context(layer)
                    stack.push_async_callback(layer.flush)
                    await round_trips(layer, "bench.round-trip", count=0, warmup=20)  # connections, LISTEN

                def one_round(layer: Any) -> Callable[[], Awaitable[tuple[list[float], float]]]:
                    async def run() -> tuple[list[float], float]:
                        samples = await round_trips(
                            layer, "bench.round-trip", count=trips // rounds, warmup=0
                        )
                        return samples, await concurrent_sends(layer, 2)

                    return run

                results = await _medians({label: one_round(layer) for label, layer in layers.items()}, rounds)
                for label, runs in results.items():
                    times = [s for samples, _ in runs for s in samples]
                    rows.append(
                        [f"layer send+receive p50, {label}", f"{statistics.median(times) * 1000:.2f} ms"]
                    )
                    rates = [rate for _, rate in runs]
                    rows.append(
                        [
                            f"layer {CONCURRENT} concurrent sends, {label}",
                            f"{statistics.median(rates):,.0f}/s",
                        ]
                    )
            # label: (url, statement cache, statement on connect, SET LOCAL in each transaction)
            inserts_by = {
                "direct, named statements, synchronous_commit=off": (url, True, SYNC_OFF, False),
                "direct, unnamed statements, synchronous_commit=off": (url, False, SYNC_OFF, False),
                "PgBouncer, connect_query synchronous_commit=off": (off.url, False, None, False),
                "PgBouncer, BEGIN; SET LOCAL synchronous_commit=off; INSERT; COMMIT": (
                    on.url,
                    False,
                    None,
                    True,
                ),
                "PgBouncer, server's synchronous_commit=on": (on.url, False, None, False),
            }
            setups: dict[str, Callable[[], Awaitable[Any]]] = {
                label: partial(
                    insert_rate, target, inserts // rounds, cache=cache, setup=setup, set_local=local
                )
                for label, (target, cache, setup, local) in inserts_by.items()
            }
            for label, rates in (await _medians(setups, rounds)).items():
                rows.append([f"INSERTs, {label}", f"{statistics.median(rates):,.0f}/s"])
    finally:
        await admin.execute(f"DROP TABLE IF EXISTS {SCRATCH}")
        await admin.close()
    return rows


async def run(args: argparse.Namespace) -> int:
    await print_header(args.url, args.label)
    print()
    print(render(["setup", "median"], await measure(args.url, args.rounds, args.trips, args.inserts)))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.py pgbouncer", description=__doc__.split("\n\n")[0])
    add_url(parser)
    parser.add_argument("--rounds", type=int, default=5, help="rounds, each measuring every setup")
    parser.add_argument("--trips", type=int, default=1000, help="send+receive round trips per setup")
    parser.add_argument("--inserts", type=int, default=2000, help="single-row INSERTs per setup")
    return asyncio.run(run(parser.parse_args(argv)))
