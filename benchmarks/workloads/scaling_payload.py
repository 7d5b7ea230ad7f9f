"""Scaling series 3 and 4: message size, and a backlog of rows in the table. Both run in this process.

Each point measures a fresh layer on a fresh channel: round trips one at a time (send, then
receive: the latency a lone message sees) and a stream (4 concurrent senders, 1 receiver:
how fast one channel drains). Both stop at a time budget, so a slow point costs no more time
than a fast one, only fewer samples.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from datetime import timedelta
from typing import Any

from harness.compare import fresh_prefix, token
from harness.db import explain_analyze, vacuum, wal_bytes
from harness.layers import internal, ours
from harness.procs import centiles, round_trips
from harness.table import Column

from workloads.scaling import CPU_COLUMNS, Context, Series

MESSAGE_TABLE = "channel_layer_pg_message"

BIG_CAPACITY = 10_000_000  # larger than any backlog here, so a send never meets ChannelFull
STREAM_WINDOW = 200  # messages in flight in a stream
STREAM_SENDERS = 4
BACKLOG_PREFIX = "scalingbacklog"
BACKLOG_PAYLOAD = os.urandom(100)
_PAD = "x" * 100

SIZE_COLUMNS = (
    Column("size", "message size"),
    Column("p50_ms", "round trip p50 ms", "{:.2f}"),
    Column("p99_ms", "round trip p99 ms", "{:.2f}"),
    Column("msg_s", "stream msg/s"),
    Column("mb_s", "stream MB/s", "{:.1f}"),
    Column("wal_kb", "WAL KB/msg", "{:,.1f}"),
    *CPU_COLUMNS,
)

BACKLOG_COLUMNS = (
    Column("where", "backlog rows"),
    Column("rows", "rows"),
    Column("p50_ms", "round trip p50 ms", "{:.2f}"),
    Column("p99_ms", "round trip p99 ms", "{:.2f}"),
    Column("msg_s", "stream msg/s"),
    Column("fill_s", "insert+ANALYZE s", "{:.1f}"),
)

VARIANTS = {
    "other": "of other channels",
    "same": "in the receiver's own queue",
    "dead": "deleted, not vacuumed, own queue",
}


def label(size: int) -> str:
    for unit, scale in (("MB", 2**20), ("KB", 2**10)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} B"


# -- measuring one channel --------------------------------------------------------------------


async def stream(
    layer: Any, channel: str, make: Any, budget: float, most: int, sender: Any = None
) -> tuple[float, int]:
    """Concurrent senders, one receiver, for about ``budget`` seconds; (msg/s, messages).

    At most STREAM_WINDOW messages are in flight: senders faster than the receiver would
    otherwise queue more than it can take before they expire, and measure nothing useful.
    """
    sender = sender or layer
    sent = 0
    stop_at = time.monotonic() + budget
    window = asyncio.Semaphore(STREAM_WINDOW)

    async def send() -> None:
        nonlocal sent
        while sent < most and time.monotonic() < stop_at:
            await window.acquire()
            sent += 1
            await sender.send(channel, make(sent))

    start = time.perf_counter()
    senders = asyncio.gather(*(send() for _ in range(STREAM_SENDERS)))
    received = 0
    while received < sent or not senders.done():
        if received < sent:
            await asyncio.wait_for(layer.receive(channel), 60)
            received += 1
            window.release()
        else:
            # All that was sent so far arrived; a sender is about to send again or stop.
            await asyncio.sleep(0)
    await senders
    return received / (time.perf_counter() - start), received


# -- series 3: message size -------------------------------------------------------------------


def unlimited_size() -> dict[str, Any]:
    """The option that lets 1 MiB of data (a few bytes over the default limit) through, where it exists.

    The harness runs whichever checkout is on the path, older ones included.
    """
    from channel_layer_pg.config import OPTION_NAMES

    return {"max_message_size": None} if "max_message_size" in OPTION_NAMES else {}


async def run_size(ctx: Context) -> Series:
    plan = ctx.plan
    series = Series("size", "send + receive on one normal channel, by message size", SIZE_COLUMNS)
    for size in plan.sizes:
        data = os.urandom(size)  # incompressible: the worst case for TOAST, which tries pglz

        def make(n: int, data: bytes = data) -> dict[str, Any]:
            return {"type": "blob", "n": n, "data": data}

        layer = ours(ctx.url, fresh_prefix(), capacity=BIG_CAPACITY, **unlimited_size())
        try:
            channel = f"scaling.size.{token()}"
            samples = await round_trips(layer, channel, count=1000, budget=plan.budget, make=make)
            meter = ctx.meter()
            await meter.read()
            wal_before = await wal_bytes(ctx.conn)
            rate, streamed = await stream(layer, channel, make, plan.budget, 5000)
            wal_after = await wal_bytes(ctx.conn)
            cpu = await meter.read()
        finally:
            await layer.flush()
            await layer.close()
        p50, p99 = centiles(samples)
        row = {
            "size": label(size),
            "bytes": size,
            "p50_ms": p50,
            "p99_ms": p99,
            "msg_s": rate,
            "mb_s": rate * size / 2**20,
            "rounds": len(samples),
            "streamed": streamed,
            "wal_kb": None if None in (wal_before, wal_after) else (wal_after - wal_before) / streamed / 1024,
            **cpu,
        }
        series.add(row)
    series.notes.append(
        f"payload: random bytes in a msgpack message; round trips and stream ({STREAM_SENDERS} senders, "
        f"1 receiver) each for about {plan.budget:g} s; WAL KB/msg: the server's WAL (pg_stat_wal, all "
        "databases: other work on the server adds to it) during the stream, per message"
    )
    return series


# -- series 4: backlog ------------------------------------------------------------------------


async def run_backlog(ctx: Context) -> Series:
    series = Series(
        "backlog",
        "send + receive of 100 B messages on a fresh channel, with rows already queued",
        BACKLOG_COLUMNS,
    )
    for variant in ctx.plan.backlog_variants:
        try:
            await _backlog_variant(ctx, series, variant)
        finally:
            await ctx.conn.execute(
                "DELETE FROM channel_layer_pg_message WHERE prefix LIKE $1", f"{BACKLOG_PREFIX}%"
            )
            await vacuum(ctx.conn, (MESSAGE_TABLE,))
    series.notes.append(
        "'of other channels': rows under another prefix, spread over 1,000 channels nobody reads; "
        "'in the receiver's own queue': rows for a process-local channel of the receiving layer that "
        "nobody receives on (a stuck consumer; possible only with capacity above the backlog, "
        f"here {BIG_CAPACITY:,}); 'deleted, not vacuumed': as many rows inserted there and deleted, "
        "as delivered messages leave them until VACUUM (autovacuum is off on this server); rows "
        "inserted with one INSERT ... SELECT generate_series, then ANALYZE; afterwards DELETE and "
        "VACUUM (ANALYZE)"
    )
    return series


async def _backlog_variant(ctx: Context, series: Series, variant: str) -> None:
    plan = ctx.plan
    prefix = f"{BACKLOG_PREFIX}{token()}"
    # The same layer throughout: its own-queue rows are tied to its process-local name.
    layer = ours(ctx.url, prefix, capacity=BIG_CAPACITY)
    # Sends come from another instance, as from another app server: what a layer sends to its
    # own process-local channels never reaches the table.
    sender = ours(ctx.url, prefix, capacity=BIG_CAPACITY)
    try:
        local = await layer.new_channel()
        queue = local[: local.index("!") + 1]
        inserted = 0
        for level in plan.backlog_levels:
            started = time.monotonic()
            await _fill(ctx.conn, variant, prefix, queue, level - inserted)
            inserted = level
            fill = time.monotonic() - started
            channel = f"scaling.backlog.{token()}" if variant == "other" else local

            def make(n: int) -> dict[str, Any]:
                return {"type": "m", "n": n, "text": _PAD}

            samples = await round_trips(
                layer, channel, count=1000, budget=plan.budget, sender=sender, make=make
            )
            p50, p99 = centiles(samples)
            rate, streamed = await stream(layer, channel, make, plan.budget, 5000, sender)
            row = {
                "where": VARIANTS[variant],
                "variant": variant,
                "rows": level,
                "p50_ms": p50,
                "p99_ms": p99,
                "msg_s": rate,
                "fill_s": fill,
                "rounds": len(samples),
                "streamed": streamed,
            }
            series.add(row)
        if plan.explain:
            series.raw[f"explain_{variant}"] = plans = await explain(ctx.conn, layer, variant, local)
            for name, text in plans.items():
                series.notes.append(f"{VARIANTS[variant]}, {inserted:,} rows, {name}: {summarise(text)}")
    finally:
        await sender.close()
        await layer.close()


async def _fill(conn: Any, variant: str, prefix: str, queue: str, rows: int) -> None:
    if rows <= 0:
        await conn.execute(f"ANALYZE {MESSAGE_TABLE}")
        return
    if variant in ("same", "dead"):
        # Rows the receiving process would claim, were its stuck channel receiving.
        await conn.execute(
            f"INSERT INTO {MESSAGE_TABLE} (prefix, queue, channel, expires_at, payload) "
            "SELECT $1, $2, $2 || 'stuck', now() + interval '1 hour', $3 FROM generate_series(1, $4)",
            prefix,
            queue,
            BACKLOG_PAYLOAD,
            rows,
        )
    else:
        await conn.execute(
            f"INSERT INTO {MESSAGE_TABLE} (prefix, queue, channel, expires_at, payload) "
            "SELECT $1, 'backlog.' || (g % 1000), 'backlog.' || (g % 1000), now() + interval '1 hour', $2 "
            "FROM generate_series(1, $3) AS g",
            f"{BACKLOG_PREFIX}other",
            BACKLOG_PAYLOAD,
            rows,
        )
    if variant == "dead":
        # Delivered messages leave dead rows like these behind until VACUUM removes them.
        await conn.execute(
            f"DELETE FROM {MESSAGE_TABLE} WHERE prefix = $1 AND channel = $2", prefix, queue + "stuck"
        )
    # What autovacuum would do after a bulk insert; without fresh statistics the planner
    # may pick plans it would not pick on a server where autovacuum runs.
    await conn.execute(f"ANALYZE {MESSAGE_TABLE}")


# -- EXPLAIN ANALYZE of the layer's own statements --------------------------------------------


async def explain(conn: Any, layer: Any, variant: str, local: str) -> dict[str, str]:
    """EXPLAIN (ANALYZE, BUFFERS) of the layer's claim and send on the measured channel.

    The statements are the package's own, compiled the way its driver runs them; the send
    really stores a row (EXPLAIN ANALYZE executes), removed after.
    """
    send_parameters = internal("send_parameters")

    channel = f"scaling.explain.{token()}" if variant == "other" else local
    queue = channel if variant == "other" else local[: local.index("!") + 1]
    claim = {"prefix": layer.prefix, "queue": queue, "channels": [channel], "limit": 1}
    send = send_parameters(layer.prefix, timedelta(seconds=60), b"x" * 100, queue, channel, BIG_CAPACITY)
    plans = {
        "claim": await explain_analyze(conn, internal("CLAIM"), claim),
        "send": await explain_analyze(conn, internal("SEND"), send),
    }
    await conn.execute(
        f"DELETE FROM {MESSAGE_TABLE} WHERE prefix = $1 AND channel = $2", layer.prefix, channel
    )
    return plans


def summarise(plan: str) -> str:
    """The execution time and the busiest index scan of an EXPLAIN ANALYZE text."""
    time_ = re.search(r"Execution Time: ([\d.]+) ms", plan)
    scans = re.findall(
        r"(Index (?:Only )?Scan[^\n]*?on \w+)[^\n]*actual time=[\d.]+\.\.([\d.]+) rows=(\d+)", plan
    )
    hits = re.findall(r"Buffers: shared hit=(\d+)", plan)
    parts = [f"{float(time_.group(1)):.1f} ms" if time_ else "no execution time"]
    if scans:
        name, ms, rows = max(scans, key=lambda scan: float(scan[1]))
        parts.append(f"slowest scan: {name} ({float(ms):.1f} ms, {int(rows):,} rows)")
    if hits:
        parts.append(f"{max(int(h) for h in hits):,} shared buffers hit")
    return "; ".join(parts)
