"""Soak with faults: the soak, while connections are killed, the server restarts or crashes, or
statements time out; lost, duplicated and reordered per fault, for synchronous_commit on and off.

    python benchmarks/bench.py soak-faults [--processes 3] [--duration 30] [--rate 100]
                                           [--faults none,kill,restart,timeout,crash]
                                           [--synchronous-commit on,off]

Every run gets a fresh embedded PostgreSQL of its own (restarting a shared server is never
right), migrated, and runs `bench.py soak` on it (see soak.py) while one kind of fault is
injected during the sending:

- ``none``: no fault, the baseline;
- ``kill``: every KILL_EVERY s, pg_terminate_backend() of every layer session (pool and LISTEN);
- ``restart``: a fast restart (sessions cut, commits kept) at a third and two thirds of the run;
- ``timeout``: the database's statement_timeout set to STATEMENT_TIMEOUT, and every LOCK_EVERY s
  another session holds an ACCESS EXCLUSIVE lock on the message table for LOCK_FOR s, so the
  layer's statements queued behind it are cancelled;
- ``crash``: an immediate shutdown and restart halfway (no flush: what a crash of the server
  loses).

The workers' senders send again a send that raised (counting each failure by type, and which
sends were retried), as an application would. Before the runs of each synchronous_commit
setting, THROUGHPUT_MESSAGES sends from SENDERS tasks of one layer measure its peak send rate.
The table at the end has one row per setting and fault. Exit status 0 if, with
synchronous_commit=on, nothing was lost, reordered, or duplicated other than by a retried send.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from harness.cli import names, print_header
from harness.db import LAYER_SESSIONS, connect
from harness.layers import ours
from harness.table import render

from workloads import soak

FAULTS = ("none", "kill", "restart", "timeout", "crash")
KILL_EVERY = 2.0
STATEMENT_TIMEOUT, LOCK_EVERY, LOCK_FOR = "200ms", 3.0, 1.0
THROUGHPUT_MESSAGES, SENDERS = 3000, 8


class Injector:
    """Injects one kind of fault on the run's own embedded server; counts what it did."""

    def __init__(self, kind: str, server: Any, duration: float) -> None:
        self.kind, self.server, self.duration = kind, server, duration
        self.done: Counter[str] = Counter()

    async def prepare(self) -> None:
        if self.kind == "timeout":
            conn = await connect(self.server.url)
            try:
                database = await conn.fetchval("SELECT current_database()")
                await conn.execute(
                    f"ALTER DATABASE \"{database}\" SET statement_timeout = '{STATEMENT_TIMEOUT}'"
                )
            finally:
                await conn.close()

    def plan(self) -> Callable[[], Awaitable[None]] | None:
        return {
            "kill": self.kill, "restart": self.restart, "timeout": self.lock, "crash": self.crash,
        }.get(self.kind)  # fmt: skip

    async def kill(self) -> None:
        while True:
            await asyncio.sleep(KILL_EVERY)
            conn = await connect(self.server.url)
            try:
                killed = await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    f"WHERE {LAYER_SESSIONS} AND datname = current_database()"
                )
            finally:
                await conn.close()
            self.done["sessions killed"] += killed
            self.done["kill rounds"] += 1

    async def restart(self) -> None:
        for _ in range(2):
            await asyncio.sleep(self.duration / 3)
            await asyncio.to_thread(self.server.restart)
            self.done["restarts"] += 1

    async def crash(self) -> None:
        await asyncio.sleep(self.duration / 2)
        await asyncio.to_thread(self.server.restart, crash=True)
        self.done["crashes"] += 1

    async def lock(self) -> None:
        conn = await connect(self.server.url, server_settings={"statement_timeout": "0"})
        try:
            while True:
                await asyncio.sleep(LOCK_EVERY)
                async with conn.transaction():
                    await conn.execute("LOCK TABLE channel_layer_pg_message IN ACCESS EXCLUSIVE MODE")
                    await asyncio.sleep(LOCK_FOR)
                self.done["locks held"] += 1
        finally:
            await conn.close()


async def peak_sends(url: str, synchronous_commit: str) -> float:
    """Sends a second from SENDERS tasks of one layer, each awaiting its send."""
    options = {"synchronous_commit": synchronous_commit, "capacity": THROUGHPUT_MESSAGES + 200}
    async with ours(url, f"peak-{synchronous_commit}", **options) as layer:

        async def send(part: range) -> None:
            for n in part:
                await layer.send("peak.sends", {"type": "m", "n": n})

        await send(range(100))  # connections opened, statements prepared
        started = time.perf_counter()
        await asyncio.gather(*(send(range(i, THROUGHPUT_MESSAGES, SENDERS)) for i in range(SENDERS)))
        rate = THROUGHPUT_MESSAGES / (time.perf_counter() - started)
        await layer.flush()
    return rate


def error_types(outcome: soak.Outcome) -> tuple[Counter[str], Counter[str]]:
    """Send and receive failures by exception type, over every worker."""
    sends, receives = Counter[str](), Counter[str]()
    for result in outcome.results:
        for text, n in result["sent"]["errors"].items():
            sends[text.split(": ", 2)[1] if text.count(": ") >= 2 else text] += n
        for log in result["receive"].values():
            for text, n in log["errors"].items():
                receives[text.split(":", 1)[0]] += n
    return sends, receives


def faulty(outcome: soak.Outcome) -> int:
    """Lost, duplicated and reordered deliveries the layer is to blame for: not the duplicates
    of sends the application retried after an error, which may have been stored already."""
    if not outcome.tallies:
        return 1  # the run failed
    total = sum((outcome.tallies.get(k, Counter()) for k in soak.KINDS), Counter[str]())
    return total["lost"] + total["duplicated"] - total["duplicated after retry"] + total["reordered"]


def row(setting: str, kind: str, done: Counter[str], outcome: soak.Outcome) -> list[str]:
    total = sum((outcome.tallies.get(k, Counter()) for k in soak.KINDS), Counter[str]())
    sends, receives = error_types(outcome)

    def listed(counts: Counter[str]) -> str:
        return ", ".join(f"{name} {n}" for name, n in counts.most_common()) or "-"

    return [
        setting, kind, listed(done), str(total["sent"]), str(total["lost"]),
        f"{total['duplicated']} ({total['duplicated after retry']})", str(total["reordered"]),
        str(total["retried"]), listed(sends), listed(receives),
    ]  # fmt: skip


async def one_run(args: argparse.Namespace, setting: str, kind: str, first: bool) -> tuple[list[str], int]:
    from channel_layer_pg import migrate
    from channel_layer_pg.embedded import embedded_server

    print(f"\n== synchronous_commit={setting}, fault: {kind} ==", flush=True)
    with embedded_server() as server:
        await asyncio.to_thread(migrate, server.url)
        if first:
            await print_header(server.url, args.label)
        injector = Injector(kind, server, args.duration)
        await injector.prepare()
        outcome = await soak.run(
            args, server.url, options={"synchronous_commit": setting}, faults=injector.plan(), header=False
        )
    return row(setting, kind, injector.done, outcome), faulty(outcome)


async def run(args: argparse.Namespace) -> int:
    from channel_layer_pg.embedded import embedded_server

    rows, peaks, failed_durable = [], {}, False
    for setting in args.synchronous_commit:
        with embedded_server() as server:
            from channel_layer_pg import migrate

            await asyncio.to_thread(migrate, server.url)
            peaks[setting] = await peak_sends(server.url, setting)
        print(f"peak sends, synchronous_commit={setting}: {peaks[setting]:.0f}/s", flush=True)
        for kind in args.faults:
            line, code = await one_run(args, setting, kind, first=not rows)
            rows.append(line)
            failed_durable |= code != 0 and setting != "off"
    print(
        f"\n{args.processes} processes x {args.rate:g} msg/s for {args.duration:g} s per run; "
        "duplicated: all (of which after a retried send)"
    )
    for setting, rate in peaks.items():
        print(f"peak sends with synchronous_commit={setting}: {rate:.0f}/s ({SENDERS} tasks, one layer)")
    print(
        render(
            ["sync commit", "fault", "injected", "sent", "lost", "duplicated", "reordered", "retried sends",
             "send errors", "receive errors"],
            rows,
        )
    )  # fmt: skip
    return 1 if failed_durable else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.py soak-faults", description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", help="a name for this run, printed in the header")
    parser.add_argument(
        "--processes", type=soak.positive(int), default=3, help="worker processes (default: 3)"
    )
    parser.add_argument(
        "--duration", type=soak.positive(float), default=30.0, help="seconds per run (default: 30)"
    )
    parser.add_argument(
        "--rate",
        type=soak.positive(float),
        default=soak.DEFAULT_RATE,
        help="msg/s per process (default: %(default)g)",
    )
    parser.add_argument("--faults", type=names(FAULTS), default=list(FAULTS), help=f"of {', '.join(FAULTS)}")
    parser.add_argument(
        "--synchronous-commit", type=names(("on", "off")), default=["on", "off"], help="on, off or both"
    )
    args = parser.parse_args(argv)
    if args.processes < 2:
        parser.error("--processes must be at least 2: workers send each other direct messages")
    return asyncio.run(run(args))
