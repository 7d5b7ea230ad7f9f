"""What a connection checkout adds to one statement: SQLAlchemy's async pool, ours, or none.

Every variant runs the same statement through asyncpg itself (the layer sends its compiled SQL
straight to the driver), so the differences are the checkout and return alone:

- ``sqlalchemy connect``: ``AsyncEngine.connect()`` on an AsyncAdaptedQueuePool, the raw
  asyncpg connection under it, ``close()`` to return it;
- ``sqlalchemy raw_connection``: ``AsyncEngine.raw_connection()`` and its ``close()`` (run in
  a greenlet, as the pool's return may talk to the server), the lightest public checkout;
- ``layer pool``: the layer's own pool (``store.pool.HeldConnections``), acquire and release;
- ``layer runner``: the layer's whole per-statement path (``StatementRunner.fetch``: the pool,
  the shield that keeps a cancelled statement's connection usable, the error translation);
- ``bare asyncpg``: one connection, no pool: the floor.

Each statement is run sequentially (one in flight), so the figure is latency, and is
``SELECT 1`` or, in turn, a one-row INSERT into channel_layer_pg_message and the DELETE of that
row (two statements, two checkouts; the figure is per statement). Variants take turns within
each round, so a neighbour's load on a shared machine falls on all of them alike; the median
of the rounds is printed, with the lowest and highest round.

    python benchmarks/bench.py pool-checkout [--url URL] [--rounds 15] [--count 500]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql.base import Executable
from sqlalchemy.util import greenlet_spawn

from channel_layer_pg.config import build_config
from channel_layer_pg.store.db import StatementRunner, _connect_args, create_engine
from channel_layer_pg.store.pool import HeldConnections

PREFIX = "bench_pool_checkout"
SELECT_ONE = text("SELECT 1")
INSERT = text(
    "INSERT INTO channel_layer_pg_message (prefix, queue, channel, expires_at, payload) "
    "VALUES (:prefix, :prefix, :prefix, now() + interval '60 s', :payload) RETURNING id"
)
DELETE = text("DELETE FROM channel_layer_pg_message WHERE id = :id")
_PAYLOAD = b"\x81\xa4type\xa1x"

# Runs one Core statement with its parameters and returns its rows.
Run = Callable[[Executable, dict[str, Any]], Awaitable[list[Any]]]


class _Sql:
    """A statement compiled once for asyncpg, as the layer's runner does: SQL and argument order."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._compiled: dict[Executable, tuple[str, list[str]]] = {}

    def __call__(self, statement: Executable, parameters: dict[str, Any]) -> tuple[str, list[Any]]:
        compiled = self._compiled.get(statement)
        if compiled is None:
            built = statement.compile(dialect=self._engine.dialect)  # type: ignore[attr-defined]
            compiled = self._compiled[statement] = (str(built), list(built.positiontup or ()))
        sql, order = compiled
        return sql, [parameters[key] for key in order]


class Variants:
    """The checkouts compared, each on connections made with the layer's own settings."""

    def __init__(self, url: str) -> None:
        config = build_config({"url": url})
        self.null_engine, _ = create_engine(config, use_given_engine=False)
        # The layer's connect arguments (application_name, synchronous_commit=off, the plan
        # settings) on an engine with SQLAlchemy's default async pool.
        self.queue_engine: AsyncEngine = create_async_engine(
            self.null_engine.url,
            isolation_level="AUTOCOMMIT",
            connect_args=_connect_args(config, config.connect_args),
            pool_size=config.pool_size,
            max_overflow=config.max_overflow,
            # Its best case for autocommitted statements: no rollback on return, no ping.
            pool_reset_on_return=None,
        )
        self.held = HeldConnections(
            self.null_engine,
            keep=config.pool_size,
            most=config.pool_size,
            idle_timeout=config.pool_idle_timeout,
        )
        self.runner = StatementRunner(self.null_engine, config, owns_engine=True)
        self.sql = _Sql(self.null_engine)
        self.bare: Any = None

    async def open(self) -> None:
        raw = await self.null_engine.raw_connection()
        self.bare = raw.driver_connection
        # The NullPool engine's connection, detached: the layer's settings, no pool.
        raw.detach()

    async def close(self) -> None:
        await self.runner.close()
        await self.held.close(timeout=5)
        if self.bare is not None:
            await self.bare.execute("DELETE FROM channel_layer_pg_message WHERE prefix = $1", PREFIX)
            await self.bare.close()
        await self.queue_engine.dispose()
        await self.null_engine.dispose()

    def checkouts_only(self) -> dict[str, Run]:
        """The pools' checkout and return with no statement between (the statement is ignored)."""
        return {
            "sqlalchemy connect": self._sqlalchemy_connect_only,
            "sqlalchemy raw_connection": self._sqlalchemy_raw_only,
            "layer pool": self._layer_pool_only,
        }

    async def _sqlalchemy_connect_only(self, _: Executable, __: dict[str, Any]) -> list[Any]:
        async with self.queue_engine.connect() as conn:
            await conn.get_raw_connection()
        return []

    async def _sqlalchemy_raw_only(self, _: Executable, __: dict[str, Any]) -> list[Any]:
        raw = await self.queue_engine.raw_connection()
        await greenlet_spawn(raw.close)
        return []

    async def _layer_pool_only(self, _: Executable, __: dict[str, Any]) -> list[Any]:
        await self.held.release(await self.held.acquire())
        return []

    def runs(self) -> dict[str, Run]:
        return {
            "sqlalchemy connect": self._sqlalchemy_connect,
            "sqlalchemy raw_connection": self._sqlalchemy_raw,
            "layer pool": self._layer_pool,
            "layer runner": self.runner.fetch,
            "bare asyncpg": self._bare,
        }

    async def _sqlalchemy_connect(self, statement: Executable, parameters: dict[str, Any]) -> list[Any]:
        sql, arguments = self.sql(statement, parameters)
        async with self.queue_engine.connect() as conn:
            raw = await conn.get_raw_connection()
            return await raw.driver_connection.fetch(sql, *arguments)  # type: ignore[no-any-return,union-attr]

    async def _sqlalchemy_raw(self, statement: Executable, parameters: dict[str, Any]) -> list[Any]:
        sql, arguments = self.sql(statement, parameters)
        raw = await self.queue_engine.raw_connection()
        try:
            return await raw.driver_connection.fetch(sql, *arguments)  # type: ignore[no-any-return,union-attr]
        finally:
            await greenlet_spawn(raw.close)

    async def _layer_pool(self, statement: Executable, parameters: dict[str, Any]) -> list[Any]:
        sql, arguments = self.sql(statement, parameters)
        held = await self.held.acquire()
        try:
            return await held.driver.fetch(sql, *arguments)  # type: ignore[no-any-return]
        finally:
            await self.held.release(held)

    async def _bare(self, statement: Executable, parameters: dict[str, Any]) -> list[Any]:
        sql, arguments = self.sql(statement, parameters)
        return await self.bare.fetch(sql, *arguments)  # type: ignore[no-any-return]


async def _select_one(run: Run) -> None:
    await run(SELECT_ONE, {})


async def _nothing(run: Run) -> None:
    await run(SELECT_ONE, {})


async def _insert_then_delete(run: Run) -> None:
    ((row_id,),) = await run(INSERT, {"prefix": PREFIX, "payload": _PAYLOAD})
    await run(DELETE, {"id": row_id})


async def _per_statement_us(run: Callable[[], Awaitable[None]], count: int, statements: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        await run()
    return (time.perf_counter() - started) / (count * statements) * 1e6


Results = dict[str, dict[str, list[float]]]


async def measure(url: str, rounds: int, count: int) -> Results:
    variants = Variants(url)
    await variants.open()
    runs = variants.runs()
    workloads: dict[str, tuple[Callable[[Run], Awaitable[None]], int, dict[str, Run]]] = {
        "SELECT 1": (_select_one, 1, runs),
        "INSERT + DELETE of one row": (_insert_then_delete, 2, runs),
        # No round trip: what the checkout and return cost the event loop's CPU alone, the
        # figure that moves least when a neighbour loads the machine.
        "checkout and return, no statement": (_nothing, 1, variants.checkouts_only()),
    }
    results: Results = {
        workload: {name: [] for name in pools} for workload, (_, _, pools) in workloads.items()
    }
    try:
        for work, _, pools in workloads.values():  # warm up: connections, prepared statements
            for run in pools.values():
                for _ in range(200):
                    await work(run)
        for _ in range(rounds):
            for workload, (work, statements, pools) in workloads.items():
                for name, run in pools.items():
                    results[workload][name].append(
                        await _per_statement_us(lambda: work(run), count, statements)  # noqa: B023
                    )
    finally:
        await variants.close()
    return results


def report(results: Results, rounds: int, count: int) -> None:
    print(f"us per statement: median of {rounds} rounds of {count} (lowest-highest round)")
    for workload, by_variant in results.items():
        print(f"\n{workload}")
        floor = statistics.median(by_variant["bare asyncpg"]) if "bare asyncpg" in by_variant else None
        for name, figures in by_variant.items():
            median = statistics.median(figures)
            over = f"  {median - floor:+6.1f} over bare" if floor is not None else ""
            print(f"  {name:<26} {median:7.1f}  ({min(figures):.1f}-{max(figures):.1f}){over}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.py pool-checkout", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/bench")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--count", type=int, default=500, help="statements per variant per round")
    args = parser.parse_args(argv)
    report(asyncio.run(measure(args.url, args.rounds, args.count)), args.rounds, args.count)
    return 0
