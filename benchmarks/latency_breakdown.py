"""Where a send→receive round trip's time goes: CPU per round trip, client and server.

Wall-clock figures on a shared machine say more about the neighbours than about the layer,
so this counts CPU time instead: the client's (this process, every thread) and the server
backends' (from /proc/PID/schedstat, so the server must run on this machine). Rows, each
the median of ``--rounds`` rounds of ``--count`` round trips after a warm-up, taken in turn
so that a change in the machine's load shifts them all alike:

- floor: INSERT of one row, then DELETE ... RETURNING of it, on one asyncpg connection
  (benchmarks/workloads/floors.py's statements);
- our SQL: statements.SEND then statements.CLAIM_CHANNEL as the layer compiles them, with
  the layer's arguments, on one asyncpg connection (the database's share);
- our SQL, no NOTIFY: the same, with SEND's pg_notify taken out (NOTIFY's share);
- SEND then the floor's DELETE, and the floor's INSERT then CLAIM_CHANNEL (each statement's
  share);
- layer: ``await layer.send(ch, m)`` then ``await layer.receive(ch)`` (the full path).

It also counts the statements the layer runs per round trip (fault seam), and with
``--profile`` prints the cProfile of the layer's round trips, by internal time. With
``--loop layer`` (or ``raw``) it only runs ``--count`` round trips, for instruction counts:

    python benchmarks/latency_breakdown.py --url postgresql://postgres@127.0.0.1:5432/bench
    valgrind --tool=callgrind python benchmarks/latency_breakdown.py --loop layer --count 1100
    # less the same with --count 100, divided by 1,000: instructions per round trip
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import Any

import asyncpg
import msgpack
from sqlalchemy.dialects import postgresql
from workloads.floors import DELETE_OLDEST, INSERT_ONE

from channel_layer_pg import PostgresChannelLayer
from channel_layer_pg.faults import FaultHooks
from channel_layer_pg.naming import topic_for
from channel_layer_pg.store import statements

PREFIX = "bench_breakdown"
MESSAGE = {"type": "bench.message", "n": 1}


class Counting(FaultHooks):
    def __init__(self) -> None:
        super().__init__()
        self.statements: Counter[str] = Counter()

    async def before_statement(self, name: str, parameters: Mapping[str, Any]) -> None:
        self.statements[name] += 1


def _server_cpu_ns(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            pass
    return total


async def _backend_pids(conn: asyncpg.Connection, database: str) -> list[int]:
    """Every client backend of the bench database: the layer's pool, its LISTEN connection."""
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'", database
    )
    return [row["pid"] for row in rows]


def _compiled(statement: Any) -> tuple[str, list[str], dict[str, Any]]:
    compiled = statement.compile(dialect=postgresql.asyncpg.dialect())
    return str(compiled), list(compiled.positiontup or ()), dict(compiled.params)


def _args(order: list[str], defaults: dict[str, Any], given: dict[str, Any]) -> list[Any]:
    return [given[key] if key in given else defaults[key] for key in order]


RoundTrip = Callable[[], Awaitable[None]]


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/bench")
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--loop",
        choices=("layer", "raw"),
        help="only run --count round trips (after 100 not counted) through the layer, or as our SQL "
        "on one connection, and print nothing: for valgrind --tool=callgrind",
    )
    options = parser.parse_args()

    probe = await asyncpg.connect(options.url)
    database = await probe.fetchval("SELECT current_database()")
    raw = await asyncpg.connect(
        options.url, server_settings={"synchronous_commit": "off", "enable_seqscan": "off"}
    )
    hooks = Counting()
    layer = PostgresChannelLayer(url=options.url, prefix=PREFIX, fault_hooks=hooks)
    channel, queue = f"{PREFIX}.latency", f"{PREFIX}.latency"
    payload = msgpack.packb(MESSAGE)  # the bytes the layer stores for it

    send_sql, send_order, send_defaults = _compiled(statements.SEND)
    quiet_sql = send_sql.replace("count(pg_notify($1::VARCHAR, $2::VARCHAR))", "count(*)")
    claim_sql, claim_order, claim_defaults = _compiled(statements.CLAIM_CHANNEL)
    send_args = _args(
        send_order,
        send_defaults,
        {
            "prefix": PREFIX,
            "queue": queue,
            "channel": channel,
            "capacity": 100,
            "expiry": timedelta(seconds=60),
            "payload": payload,
            "topic": topic_for(PREFIX, queue),
        },
    )
    claim_args = _args(claim_order, claim_defaults, {"prefix": PREFIX, "queue": queue, "limit": 1})
    # The two leading parameters were NOTIFY's alone: the rest move down by two.
    for n in range(3, len(send_order) + 1):
        quiet_sql = quiet_sql.replace(f"${n}::", f"${n - 2}::")
    quiet_args = send_args[2:]

    async def floor() -> None:
        await raw.execute(INSERT_ONE, PREFIX, queue, payload)
        await raw.fetchval(DELETE_OLDEST, PREFIX, queue)

    async def ours_raw() -> None:
        await raw.fetch(send_sql, *send_args)
        await raw.fetch(claim_sql, *claim_args)

    async def send_then_floor_delete() -> None:
        await raw.fetch(send_sql, *send_args)
        await raw.fetchval(DELETE_OLDEST, PREFIX, queue)

    async def floor_insert_then_claim() -> None:
        await raw.execute(INSERT_ONE, PREFIX, queue, payload)
        await raw.fetch(claim_sql, *claim_args)

    async def ours_quiet() -> None:
        await raw.fetch(quiet_sql, *quiet_args)
        await raw.fetch(claim_sql, *claim_args)

    async def through_layer() -> None:
        await layer.send(channel, MESSAGE)
        await layer.receive(channel)

    rows: dict[str, RoundTrip] = {
        "floor (INSERT, DELETE)": floor,
        "our SQL (SEND, CLAIM_CHANNEL)": ours_raw,
        "our SQL, no NOTIFY": ours_quiet,
        "SEND, floor DELETE": send_then_floor_delete,
        "floor INSERT, CLAIM_CHANNEL": floor_insert_then_claim,
        "layer send + receive": through_layer,
    }
    if options.loop is not None:
        trip = through_layer if options.loop == "layer" else ours_raw
        for _ in range(100 + options.count):
            await trip()
        await _close(layer, raw, probe)
        return
    for trip in rows.values():
        for _ in range(50):
            await trip()
    hooks.statements.clear()
    pids = await _backend_pids(probe, database)
    pids.remove(probe.get_server_pid())
    figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in rows}
    for _ in range(options.rounds):
        for name, trip in rows.items():
            wall, client, server = time.perf_counter(), time.process_time_ns(), _server_cpu_ns(pids)
            for _ in range(options.count):
                await trip()
            n = options.count
            figures[name].append(
                (
                    (time.perf_counter() - wall) / n * 1e3,
                    (time.process_time_ns() - client) / n / 1e6,
                    (_server_cpu_ns(pids) - server) / n / 1e6,
                )
            )
    trips = options.count * options.rounds
    print(f"{options.rounds} rounds of {options.count}; medians, ms per round trip")
    print(f"{'':32} {'wall':>7} {'client CPU':>11} {'server CPU':>11}")
    for name, samples in figures.items():
        wall, client, server = (statistics.median(s[i] for s in samples) for i in range(3))
        print(f"{name:32} {wall:7.3f} {client:11.3f} {server:11.3f}")
    print("statements the layer ran per round trip:")
    for name, count in sorted(hooks.statements.items()):
        print(f"  {name}: {count / trips:g}")

    if options.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(options.count):
            await through_layer()
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)

    await _close(layer, raw, probe)


async def _close(layer: PostgresChannelLayer, raw: asyncpg.Connection, probe: asyncpg.Connection) -> None:
    await layer.flush()
    await layer.close()
    await raw.execute("DELETE FROM channel_layer_pg_message WHERE prefix = $1", PREFIX)
    await raw.close()
    await probe.close()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    asyncio.run(main())
