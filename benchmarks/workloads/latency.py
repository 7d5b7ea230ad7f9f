"""Latency: send then receive on one normal channel, one round trip at a time; p50 and p99 in ms.

Three rows of the comparison table, each on a fresh layer:

- from the main thread's event loop (where an ASGI server runs the layer);
- from a long-lived event loop in another thread (``asyncio.run`` inside a
  ``threading.Thread``, as a worker thread with its own loop would): the same measurement, so
  the two rows show what being off the main thread costs;
- sequential sends alone, one awaited at a time, in ms per send: the per-statement cost that
  hot-path changes add to (the messages are received afterwards, not timed).

``counts.latency_warmup`` round trips go first and are not counted: they open connections
and start the layer's readers. From a loop in another thread, at least THREAD_WARMUP round
trips go first: channel_layer_pg serves such a loop through its I/O thread for its first
100 calls (loops.DIRECT_AFTER_CALLS), then with connections of its own, and the row measures
the loop as a long-lived one is served.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

from harness.compare import Context, Metric, Outcome, Tally, Workload, tally_notes, token
from harness.layers import CHANNELS_POSTGRES, LOOPS, NATS, NORMAL, close_layer
from harness.procs import centiles, message, round_trips

# Round trips (two calls each) a loop in a thread makes before it is measured.
THREAD_WARMUP = 60


async def _measure(ctx: Context, warmup: int) -> dict[str, float]:
    samples = await round_trips(
        ctx.layer,
        f"bench.latency.{token()}",
        count=ctx.counts.latency_rounds,
        warmup=warmup,
        timeout=ctx.counts.stall,
        tick=ctx.progress.tick,
    )
    p50, p99 = centiles(samples)
    return {"p50": p50, "p99": p99}


async def main_thread(ctx: Context) -> Outcome:
    ctx.progress.total = ctx.counts.latency_rounds
    figures = await _measure(ctx, ctx.counts.latency_warmup)
    return Outcome({"latency_p50": figures["p50"], "latency_p99": figures["p99"]})


async def other_thread(ctx: Context) -> Outcome:
    """The same round trips from ``asyncio.run`` in a thread; the layer was made in the main one."""
    ctx.progress.total = ctx.counts.latency_rounds
    result: concurrent.futures.Future[dict[str, float]] = concurrent.futures.Future()
    result.set_running_or_notify_cancel()  # so that the runner giving up cannot cancel it

    async def measure() -> dict[str, float]:
        try:
            warmup = max(ctx.counts.latency_warmup, THREAD_WARMUP)
            return await asyncio.wait_for(_measure(ctx, warmup), ctx.counts.limit)
        finally:
            if ctx.layer_name in (CHANNELS_POSTGRES, NATS):
                # What it opened on this loop (channels_postgres' module-global pool,
                # channels-nats' connection per loop) belongs to the loop, which ends here.
                await close_layer(ctx.layer_name, ctx.layer, ctx.counts.stall)

    def run() -> None:
        try:
            result.set_result(asyncio.run(measure()))
        except BaseException as exc:
            result.set_exception(exc)

    # A daemon: a loop that never returns must not keep the benchmark from exiting.
    threading.Thread(target=run, name="bench loop thread", daemon=True).start()
    figures = await asyncio.wrap_future(result)
    return Outcome({"thread_p50": figures["p50"], "thread_p99": figures["p99"]})


async def sequential_sends(ctx: Context) -> Outcome:
    layer, stall, sends = ctx.layer, ctx.counts.stall, ctx.counts.latency_rounds
    channel = f"bench.sends.{token()}"
    await round_trips(layer, channel, count=0, warmup=ctx.counts.latency_warmup, timeout=stall)
    ctx.progress.beat()
    ctx.progress.total = sends
    start = time.perf_counter()
    for n in range(sends):
        await asyncio.wait_for(layer.send(channel, message(n)), stall)
        ctx.progress.tick()
    elapsed = time.perf_counter() - start
    arrived = Tally()
    while arrived.received < sends:  # not timed: every send must have stored its message
        arrived.add((await asyncio.wait_for(layer.receive(channel), stall))["n"])
        ctx.progress.beat()
    return Outcome({"send_ms": elapsed / sends * 1000}, tally_notes([arrived]))


def _ms(key: str, label: str) -> Metric:
    return Metric(key, label, "ms", lower_is_better=True)


WORKLOADS = (
    Workload(
        "latency",
        main_thread,
        (_ms("latency_p50", "latency p50"), _ms("latency_p99", "latency p99")),
        needs=(NORMAL,),
    ),
    Workload(
        "latency, loop in another thread",
        other_thread,
        (
            _ms("thread_p50", "latency p50, loop in a thread"),
            _ms("thread_p99", "latency p99, loop in a thread"),
        ),
        needs=(NORMAL, LOOPS),
    ),
    Workload("sequential sends", sequential_sends, (_ms("send_ms", "sequential send"),), needs=(NORMAL,)),
)
