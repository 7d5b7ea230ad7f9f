"""How cost grows: channel_layer_pg alone, one dimension of load at a time; a table per series and a PNG.

    python benchmarks/bench.py scaling [--url URL] [--only processes,group,size,backlog,memory] [--quick]
    python benchmarks/bench.py scaling --plot docs/scaling.json      # redraw the PNG from saved figures

Five series: app-server processes (1-8; msg/s and one hop's p50/p99 in ms,
scaling_processes.py), group size (10-10,000 members; group_add/s, ms to the last delivery,
deliveries/s, scaling_groups.py), message size (100 B-1 MB; round trip p50/p99 in ms, stream
msg/s and MB/s, WAL KB per message, scaling_payload.py), rows already queued (0-1,000,000;
the same, scaling_payload.py), and the RSS in MB of a receiving process under fan-out
(scaling_groups.py); CPU columns in cores. Writes the raw figures as JSON and one PNG with a
panel per series (docs/scaling.json and docs/scaling.png unless --out says otherwise;
--quick writes to the temporary directory so a smoke run never replaces them). The layer's
tables are VACUUM (ANALYZE)d before each series: with autovacuum off, the dead rows one
series leaves would slow the next.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.cli import add_url, names, print_header
from harness.db import connect, dead_rows, delete_prefix, vacuum
from harness.procs import CpuMeter
from harness.table import Column, render_rows

DEFAULT_OUT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "docs", "scaling"
)
SERIES = ("processes", "group", "size", "backlog", "memory")
CPU_COLUMNS = (
    Column("pg_cores", "PG cores", "{:.2f}"),
    Column("py_cores", "Python cores", "{:.2f}"),
    Column("machine_cores", "machine cores", "{:.2f}"),
    Column("cpu_wait", "waiting for CPU", "{:.2f}"),
)


@dataclass(frozen=True)
class Plan:
    """The points of each series and how long each is measured; ``quick()`` is a smoke run."""

    processes: tuple[int, ...] = (1, 2, 4, 8)
    warmup: float = 2.0  # seconds of traffic before a processes point's window opens
    window: float = 8.0
    group_sizes: tuple[int, ...] = (10, 100, 1_000, 10_000)
    group_rounds: int = 5
    big_capacity: int = 10_000_000
    sizes: tuple[int, ...] = (100, 1024, 10 * 1024, 100 * 1024, 1024 * 1024)
    budget: float = 3.0  # seconds for each of a point's round trips and stream
    backlog_levels: tuple[int, ...] = (0, 1_000, 10_000, 100_000, 1_000_000)
    backlog_variants: tuple[str, ...] = ("other", "same", "dead")
    explain: bool = True
    memory_members: int = 1_000
    memory_rate: float = 10.0  # group_sends a second
    memory_seconds: float = 20.0
    memory_tail: float = 3.0  # seconds of sampling after the last group_send
    memory_capacity: int = 100  # the layer's default

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            processes=(1, 2, 4), warmup=1.0, window=3.0, group_sizes=(10, 100, 1_000), group_rounds=2,
            sizes=(100, 10 * 1024, 1024 * 1024), budget=1.0, backlog_levels=(0, 10_000),
            memory_members=200, memory_seconds=5.0, memory_tail=1.0,
        )  # fmt: skip


@dataclass
class Series:
    """One dimension's figures: a table of rows, notes under it, and raw data for the plot."""

    name: str
    title: str
    columns: tuple[Column, ...]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        print(
            f"  [{self.name}] " + ", ".join(f"{c.label} {c.cell(row.get(c.key))}" for c in self.columns),
            flush=True,
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.title, "columns": [{"key": c.key, "label": c.label} for c in self.columns],
            "rows": self.rows, "notes": self.notes, "raw": self.raw, "seconds": round(self.seconds, 1),
        }  # fmt: skip


@dataclass
class Context:
    url: str
    conn: Any  # an asyncpg connection for probes, bulk inserts and cleanup
    plan: Plan

    def meter(self, pids: tuple[int, ...] = ()) -> CpuMeter:
        return CpuMeter(self.conn, pids)

    async def flush(self, prefix: str) -> None:
        """Delete what a point left under ``prefix``: messages in flight when it stopped."""
        await delete_prefix(self.conn, prefix)


def series_runners() -> dict[str, Callable[[Context], Awaitable[Series]]]:
    from workloads import scaling_groups, scaling_payload, scaling_processes

    return {
        "processes": scaling_processes.run, "group": scaling_groups.run_group,
        "size": scaling_payload.run_size, "backlog": scaling_payload.run_backlog,
        "memory": scaling_groups.run_memory,
    }  # fmt: skip


async def run(args: argparse.Namespace) -> int:
    plan = Plan.quick() if args.quick else Plan()
    started = time.monotonic()
    header = await print_header(args.url, args.label, vacuum_first=True)
    print(
        "note: every process of a run (workers, this one, PostgreSQL) shares this machine's CPUs with "
        "whatever else runs on it; compare figures within one run",
        flush=True,
    )
    runners = series_runners()
    conn = await connect(args.url)
    results: dict[str, Any] = {}
    try:
        ctx = Context(args.url, conn, plan)
        for name in args.only:
            before = await dead_rows(conn)
            await vacuum(conn)
            print(f"\n== {name} (VACUUM (ANALYZE) of the layer's tables first; before: {before})", flush=True)
            began = time.monotonic()
            try:
                series = await runners[name](ctx)
            except Exception as exc:
                print(f"{name} failed: {type(exc).__name__}: {exc}", flush=True)
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            series.seconds = time.monotonic() - began
            print(f"\n{series.title} ({series.seconds:.0f} s)\n{render_rows(series.columns, series.rows)}")
            for note in series.notes:
                print(f"  - {note}")
            results[name] = series.as_json()
    finally:
        await conn.close()
    total = time.monotonic() - started
    print(f"\ntotal time: {total:.0f} s")
    figures = {
        "header": header,
        "plan": asdict(plan),
        "cpus": os.cpu_count(),
        "series": results,
        "seconds": round(total),
    }
    out = args.out or (os.path.join(tempfile.gettempdir(), "scaling-quick") if args.quick else DEFAULT_OUT)
    write(figures, out)
    return 0 if all("error" not in r for r in results.values()) else 1


def write(figures: dict[str, Any], out: str) -> None:
    """The raw figures as JSON, and the PNG drawn from them, once every series has run."""
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(f"{out}.json", "w") as file:
        json.dump(figures, file, indent=1)
    draw(figures, f"{out}.png")
    print(f"wrote {out}.json and {out}.png")


def draw(figures: dict[str, Any], path: str) -> None:
    from workloads import scaling_plot  # matplotlib loads only here: workers never need it

    scaling_plot.draw(figures, path)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.py scaling", description=__doc__.split("\n\n")[0])
    add_url(parser)
    parser.add_argument(
        "--only",
        type=names(SERIES),
        default=list(SERIES),
        help=f"series, in this order (default: {','.join(SERIES)})",
    )
    parser.add_argument("--quick", action="store_true", help="fewer, shorter points: a smoke run")
    parser.add_argument("--out", help="path without extension for the .json and .png (default: docs/scaling)")
    parser.add_argument("--plot", metavar="JSON", help="only redraw the PNG from a saved JSON")
    args = parser.parse_args(argv)
    if args.plot:
        with open(args.plot) as file:
            figures = json.load(file)
        png = os.path.splitext(args.plot)[0] + ".png"
        draw(figures, png)
        print(f"wrote {png}")
        return 0
    return asyncio.run(run(args))
