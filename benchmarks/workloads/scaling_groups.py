"""Scaling series 2 and 5: group size, and the memory of a receiving process under fan-out.

Members live in worker processes ("members" mode): each makes its share of process-local
channels, adds them to the group concurrently, and runs a consumer per member. This process
sends, as an app server would from a view, and the workers say when the last of their
members got each message. The memory series watches a worker's VmRSS while this process
group_sends at a steady rate, with members that receive and with members that do not.
"""

from __future__ import annotations

import asyncio
import logging
import re
import statistics
import time
from collections import Counter
from typing import Any

from harness.compare import fresh_prefix, token
from harness.db import execution_ms, explain_analyze
from harness.layers import internal, ours
from harness.procs import (
    STARTUP_TIMEOUT,
    Worker,
    command_reader,
    emit,
    expect_all,
    next_command,
    rss_mb,
    start_workers,
    stop_workers,
    worker_services,
)
from harness.table import Column

from workloads.scaling import CPU_COLUMNS, Context, Series

ADD_CONCURRENCY = 20  # group_adds in flight per process: the pool's size plus its overflow
DELIVERY_TIMEOUT = 120.0  # a group_send to 10,000 members of one process may take seconds
_PAD = "x" * 100

GROUP_COLUMNS = (
    Column("members", "members"),
    Column("processes", "processes"),
    Column("add_s", "group_add/s"),
    Column("send_ms", "group_send ms", "{:.1f}"),
    Column("last_ms", "to last delivery ms", "{:.1f}"),
    Column("deliveries_s", "deliveries/s"),
    Column("claim_ms", "claim ms (EXPLAIN)", "{:.1f}"),
    *CPU_COLUMNS,
)

MEMORY_COLUMNS = (
    Column("case", "receiving members"),
    Column("sent", "group_sends"),
    Column("delivered", "deliveries"),
    Column("expected", "expected"),
    Column("skipped", "skipped"),
    Column("rss_start", "RSS start MB", "{:.1f}"),
    Column("rss_peak", "RSS peak MB", "{:.1f}"),
    Column("rss_steady", "RSS steady MB", "{:.1f}"),
    Column("rows_peak", "rows peak"),
    Column("rows_mb_peak", "their MB peak", "{:.2f}"),
)


# -- series 2: group size ---------------------------------------------------------------------


async def run_group(ctx: Context) -> Series:
    series = Series(
        "group",
        "group_send from one process to N process-local members in 1 or 2 other processes",
        GROUP_COLUMNS,
    )
    for members in ctx.plan.group_sizes:
        for processes in (1, 2):
            plan, row = await _group_one(ctx, members, processes)
            series.raw[f"claim_plan_{members // processes}"] = plan
            series.add(row)
    largest = max(ctx.plan.group_sizes)
    _, all_but_one = await claim_cost(ctx.conn, largest, largest - 1)
    series.raw[f"claim_plan_{largest}_all_but_one"] = all_but_one
    for plan, who in ((series.raw[f"claim_plan_{largest}"], "all"), (all_but_one, "all but one")):
        nodes = ", ".join(f"{node} {ms:,.1f} ms" for node, ms in plan_nodes(plan))
        series.notes.append(
            f"the claim of one row for {largest:,} members, {who} of them waiting: "
            f"{execution_ms(plan) or 0:,.1f} ms; by plan node: {nodes}"
        )
    series.notes.append(
        f"median of at least {ctx.plan.group_rounds} group_sends (more if they take under "
        f"{ctx.plan.budget:g} s), one at a time; 'to last delivery' runs from the "
        "call to the moment the last member's receive returned; deliveries/s = members / that time; "
        f"capacity {ctx.plan.big_capacity:,}; claim ms: PostgreSQL's execution time (EXPLAIN ANALYZE) of the "
        "layer's claim statement taking one group row for all of one process's members"
    )
    return series


async def _group_one(ctx: Context, members: int, processes: int) -> tuple[str, dict[str, Any]]:
    """One point: the claim's EXPLAIN ANALYZE text, and the row for the table."""
    prefix, group = fresh_prefix(), f"scaling-{token()}"
    share = [members // processes + (1 if i < members % processes else 0) for i in range(processes)]
    params = [{"prefix": prefix, "group": group, "members": n, "receiving": n} for n in share]
    layer = ours(ctx.url, prefix, capacity=ctx.plan.big_capacity)
    workers = await start_workers("members", ctx.url, params)
    try:
        added = await expect_all(workers, "added", STARTUP_TIMEOUT + 120)
        await _round(layer, group, workers, -1)  # warm-up: every consumer is waiting after it
        meter = ctx.meter(tuple(w.pid for w in workers))
        await meter.read()
        calls: list[float] = []
        lasts: list[float] = []
        # Enough rounds, and enough seconds for the CPU figures to mean something.
        deadline = time.monotonic() + ctx.plan.budget
        while len(lasts) < ctx.plan.group_rounds or (time.monotonic() < deadline and len(lasts) < 1000):
            call, last = await _round(layer, group, workers, len(lasts))
            calls.append(call)
            lasts.append(last)
        cpu = await meter.read()
    finally:
        await stop_workers(workers)
        await ctx.flush(prefix)
        await layer.close()
    last = statistics.median(lasts)
    claim, plan = await claim_cost(ctx.conn, max(share))
    return plan, {
        "members": members,
        "processes": processes,
        "add_s": members / max(a["seconds"] for a in added),
        "send_ms": statistics.median(calls) * 1000,
        "last_ms": last * 1000,
        "deliveries_s": members / last,
        "rounds": len(lasts),
        "claim_ms": claim,
        **cpu,
    }


async def claim_cost(conn: Any, recipients: int, waiting: int | None = None) -> tuple[float | None, str]:
    """PostgreSQL's execution time for the claim of one group row, and the plan.

    The layer's own CLAIM statement under EXPLAIN ANALYZE, on a row stored for one process
    with ``recipients`` local members, ``waiting`` of them (all, by default) waiting: what
    each receiving process pays per group message. With one member not waiting, the row is
    updated rather than deleted, and the plan shows what computing the remaining ones costs.
    """
    prefix, queue = fresh_prefix(), f"specific.{token()}!"
    names = [f"{queue}{i:012x}" for i in range(recipients)]
    await conn.execute(
        "INSERT INTO channel_layer_pg_message (prefix, queue, channel, expires_at, payload, recipients) "
        "VALUES ($1, $2, $2, now() + interval '1 minute', $3, $4)",
        prefix,
        queue,
        b"x" * 100,
        names,
    )
    try:
        claimers = names[: recipients if waiting is None else waiting]
        parameters = {"prefix": prefix, "queue": queue, "channels": claimers, "limit": len(claimers)}
        plan = await explain_analyze(conn, internal("CLAIM"), parameters)
        return execution_ms(plan), plan
    finally:
        await conn.execute("DELETE FROM channel_layer_pg_message WHERE prefix = $1", prefix)


def plan_nodes(plan: str) -> list[tuple[str, float]]:
    """The writing and aggregating nodes of an EXPLAIN ANALYZE text, with their total times."""
    found = re.findall(
        r"->\s+(Delete on \w+|Update on \w+|Aggregate)\s.*?actual time=[\d.]+\.\.([\d.]+)", plan
    )
    return [(node.split(" on ")[0], float(ms)) for node, ms in found]


async def _round(layer: Any, group: str, workers: list[Worker], r: int) -> tuple[float, float]:
    """group_send message ``r``; (seconds the call took, seconds until the last delivery)."""
    start = time.monotonic()
    await layer.group_send(group, {"type": "fan", "r": r, "text": _PAD})
    call = time.monotonic() - start
    done = await expect_all(workers, "done", DELIVERY_TIMEOUT)
    if any(d["r"] != r for d in done):
        raise RuntimeError(f"expected round {r}, workers finished {[d['r'] for d in done]}")
    return call, max(d["t"] for d in done) - start


# -- series 5: memory under fan-out -----------------------------------------------------------


class SkipCounter(logging.Handler):
    """Counts the members group_send skipped because their queue was full (logged at INFO)."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.skipped = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("group_send to") and isinstance(record.args, tuple):
            self.skipped += int(record.args[1])


async def run_memory(ctx: Context) -> Series:
    plan = ctx.plan
    series = Series(
        "memory",
        f"RSS of a process with {plan.memory_members:,} process-local members while another process "
        f"group_sends {plan.memory_rate:g} times a second for {plan.memory_seconds:g} s "
        f"(capacity {plan.memory_capacity})",
        MEMORY_COLUMNS,
    )
    for case in ("all", "half", "none"):
        row, samples = await _memory_one(ctx, case)
        series.raw[case] = samples
        series.add(row)
    series.notes.append(
        "steady = median RSS over the second half of the sending; rows = this run's rows in the message "
        "table, their MB = pg_column_size of those rows; skipped = member deliveries group_send "
        "skipped because the process's queue was at capacity"
    )
    return series


async def _memory_one(ctx: Context, case: str) -> tuple[dict[str, Any], dict[str, list[float]]]:
    plan = ctx.plan
    members = plan.memory_members
    receiving = {"all": members, "half": members // 2, "none": 0}[case]
    prefix, group = fresh_prefix(), f"scaling-{token()}"
    layer = ours(ctx.url, prefix, capacity=plan.memory_capacity)
    skips = SkipCounter()
    logging.getLogger("channel_layer_pg").addHandler(skips)
    logging.getLogger("channel_layer_pg").setLevel(logging.INFO)
    params = {"prefix": prefix, "group": group, "members": members, "receiving": receiving, "report": True}
    (worker,) = await start_workers("members", ctx.url, [params])
    samples: dict[str, list[float]] = {"t": [], "rss": [], "rows_t": [], "rows": [], "rows_mb": []}
    try:
        await worker.expect("added", STARTUP_TIMEOUT + 120)
        if receiving:
            await _round(layer, group, [worker], -1)
        skips.skipped = 0
        began = time.monotonic()
        sampler = asyncio.create_task(_sample(ctx, worker.pid, prefix, began, samples))
        sent = await _send_steadily(layer, group, plan.memory_rate, plan.memory_seconds)
        await asyncio.sleep(plan.memory_tail)
        worker.command(command="report")
        report = await worker.expect("report", 30)
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    finally:
        logging.getLogger("channel_layer_pg").removeHandler(skips)
        await stop_workers([worker])
        await ctx.flush(prefix)
        await layer.close()
    sending = [rss for t, rss in zip(samples["t"], samples["rss"], strict=True) if t <= plan.memory_seconds]
    steady = sending[len(sending) // 2 :] or sending
    return {
        "case": f"{receiving:,} of {members:,}",
        "case_key": case,
        "sent": sent,
        "delivered": report["delivered"],
        "expected": sent * receiving,
        "skipped": skips.skipped,
        "rss_start": samples["rss"][0] if samples["rss"] else None,
        "rss_peak": max(samples["rss"], default=None),
        "rss_steady": statistics.median(steady) if steady else None,
        "rows_peak": max(samples["rows"], default=None),
        "rows_mb_peak": max(samples["rows_mb"], default=None),
    }, samples


async def _send_steadily(layer: Any, group: str, rate: float, seconds: float) -> int:
    """group_send ``rate`` times a second (as far as it keeps up) for ``seconds``; how many."""
    start = time.monotonic()
    sent = 0
    while (now := time.monotonic()) - start < seconds:
        due = start + sent / rate
        if due > now:
            await asyncio.sleep(due - now)
        await layer.group_send(group, {"type": "fan", "r": sent, "text": _PAD})
        sent += 1
    return sent


async def _sample(ctx: Context, pid: int, prefix: str, began: float, samples: dict[str, list[float]]) -> None:
    tick = 0
    while True:
        now = time.monotonic() - began
        rss = rss_mb(pid)
        if rss is not None:
            samples["t"].append(round(now, 2))
            samples["rss"].append(round(rss, 2))
        if tick % 4 == 0:
            rows, size = await ctx.conn.fetchrow(
                "SELECT count(*), coalesce(sum(pg_column_size(m.*)), 0) "
                "FROM channel_layer_pg_message AS m WHERE prefix = $1",
                prefix,
            )
            samples["rows_t"].append(round(now, 2))
            samples["rows"].append(rows)
            samples["rows_mb"].append(round(size / 2**20, 3))
        tick += 1
        await asyncio.sleep(0.25)


# -- the worker process -----------------------------------------------------------------------


async def worker(params: dict[str, Any]) -> None:
    """Members of one group in this process; the first ``receiving`` of them consume."""
    commands = await command_reader()
    capacity = params.get("capacity", 10_000_000)  # only senders' capacity settings count
    layer = ours(worker_services()[0], params["prefix"], capacity=capacity)
    try:
        channels = [await layer.new_channel() for _ in range(params["members"])]
        gate = asyncio.Semaphore(ADD_CONCURRENCY)

        async def add(channel: str) -> None:
            async with gate:
                await layer.group_add(params["group"], channel)

        start = time.monotonic()
        await asyncio.gather(*(add(channel) for channel in channels))
        emit(event="added", seconds=time.monotonic() - start)
        receiving = channels[: params["receiving"]]
        arrived: Counter[int] = Counter()
        delivered = 0
        report = params.get("report", False)

        async def consume(channel: str) -> None:
            nonlocal delivered
            while True:
                r = (await layer.receive(channel))["r"]
                delivered += r >= 0  # round -1 is the warm-up
                arrived[r] += 1
                if arrived[r] == len(receiving):
                    del arrived[r]
                    # Under a steady stream (report mode) only the warm-up is acknowledged.
                    if r < 0 or not report:
                        emit(event="done", r=r, t=time.monotonic())

        consumers = [asyncio.create_task(consume(channel)) for channel in receiving]
        while (command := await next_command(commands)).get("command") != "stop":
            if command.get("command") == "report":
                failed = [t for t in consumers if t.done() and not t.cancelled() and t.exception()]
                if failed:
                    emit(error=f"a consumer failed: {failed[0].exception()!r}")
                else:
                    emit(event="report", delivered=delivered)
        for task in consumers:
            task.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
    finally:
        await layer.close()


WORKERS = {"members": worker}
