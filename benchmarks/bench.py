"""Benchmark channel_layer_pg, alone and side by side with channels_redis, channels_postgres,
channels_rabbitmq, channels-nats and in-memory.

    python benchmarks/bench.py [--url URL] [--redis URL] [--rabbitmq URL] [--nats URL] [--quick]
                               [--only ours,redis,...] [--workloads latency,thread,...] [--vacuum]
                               [--label TEXT] [--shard-url URL ...]
    python benchmarks/bench.py scaling|soak|soak-faults|isolation|pgbouncer|plan-drift|stats-backlog
                               |pool-checkout|encode|shards [--help]

Without a subcommand: each comparison workload runs against every selected layer in turn,
with a fresh layer each time, and the tables (figures, then ours divided by each peer's) come
last; then the shard benchmark (workloads/shards.py, also the ``shards`` subcommand) measures
ours over 1, 2 and 3 servers. A layer whose package or service is missing is skipped with a
note; a workload it cannot do (a feature it lacks) shows "n/a", with the reason in the notes; a
workload that errors or stalls shows that in its cell.
The subcommands measure channel_layer_pg alone (see benchmarks/README.md). Whichever
channel_layer_pg comes first on PYTHONPATH is measured; the header says which.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable

# Run as a script, this directory is on sys.path already; run any other way, it may not be.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness.brokers import DEFAULT_NATS, DEFAULT_RABBITMQ
from harness.cli import add_url, names, print_header
from harness.compare import Complaints, Counts, compare
from harness.db import first_line
from harness.layers import DEFAULT_REDIS, OURS, SPECS, Services
from harness.procs import run_worker
from workloads import cross_process, fanout, latency, local, other_process, stored, sync
from workloads.floors import floors

# The comparison table's workloads, by the name --workloads takes, in the table's order.
WORKLOADS = {
    "latency": latency.WORKLOADS[:1],
    "thread": latency.WORKLOADS[1:2],
    "sends": latency.WORKLOADS[2:],
    "local": local.WORKLOADS,
    "fanout": fanout.WORKLOADS,
    "cross": cross_process.WORKLOADS,
    "remote": other_process.WORKLOADS,
    "sync": sync.WORKLOADS,
    "stored": stored.WORKLOADS,
}
# After the table, its own section: ours over 1, 2 and 3 servers, not a row per layer.
SHARDS = "shards"
SUBCOMMANDS = (
    "scaling", "soak", "soak-faults", "isolation", "pgbouncer", "plan-drift", "stats-backlog",
    "pool-checkout", "encode", "shards", "cross-breakdown",
)  # fmt: skip


async def compare_main(args: argparse.Namespace) -> int:
    services = Services(args.url, args.redis, args.rabbitmq, args.nats)
    counts = Counts.quick() if args.quick else Counts()
    # Before the header, whose --vacuum then clears the dead rows the floors leave behind.
    try:
        floor = await floors(services.pg_url)
    except Exception as exc:
        floor = f"floors: not measured ({type(exc).__name__}: {exc})"
    await print_header(args.url, args.label, redis=args.redis, vacuum_first=args.vacuum)
    print(f"counts: {counts.describe()}\n{floor}", flush=True)
    started = time.monotonic()
    chosen = [w for name in args.workloads if name != SHARDS for w in WORKLOADS[name]]
    if chosen:
        table, notes = await compare(chosen, args.only, services, counts)
        print(f"\n{table}")
        if notes:
            print("\nnotes:\n" + "\n".join(f"  - {note}" for note in notes))
    if SHARDS in args.workloads:
        print(flush=True)
        if OURS in args.only:
            await shard_section(args.shard_url, counts)
        else:
            print("shards: not measured (they measure ours, which --only leaves out)")
    print(f"\ntotal time: {time.monotonic() - started:.1f} s", flush=True)
    return 0


async def shard_section(urls: list[str] | None, counts: Counts) -> None:
    """The shard benchmark; a failure there is reported in a line, as a cell's would be."""
    with Complaints() as complaints:
        try:
            # Imported here: a checkout from before ShardedChannelLayer still runs the table.
            shards = importlib.import_module("workloads.shards")
            await shards.measure(urls, counts)
        except Exception as exc:
            print(f"shards: failed ({type(exc).__name__}: {first_line(exc)})")
    if summary := complaints.summary():
        print("  notes:\n" + "\n".join(f"  - {note}" for note in summary))


def parse_compare(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_url(parser, "PostgreSQL for ours and channels_postgres")
    parser.add_argument(
        "--redis", default=DEFAULT_REDIS, help="Redis for channels_redis (default: %(default)s)"
    )
    parser.add_argument(
        "--rabbitmq",
        default=DEFAULT_RABBITMQ,
        help="RabbitMQ for channels_rabbitmq (default: %(default)s)",
    )
    parser.add_argument("--nats", default=DEFAULT_NATS, help="NATS for channels-nats (default: %(default)s)")
    parser.add_argument(
        "--only", type=names(tuple(SPECS)), default=list(SPECS), help=f"layers (default: {','.join(SPECS)})"
    )
    parser.add_argument(
        "--workloads",
        type=names([*WORKLOADS, SHARDS]),
        default=[*WORKLOADS, SHARDS],
        help=f"workloads (default: {','.join([*WORKLOADS, SHARDS])})",
    )
    parser.add_argument(
        "--shard-url",
        action="append",
        help="a migrated server for the shard benchmark; repeat (default: three embedded servers)",
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts: under a minute")
    parser.add_argument(
        "--vacuum",
        action="store_true",
        help="VACUUM ANALYZE channel_layer_pg's tables first (with autovacuum off, their dead rows stay)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--params", type=json.loads, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# Which module runs each kind of worker process (bench.py --worker ROLE), imported only there.
WORKER_MODULES = {
    "cross-receive": "cross_process",
    "cross-send": "cross_process",
    "floor-receive": "floors",
    "floor-send": "floors",
    "breakdown-receive": "cross_breakdown",
    "breakdown-send": "cross_breakdown",
    "local-send": "other_process",
    "group-send": "other_process",
    "hops": "scaling_processes",
    "members": "scaling_groups",
    "soak": "soak",
}


def worker(role: str) -> Callable[[dict[str, object]], Awaitable[None]]:
    return importlib.import_module(f"workloads.{WORKER_MODULES[role]}").WORKERS[role]  # type: ignore[no-any-return]


def subcommand(name: str) -> Callable[[list[str]], int]:
    return importlib.import_module(f"workloads.{name.replace('-', '_')}").main  # type: ignore[no-any-return]


def _log_warnings() -> None:
    """WARNING and above to stderr (a worker's stderr is the benchmark's); not the INFO some
    workloads turn on for the layer's logger to count what it skips."""
    logging.basicConfig(format="%(levelname)s [%(name)s] %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)


def main(argv: list[str]) -> int:
    # Python warnings (SQLAlchemy's, for one) go through logging, where the runs collect them.
    logging.captureWarnings(True)
    if argv and argv[0] in SUBCOMMANDS:
        _log_warnings()
        return subcommand(argv[0])(argv[1:])
    args = parse_compare(argv)
    if args.worker:
        _log_warnings()
        code = asyncio.run(run_worker(worker(args.worker), args.params))
    else:
        # Not printed mid-run: the comparison collects it per cell for the notes under the table.
        logging.getLogger().addHandler(logging.NullHandler())
        code = asyncio.run(compare_main(args))
    sys.stdout.flush()
    sys.stderr.flush()
    stuck = [t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
    if stuck:
        # A layer call that never returned (a "timeout" cell) leaves its thread blocked, and
        # interpreter shutdown would wait for it forever: concurrent.futures joins even the
        # daemon threads that async_to_sync runs its loops in.
        print(
            f"exiting without waiting for stuck threads: {', '.join(t.name for t in stuck)}", file=sys.stderr
        )
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
