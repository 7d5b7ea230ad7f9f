"""Process-local channels (``new_channel()``): one round trip, in ms, and throughput, in msg/s.

The round trip: ``send`` to one of the layer's own process-local channels, then ``receive``
on it, one at a time, as the latency workload does on a normal channel
(``counts.latency_rounds``, after ``counts.latency_warmup`` untimed).

Throughput: ``counts.local_receivers`` receivers loop on ``receive``, each fed by its own concurrent sender
with ``counts.local_per_receiver`` messages; the rate runs from the first send until every
message arrived. Two rows: sent by the receiving instance itself (channel_layer_pg delivers
those in memory: only that instance can receive on them), and sent by a second instance on
the same prefix, as another app server's would (through PostgreSQL; n/a for the in-memory
layer, whose instances share nothing). Duplicates and misordered messages go in the notes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from harness.compare import (
    Context,
    Metric,
    Outcome,
    Receiver,
    Workload,
    all_received,
    receiving,
    tally_notes,
    with_peer,
)
from harness.layers import SHARED
from harness.procs import centiles, message, round_trips


async def _run(ctx: Context, sender: Any, key: str) -> Outcome:
    layer, counts = ctx.layer, ctx.counts
    per = counts.local_per_receiver
    receivers = [Receiver(ctx, await layer.new_channel(), per) for _ in range(counts.local_receivers)]

    async def feed(channel: str) -> None:
        for n in range(per):
            await asyncio.wait_for(sender.send(channel, message(n)), counts.stall)
            ctx.progress.beat()

    async with receiving(ctx, receivers):
        ctx.progress.total = len(receivers) * per
        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(feed(r.channel) for r in receivers)), counts.limit)
        await all_received(ctx, receivers)
        elapsed = time.perf_counter() - start
    return Outcome({key: len(receivers) * per / elapsed}, tally_notes([r.tally for r in receivers]))


async def round_trip(ctx: Context) -> Outcome:
    ctx.progress.total = ctx.counts.latency_rounds
    samples = await round_trips(
        ctx.layer,
        await ctx.layer.new_channel(),
        count=ctx.counts.latency_rounds,
        warmup=ctx.counts.latency_warmup,
        timeout=ctx.counts.stall,
        tick=ctx.progress.tick,
    )
    p50, p99 = centiles(samples)
    return Outcome({"local_p50": p50, "local_p99": p99})


async def same_instance(ctx: Context) -> Outcome:
    return await _run(ctx, ctx.layer, "local")


async def other_instance(ctx: Context) -> Outcome:
    return await with_peer(ctx, lambda peer: _run(ctx, peer, "local_peer"))


WORKLOADS = (
    Workload(
        "process-local round trip",
        round_trip,
        (
            Metric("local_p50", "process-local latency p50", "ms", lower_is_better=True),
            Metric("local_p99", "process-local latency p99", "ms", lower_is_better=True),
        ),
    ),
    Workload("process-local", same_instance, (Metric("local", "process-local throughput", "msg/s"),)),
    Workload(
        "process-local, another instance sends",
        other_instance,
        (Metric("local_peer", "process-local, sent by another instance", "msg/s"),),
        needs=(SHARED,),
    ),
)
