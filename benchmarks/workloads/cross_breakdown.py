"""What bounds cross-process throughput: CPU per message of each party, and whether the cores ran out.

The cross-process workload (``workloads/cross_process.py``: one process sends, awaiting each
send, another receives, one normal channel) run for ours, channels_redis and channels_postgres,
beside the no-layer floor of ``workloads/floors.py`` (waking on NOTIFY, or polling). Per run:

- "msg/s": the receiver's rate from its first to its last message, as the workload reports it;
- "sent/s", "received/s": each side's rate between two marks, message count/10 (rounded down
  to hundreds) and count - 100; a sender faster than its receiver leaves a backlog, and then
  the receiver sets the pace;
- CPU ms per message between the marks: of the sender and of the receiver process (each its
  own ``time.process_time()`` as it passes them), of PostgreSQL (the backends serving the two
  workers, found by their client ports, from ``/proc``: the server must run on this machine),
  "of which listen" (those backends whose last statement was a LISTEN: a connection that only
  listens) and of redis-server (these from the first party's first mark to the last party's
  last);
- "cores": their total times "received/s", in CPU-seconds per second; "machine": what the
  whole machine used meanwhile, neighbours included; "waited": the time the sender, receiver
  and PostgreSQL processes were ready to run but found every core taken, per second
  (``/proc/PID/schedstat``). A machine of N cores has N to give.

For ours it also counts the statements each process ran per message (the layer's fault seam,
``FaultHooks.before_statement``; a coroutine call per statement) and the claims that found
nothing; for the floor, the claims that found nothing and the NOTIFYs that came.

    python benchmarks/bench.py cross-breakdown [--url URL] [--redis URL] [--runs 3] [--count 5000]
        [--only floor,floor-poll,ours,redis,channels_postgres] [--vacuum]

Variants take turns within each run, so that a neighbour's load falls on all of them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
from collections import Counter
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from harness.cli import add_url, names, print_header
from harness.compare import fresh_prefix, token
from harness.db import connect
from harness.layers import (
    CAPACITY,
    CHANNELS_POSTGRES,
    DEFAULT_REDIS,
    OURS,
    REDIS,
    SPECS,
    Services,
    close_layer,
    ours,
)
from harness.procs import STARTUP_TIMEOUT, CpuMeter, Worker, cpu_seconds, emit, stop_workers

from workloads import cross_process, floors

FLOOR, FLOOR_POLL = "floor", "floor-poll"
VARIANTS = (FLOOR, FLOOR_POLL, OURS, REDIS, CHANNELS_POSTGRES)
STALL = 10.0
PARTIES = ("sender", "receiver", "postgres", "redis")


def _redis_server_cpu() -> float:
    """CPU seconds of every redis-server process on this machine."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as file:
                if file.read().strip() != "redis-server":
                    continue
        except OSError:
            continue
        total += cpu_seconds(int(entry)) or 0.0
    return total


def _tcp_ports(pid: int) -> list[int]:
    """The local ports of the TCP sockets process ``pid`` holds: its database connections'."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return []
    ports = []
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as file:
                next(file)
                for line in file:
                    fields = line.split()
                    if fields[9] in inodes:
                        ports.append(int(fields[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return ports


class _Server:
    """PostgreSQL's and redis-server's CPU, the machine's, and the time spent waiting for a core.

    PostgreSQL's: the backends serving the two workers, found by their client ports (not the
    sessions of whoever else uses the server, nor its background processes); "listen" is the
    part of it spent by those whose last statement was a LISTEN.
    """

    def __init__(self, conn: Any, sender: Worker, receiver: Worker) -> None:
        self._conn, self._workers = conn, (sender.pid, receiver.pid)
        self._meter: CpuMeter | None = None
        self._listeners: list[int] = []
        self._start: dict[str, float] = {}

    async def begin(self) -> None:
        ports = [port for pid in self._workers for port in _tcp_ports(pid)]
        sessions = f"client_port IN ({', '.join(map(str, ports))})" if ports else "false"
        self._meter = CpuMeter(self._conn, self._workers, pg_sessions=sessions, this_process=False)
        rows = await self._conn.fetch(
            f"SELECT pid FROM pg_stat_activity WHERE ({sessions}) AND query ILIKE 'LISTEN%'"
        )
        self._listeners = [row["pid"] for row in rows]
        await self._meter.read()
        self._start = self._snapshot()

    def _snapshot(self) -> dict[str, float]:
        return {
            "wall": asyncio.get_running_loop().time(),
            "redis": _redis_server_cpu(),
            "listen": sum(cpu_seconds(pid) or 0.0 for pid in self._listeners),
        }

    async def end(self) -> dict[str, float]:
        if self._meter is None:
            raise RuntimeError("end() before begin()")
        cores = await self._meter.read()
        now = self._snapshot()
        return {
            "postgres": (cores.get("pg_cores") or 0.0) * (now["wall"] - self._start["wall"]),
            "listen": now["listen"] - self._start["listen"],
            "redis": now["redis"] - self._start["redis"],
            "machine": cores.get("machine_cores") or 0.0,
            "waited": cores.get("cpu_wait") or 0.0,
        }


async def _run_one(variant: str, args: argparse.Namespace, conn: Any) -> dict[str, Any]:
    """One run of ``variant``: the receiver's figures, CPU seconds per party between the marks."""
    count = args.count
    marks = [max(100, count // 1000 * 100), count - 100]
    floor = variant in (FLOOR, FLOOR_POLL)
    if floor:
        params = floors.cross_params(count, ("listen" if variant == FLOOR else "poll",), STALL)
        roles = ("floor-receive", "floor-send")
    else:
        params = {
            "layer": variant, "prefix": fresh_prefix(), "channel": f"bench.cross.{token()}",
            "count": count, "stall": STALL,
        }  # fmt: skip
        roles = ("breakdown-receive", "breakdown-send")
    params["marks"] = marks
    receiver = await Worker.start(roles[0], args.url, args.redis, **params)
    workers = [receiver]
    try:
        await receiver.expect("ready", STALL + STARTUP_TIMEOUT)
        sender = await Worker.start(roles[1], args.url, args.redis, **params)
        workers.append(sender)
        if floor:
            sender.command(command="send")
        server = _Server(conn, sender, receiver)
        # The server's window runs from the first party's first mark to the last party's last:
        # a sender that runs ahead of its receiver is counted over the same messages.
        begun = asyncio.Event()

        async def between_marks(worker: Worker) -> tuple[float, float]:
            """CPU seconds, and messages per second, between the worker's two marks."""
            first = await worker.expect("mark", STALL + STARTUP_TIMEOUT)
            if not begun.is_set():
                begun.set()
                await server.begin()
            last = await worker.expect("mark", STALL)
            return last["cpu"] - first["cpu"], (marks[1] - marks[0]) / (last["at"] - first["at"])

        (sent, sending), (received, receiving) = await asyncio.gather(
            between_marks(sender), between_marks(receiver)
        )
        spent = await server.end()
        result = await receiver.expect("result", STALL)
        figures = {
            **result, **spent, "sender": sent, "receiver": received, "messages": marks[1] - marks[0],
            "sending": sending, "receiving": receiving,
        }  # fmt: skip
        if not floor:
            figures["receiver_statements"] = (await receiver.expect("statements", STALL))["counts"]
            await sender.expect("result", STALL)
            figures["sender_statements"] = (await sender.expect("statements", STALL))["counts"]
        return figures
    finally:
        await stop_workers(workers, patience=5)


def _per_message_ms(figures: Mapping[str, Any], party: str) -> float:
    return float(figures[party]) / float(figures["messages"]) * 1000


def _total_ms(figures: Mapping[str, Any]) -> float:
    return sum(_per_message_ms(figures, party) for party in PARTIES)


async def _main(args: argparse.Namespace) -> int:
    await print_header(args.url, args.label, redis=args.redis, vacuum_first=args.vacuum)
    services = Services(args.url, args.redis)
    for variant in list(args.only):
        if variant in SPECS and (reason := await SPECS[variant].unavailable(services)):
            print(f"{variant}: skipped ({reason})")
            args.only.remove(variant)
    conn = await connect(args.url)
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in args.only}
    try:
        for run in range(args.runs):
            for variant in args.only:
                figures = await _run_one(variant, args, conn)
                runs[variant].append(figures)
                print(f"run {run + 1} {variant}: {_line(figures)}", flush=True)
    finally:
        await conn.close()
    print(f"\n{args.runs} runs of {args.count} messages; min-max over the runs; CPU in ms per message")
    columns: list[tuple[str, str, Callable[[Mapping[str, Any]], float]]] = [
        ("msg/s", "{:,.0f}", lambda r: r["rate"]),
        ("sent/s", "{:,.0f}", lambda r: r["sending"]),
        ("received/s", "{:,.0f}", lambda r: r["receiving"]),
        *((party, "{:.3f}", partial(_per_message_ms, party=party)) for party in PARTIES[:3]),
        ("of which listen", "{:.3f}", partial(_per_message_ms, party="listen")),
        *((party, "{:.3f}", partial(_per_message_ms, party=party)) for party in PARTIES[3:]),
        ("total", "{:.3f}", _total_ms),
        ("cores", "{:.2f}", lambda r: _total_ms(r) * r["receiving"] / 1000),
        ("machine", "{:.2f}", lambda r: r["machine"]),
        ("waited", "{:.2f}", lambda r: r["waited"]),
    ]
    rows = [["", *(title for title, _, _ in columns)]]
    for variant, results in runs.items():
        rows.append([variant, *(_span([value(r) for r in results], form) for _, form, value in columns)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        rest = (cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True))
        print(" ".join([row[0].ljust(widths[0]), *rest]))
    for variant, results in runs.items():
        if variant == OURS:
            for side in ("sender", "receiver"):
                counts = Counter[str]()
                for r in results:
                    counts.update(r[f"{side}_statements"])
                total = args.count * len(results)
                print(f"ours, statements per message in the {side}: " + _statements(counts, total))
        elif variant in (FLOOR, FLOOR_POLL):
            empty = statistics.mean(r["empty_claims"] / args.count for r in results)
            notifies = statistics.mean(r["notifies"] / args.count for r in results)
            print(f"{variant}: claims per message 1 + {empty:.2f} that found nothing; {notifies:.2f} NOTIFYs")
    return 0


def _line(figures: Mapping[str, Any]) -> str:
    parts = ", ".join(f"{p} {_per_message_ms(figures, p):.3f}" for p in PARTIES)
    return f"{figures['rate']:,.0f} msg/s; CPU ms/msg {parts}; machine {figures['machine']:.2f} cores"


def _span(values: list[float], form: str) -> str:
    low, high = form.format(min(values)), form.format(max(values))
    return low if low == high else f"{low}-{high}"


def _statements(counts: Counter[str], messages: int) -> str:
    return ", ".join(f"{name} {n / messages:.2f}" for name, n in sorted(counts.items()))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_url(parser)
    parser.add_argument(
        "--redis", default=DEFAULT_REDIS, help="Redis for channels_redis (default: %(default)s)"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--vacuum",
        action="store_true",
        help="VACUUM ANALYZE channel_layer_pg's tables first (with autovacuum off, their dead rows stay)",
    )
    parser.add_argument("--count", type=int, default=5000, help="messages per run (at least 300)")
    parser.add_argument(
        "--only",
        type=names(VARIANTS),
        default=list(VARIANTS),
        help=f"variants (default: {','.join(VARIANTS)})",
    )
    args = parser.parse_args(argv)
    if args.count < 300 or args.runs < 1:
        parser.error("--count must be at least 300 and --runs at least 1")
    return asyncio.run(_main(args))


# -- the worker processes ---------------------------------------------------------------------


class _Counting:
    """Fault hooks that count the layer's statements by name, and the claims that found nothing."""

    def __init__(self) -> None:
        from channel_layer_pg.faults import FaultHooks

        counts: Counter[str] = Counter()

        class Hooks(FaultHooks):
            async def before_statement(self, name: str, parameters: Mapping[str, Any]) -> None:
                counts[name] += 1

            async def after_statement(self, name: str, parameters: Mapping[str, Any], result: Any) -> None:
                if "CLAIM" in name and isinstance(result, list) and not result:
                    counts[f"{name} (found nothing)"] += 1

        self.counts, self.hooks = counts, Hooks()


async def _in_worker(params: dict[str, Any], run: Any) -> None:
    """cross_process's worker, on a layer that counts its statements if it is ours."""
    name = params["layer"]
    counting = _Counting() if name == OURS else None
    services = Services.in_worker()
    if counting is not None:
        layer = ours(services.pg_url, params["prefix"], capacity=CAPACITY, fault_hooks=counting.hooks)
    else:
        layer = SPECS[name].make(services, params["prefix"])
    try:
        await run(layer, params["channel"], params["count"], params["stall"], params["marks"])
    finally:
        await close_layer(name, layer, params["stall"])
    emit(event="statements", counts=dict(counting.counts) if counting is not None else {})


async def receive_worker(params: dict[str, Any]) -> None:
    await _in_worker(params, cross_process._receive)


async def send_worker(params: dict[str, Any]) -> None:
    await _in_worker(params, cross_process._send)


WORKERS = {"breakdown-receive": receive_worker, "breakdown-send": send_worker}
