"""Plan drift: mean ms per send and per receive as one queue grows, on plans made on an empty table.

    python benchmarks/bench.py plan-drift [--url URL] [--rows 4000]

asyncpg keeps each statement prepared for the life of its connection, and PostgreSQL keeps a
plan with it. Right after VACUUM ANALYZE of an empty message table, a plan scans the table
whole unless sequential scans are off, as they are on the layer's own connections. This
sends ``--rows`` messages to one channel one at a time, then receives them all, and prints the
mean time per call for each quarter; twice: on the layer's own connections, and on an
``engine`` passed in (``synchronous_commit=off`` like the layer's), which keeps the server's
``enable_seqscan``. It works in a database of its own, created on --url's server (the role
needs CREATEDB), migrated, and dropped at the end, so the table really is empty when the
statements are planned.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from harness.cli import add_url, print_header
from harness.db import TABLES, connect
from harness.layers import ours
from harness.table import render
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

BLOCKS = 4


async def _per_block(operation: Callable[[], Awaitable[Any]], rows: int) -> list[float]:
    """Mean ms per call over each of BLOCKS equal blocks of ``rows`` calls."""
    block, means = rows // BLOCKS, []
    for _ in range(BLOCKS):
        started = time.perf_counter()
        for _ in range(block):
            await operation()
        means.append((time.perf_counter() - started) / block * 1000)
    return means


async def _measure(database: str, rows: int, **options: Any) -> tuple[list[float], list[float]]:
    """Sends, then receives, on a layer made with ``options`` (its url=, or an engine=)."""
    conn = await connect(database)
    try:
        for table in TABLES:  # empty tables, and statistics that say so
            await conn.execute(f"DELETE FROM {table}")
            await conn.execute(f"VACUUM ANALYZE {table}")
    finally:
        await conn.close()
    layer = ours(options.pop("url", None), "bench-plan-drift", capacity=rows * 2, **options)
    try:
        sends = await _per_block(lambda: layer.send("drift.queue", {"type": "drift"}), rows)
        receives = await _per_block(lambda: layer.receive("drift.queue"), rows)
    finally:
        await layer.flush()
        await layer.close()
    return sends, receives


async def run(server_url: str, rows: int, label: str | None) -> int:
    from channel_layer_pg import migrate

    await print_header(server_url, label)
    name = f"clpg_plan_drift_{os.getpid()}"
    admin = await connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
        await asyncio.to_thread(migrate, url)
        own = await _measure(url, rows, url=url)
        engine = create_async_engine(
            make_url(url).set(drivername="postgresql+asyncpg"),
            connect_args={"server_settings": {"synchronous_commit": "off"}},
        )
        try:
            given = await _measure(url, rows, engine=engine)
        finally:
            await engine.dispose()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    block = rows // BLOCKS
    table = [
        [f"{kind}, {lo}-{hi}", f"{mine[i]:.2f}", f"{theirs[i]:.2f}"]
        for kind, mine, theirs, edges in (
            ("send", own[0], given[0], [(i * block, (i + 1) * block) for i in range(BLOCKS)]),
            (
                "receive",
                own[1],
                given[1],
                [(rows - i * block, rows - (i + 1) * block) for i in range(BLOCKS)],
            ),
        )
        for i, (lo, hi) in enumerate(edges)
    ]
    print(f"\nmean ms per call, after VACUUM ANALYZE of the empty tables of a new database on {name}")
    print(render(["queued rows", "layer connections", "an engine you pass"], table))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.py plan-drift", description=__doc__.split("\n\n")[0])
    add_url(parser, "a server to make a database on")
    parser.add_argument("--rows", type=int, default=4000, help="messages to queue, then receive")
    args = parser.parse_args(argv)
    return asyncio.run(run(args.url, args.rows, args.label))
