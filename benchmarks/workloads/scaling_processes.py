"""Series 1: app-server processes. How aggregate throughput and latency change with N processes.

Each of N worker processes plays an app server: it holds CHANNELS process-local channels,
each with a consumer looping on ``receive``, and starts TOKENS messages on their way. A
consumer that gets a message records how long it took to arrive (CLOCK_MONOTONIC is one
clock for all processes on Linux) and sends it on to a random channel of another process
(with one process: of its own). So every process both sends and receives, every message
crosses between processes through the table, and the work in flight grows with N as it does
when app servers are added, each with the same load. Fewer tokens than channels keeps
messages from queueing behind a busy consumer: latency is the layer's, not a queue's.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from typing import Any

from harness.compare import fresh_prefix
from harness.db import connections_by_database, first_line, layer_connections
from harness.layers import CAPACITY, ours
from harness.procs import (
    STARTUP_TIMEOUT,
    WorkerFailed,
    centiles,
    command_reader,
    emit,
    expect_all,
    next_command,
    start_workers,
    stop_workers,
    worker_services,
)
from harness.table import Column

from workloads.scaling import CPU_COLUMNS, Context, Series

ATTEMPTS = 2  # a point may fail for want of server connections while other work holds them
RETRY_PAUSE = 10.0
CHANNELS = 50  # consumers per process
TOKENS = 20  # messages each process keeps in flight
_PAD = "x" * 100  # about a small chat event, as in the comparison

COLUMNS = (
    Column("processes", "processes"),
    Column("msg_s", "msg/s (all)"),
    Column("spread", "msg/s, each pass"),
    Column("msg_s_per_process", "msg/s per process"),
    Column("p50_ms", "p50 ms", "{:.2f}"),
    Column("p99_ms", "p99 ms", "{:.2f}"),
    Column("connections", "connections"),
    *CPU_COLUMNS,
)


async def run(ctx: Context) -> Series:
    series = Series(
        "processes",
        f"N processes, each with {CHANNELS} consumers and {TOKENS} messages in flight, "
        "passing them to other processes' process-local channels",
        COLUMNS,
    )
    # Up the points and down again: on a machine shared with other work, load that comes and
    # goes then lands on different points of the two passes rather than on one end.
    order = [*ctx.plan.processes, *reversed(ctx.plan.processes)]
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in ctx.plan.processes}
    for n in order:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                run_row = await _one(ctx, n)
            except WorkerFailed as exc:
                # Reported, and the series goes on: a point that fails (too many connections,
                # for one) is itself a finding.
                note = f"{n} processes, attempt {attempt}, failed: {exc}"
                series.notes.append(note)
                print(f"  [processes] {note}", flush=True)
                await asyncio.sleep(RETRY_PAUSE)
                continue
            runs[n].append(run_row)
            series.add(run_row)
            break
    series.rows = [_median_row(rows) for rows in runs.values() if rows]
    series.raw["runs"] = [row for n in ctx.plan.processes for row in runs[n]]
    series.notes.append(
        "each point runs twice, going up the process counts and down again; the table shows the median "
        "(with two passes, the mean) and each pass's msg/s; measured over "
        f"{ctx.plan.window:g} s after {ctx.plan.warmup:g} s of warm-up; latency is one hop "
        "(send in one process to receive in another); connections: the most server connections with "
        "application_name channel_layer_pg on this database seen during the window (sampled every 0.5 s); "
        "CPU columns: during the window"
    )
    return series


async def _one(ctx: Context, n: int) -> dict[str, Any]:
    prefix = fresh_prefix()
    params = [{"prefix": prefix, "index": i} for i in range(n)]
    workers = await start_workers("hops", ctx.url, params)
    try:
        readies = await expect_all(workers, "ready", STARTUP_TIMEOUT)
        channels = [r["channels"] for r in readies]
        begin = time.monotonic() + 0.2
        start, stop = begin + ctx.plan.warmup, begin + ctx.plan.warmup + ctx.plan.window
        for i, worker in enumerate(workers):
            others = [c for j, chs in enumerate(channels) if j != i or n == 1 for c in chs]
            worker.command(command="go", begin=begin, start=start, stop=stop, destinations=others)
        meter = ctx.meter(tuple(w.pid for w in workers))
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        await meter.read()
        connections = 0
        while time.monotonic() < stop:
            connections = max(connections, await layer_connections(ctx.conn, listeners=False))
            await asyncio.sleep(min(0.5, max(0.0, stop - time.monotonic())))
        cpu = await meter.read()
        results = await expect_all(workers, "result", ctx.plan.window + 60)
    except WorkerFailed as exc:
        # Who holds the server's connections while the workers still hold theirs says why.
        held = await connections_by_database(ctx.conn)
        raise WorkerFailed(f"{first_line(exc)}; server connections then: {held}") from exc
    finally:
        await stop_workers(workers)
        await ctx.flush(prefix)
    latencies = [s for r in results for s in r["latencies"]]
    p50, p99 = centiles(latencies)
    total = sum(r["count"] for r in results) / ctx.plan.window
    return {
        "processes": n,
        "msg_s": total,
        "msg_s_per_process": total / n,
        "p50_ms": p50,
        "p99_ms": p99,
        "connections": connections,
        **cpu,
    }


def _median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the passes; the spread of the throughput, to judge the noise."""
    merged: dict[str, Any] = {}
    for key in rows[0]:
        values = [row[key] for row in rows if row.get(key) is not None]
        merged[key] = statistics.median(values) if values else None
    rates = [row["msg_s"] for row in rows]
    merged["spread"] = f"{min(rates):,.0f}-{max(rates):,.0f}"
    merged["passes"] = len(rows)
    return merged


# -- the worker process -----------------------------------------------------------------------


async def worker(params: dict[str, Any]) -> None:
    commands = await command_reader()
    layer = ours(worker_services()[0], params["prefix"], capacity=CAPACITY)
    try:
        channels = [await layer.new_channel() for _ in range(CHANNELS)]
        # Not timed: opens the pool and the LISTEN connection.
        await layer.send(channels[0], {"type": "warmup"})
        await layer.receive(channels[0])
        emit(event="ready", channels=channels)
        go = await next_command(commands, STARTUP_TIMEOUT)
        if go.get("command") != "go":
            return
        await _pass_on(layer, channels, go)
        await next_command(commands)
    finally:
        await layer.close()


async def _pass_on(layer: Any, channels: list[str], go: dict[str, Any]) -> None:
    destinations: list[str] = go["destinations"]
    start, stop = go["start"], go["stop"]
    latencies: list[float] = []
    rng = random.Random()

    async def send_on() -> None:
        await layer.send(rng.choice(destinations), {"type": "hop", "t": time.monotonic(), "text": _PAD})

    async def consume(channel: str) -> None:
        while True:
            message = await layer.receive(channel)
            now = time.monotonic()
            if start <= now < stop:
                latencies.append(now - message["t"])
            if now < stop:
                await send_on()

    await asyncio.sleep(max(0.0, go["begin"] - time.monotonic()))
    consumers = [asyncio.create_task(consume(channel)) for channel in channels]
    try:
        await asyncio.gather(*(send_on() for _ in range(TOKENS)))
        # A moment past the window for the last counted message's consumer to record it.
        await asyncio.sleep(max(0.0, stop - time.monotonic()) + 0.2)
    finally:
        for task in consumers:
            task.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
    failed = [t.exception() for t in consumers if not t.cancelled() and t.exception() is not None]
    if failed:
        emit(error=f"a consumer failed: {failed[0]!r}")
        return
    emit(event="result", count=len(latencies), latencies=[round(s, 6) for s in latencies])


WORKERS = {"hops": worker}
