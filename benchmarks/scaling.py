"""How cost grows: channel_layer_pg's throughput, latency and memory as each dimension of load grows.

    python benchmarks/scaling.py [--url URL] [--only processes,group,size,backlog,memory] [--quick]
    python benchmarks/scaling.py --plot docs/scaling.json      # redraw the PNG from saved figures

Five series, each one dimension: app-server processes (1-8), group size (10-10,000 members),
message size (100 B-1 MB), rows already queued (0-1,000,000), and the memory of a receiving
process under fan-out. Prints a table per series, then writes the raw figures as JSON and
one PNG with a panel per series (docs/scaling.json and docs/scaling.png unless --out says
otherwise; --quick writes to the temporary directory so a smoke run never replaces them).
The layer's tables are VACUUM (ANALYZE)d before each series: with autovacuum off, the dead
rows one series leaves would slow the next.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

# Run as a script, this directory is on sys.path already; run any other way, it may not be.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import scaling_groups
import scaling_payload
import scaling_processes
from bench_env import connect, dead_rows, environment, vacuum_tables
from bench_layers import Services
from scaling_common import Context, Plan, Series

SCRIPT = os.path.abspath(__file__)  # started again as the worker processes
ROOT = os.path.dirname(os.path.dirname(SCRIPT))
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/bench"
DEFAULT_OUT = os.path.join(ROOT, "docs", "scaling")

SERIES: dict[str, Callable[[Context], Awaitable[Series]]] = {
    "processes": scaling_processes.run,
    "group": scaling_groups.run_group,
    "size": scaling_payload.run_size,
    "backlog": scaling_payload.run_backlog,
    "memory": scaling_groups.run_memory,
}
WORKERS: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
    "hops": scaling_processes.worker,
    "members": scaling_groups.worker,
}
TABLES = ["channel_layer_pg_message", "channel_layer_pg_group_member"]


async def main_async(args: argparse.Namespace) -> int:
    plan = Plan.quick() if args.quick else Plan()
    started = time.monotonic()
    header = [f"command: {shlex.join(sys.orig_argv)}"]
    header += await environment(Services(args.url, "redis://127.0.0.1:6379"), vacuum=True)
    header.append(
        "note: every process of a run (workers, this one, PostgreSQL) shares this machine's CPUs with "
        "whatever else runs on it; compare figures within one run"
    )
    for line in header:
        print(line, flush=True)
    conn = await connect(args.url)
    results: dict[str, Any] = {}
    try:
        ctx = Context(SCRIPT, args.url, conn, plan)
        for name in args.only:
            before = await dead_rows(conn, TABLES)
            await vacuum_tables(conn, TABLES)
            print(f"\n== {name} (VACUUM (ANALYZE) of the layer's tables first; before: {before})", flush=True)
            began = time.monotonic()
            try:
                series = await SERIES[name](ctx)
            except Exception as exc:
                print(f"{name} failed: {type(exc).__name__}: {exc}", flush=True)
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            series.seconds = time.monotonic() - began
            print(f"\n{series.title} ({series.seconds:.0f} s)\n{series.table()}")
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
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    write(figures, out)
    print(f"wrote {out}.json and {out}.png")
    return 0 if all("error" not in r for r in results.values()) else 1


def write(figures: dict[str, Any], out: str) -> None:
    """The raw figures as JSON, and the PNG drawn from them (after every series has run)."""
    with open(f"{out}.json", "w") as file:
        json.dump(figures, file, indent=1)
    draw(figures, f"{out}.png")


def draw(figures: dict[str, Any], path: str) -> None:
    import scaling_plot  # matplotlib loads only here: workers never need it

    scaling_plot.draw(figures, path)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("CHANNEL_LAYER_PG_URL", DEFAULT_URL),
        help="PostgreSQL with the schema migrated (default: $CHANNEL_LAYER_PG_URL or %(default)s)",
    )
    parser.add_argument(
        "--only",
        type=_series_names,
        default=list(SERIES),
        help=f"comma-separated series to run, in this order (default: {','.join(SERIES)})",
    )
    parser.add_argument("--quick", action="store_true", help="fewer, shorter points: a smoke run")
    parser.add_argument("--out", help="path without extension for the .json and .png (default: docs/scaling)")
    parser.add_argument("--plot", metavar="JSON", help="only redraw the PNG from a saved JSON")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--params", type=json.loads, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _series_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SERIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown series {', '.join(unknown) or text!r}; choose from {', '.join(SERIES)}"
        )
    return names


async def worker_async(args: argparse.Namespace) -> int:
    from scaling_common import emit

    try:
        await WORKERS[args.worker](args.params)
    except Exception as exc:
        emit(error=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # Warnings go to stderr as they happen (a worker's stderr is this process's).
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s [%(name)s] %(message)s")
    for handler in logging.getLogger().handlers:
        # The memory series turns the layer's INFO on to count skipped members: not for stderr.
        handler.setLevel(logging.WARNING)
    if args.worker:
        return asyncio.run(worker_async(args))
    if args.plot:
        with open(args.plot) as file:
            figures = json.load(file)
        png = os.path.splitext(args.plot)[0] + ".png"
        draw(figures, png)
        print(f"wrote {png}")
        return 0
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
