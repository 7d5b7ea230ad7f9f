"""What a send and a claim cost as a queue grows, when their plans were made on an empty table.

asyncpg keeps each statement prepared for the life of its connection, and PostgreSQL keeps a
plan with it. Right after VACUUM ANALYZE of an empty message table, a plan scans the table
whole unless sequential scans are off, as they are on the layer's own connections (see
PLAN_SETTINGS in channel_layer_pg/database.py). An engine you pass in keeps the server's
settings: the second column.

    python benchmarks/plan_drift.py [--url URL] [--rows 4000]

Works in a database of its own, created on --url's server (the role needs CREATEDB), migrated,
and dropped at the end, so that the table is really empty when the statements are planned.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Callable

import asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from channel_layer_pg import PostgresChannelLayer, migrate
from channel_layer_pg.config import asyncpg_url

DEFAULT_URL = os.environ.get("CHANNEL_LAYER_PG_URL", "postgresql://postgres@127.0.0.1:5432/bench")
PREFIX = "bench-plan-drift"
CHANNEL = "drift.queue"
BLOCKS = 4


async def fresh_tables(url: str) -> None:
    """Empty tables, and statistics that say so."""
    connection = await asyncpg.connect(url)
    try:
        for table in ("channel_layer_pg_message", "channel_layer_pg_group_member"):
            await connection.execute(f"DELETE FROM {table}")
            await connection.execute(f"VACUUM ANALYZE {table}")
    finally:
        await connection.close()


async def per_block(operation: Callable[[], object], rows: int) -> list[float]:
    """Mean ms per call over each of BLOCKS equal blocks of ``rows`` calls."""
    block = rows // BLOCKS
    means = []
    for _ in range(BLOCKS):
        started = time.perf_counter()
        for _ in range(block):
            await operation()  # type: ignore[misc]
        means.append((time.perf_counter() - started) / block * 1000)
    return means


async def measure(url: str, rows: int, engine: AsyncEngine | None) -> tuple[list[float], list[float]]:
    await fresh_tables(url)
    options = {"engine": engine} if engine is not None else {"url": url}
    layer = PostgresChannelLayer(prefix=PREFIX, capacity=rows * 2, **options)
    try:
        sends = await per_block(lambda: layer.send(CHANNEL, {"type": "drift"}), rows)
        receives = await per_block(lambda: layer.receive(CHANNEL), rows)
    finally:
        await layer.flush()
        await layer.close()
    return sends, receives


async def main(server_url: str, rows: int) -> None:
    name = f"clpg_plan_drift_{os.getpid()}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
        migrate(url)
        await compare(url, rows)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def compare(url: str, rows: int) -> None:
    own = await measure(url, rows, engine=None)
    # An application's engine, with the layer's synchronous_commit so that only the plans differ.
    engine = create_async_engine(
        asyncpg_url(url)[0], connect_args={"server_settings": {"synchronous_commit": "off"}}
    )
    try:
        given = await measure(url, rows, engine=engine)
    finally:
        await engine.dispose()
    block = rows // BLOCKS
    print(f"mean ms per call, after VACUUM ANALYZE of the empty tables of a new database on {url}")
    print(f"{'queued rows':>22} | {'layer connections':>17} | {'an engine you pass':>18}")
    for index in range(BLOCKS):
        low, high = index * block, (index + 1) * block
        print(f"{'send, ' + f'{low}-{high}':>22} | {own[0][index]:17.2f} | {given[0][index]:18.2f}")
    for index in range(BLOCKS):
        low, high = rows - index * block, rows - (index + 1) * block
        print(f"{'receive, ' + f'{low}-{high}':>22} | {own[1][index]:17.2f} | {given[1][index]:18.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url", default=DEFAULT_URL, help=f"a server to make a database on; default: {DEFAULT_URL}"
    )
    parser.add_argument("--rows", type=int, default=4000, help="messages to queue, then receive")
    args = parser.parse_args()
    asyncio.run(main(args.url, args.rows))
