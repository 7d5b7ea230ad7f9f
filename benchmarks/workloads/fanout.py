"""Group fan-out: ``group_send`` to process-local members of one process, in deliveries/s.

``counts.fanout_members`` members join one group, each receiving in a loop; then
``counts.fanout_sends`` ``group_send``s, one at a time; the rate runs from the first send
until every member got every message. Two rows: sent by the members' own instance, and by a
second instance on the same prefix (through PostgreSQL; n/a for the in-memory layer).
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
    token,
    with_peer,
)
from harness.layers import GROUPS, SHARED
from harness.procs import message


async def _run(ctx: Context, sender: Any, key: str) -> Outcome:
    layer, counts = ctx.layer, ctx.counts
    group = f"bench-fanout-{token()}"
    receivers = [
        Receiver(ctx, await layer.new_channel(), counts.fanout_sends) for _ in range(counts.fanout_members)
    ]
    for r in receivers:
        await asyncio.wait_for(layer.group_add(group, r.channel), counts.stall)
        ctx.progress.beat()
    async with receiving(ctx, receivers):
        ctx.progress.total = len(receivers) * counts.fanout_sends
        start = time.perf_counter()
        for n in range(counts.fanout_sends):
            await asyncio.wait_for(sender.group_send(group, message(n)), counts.stall)
            ctx.progress.beat()
        await all_received(ctx, receivers)
        elapsed = time.perf_counter() - start
    return Outcome(
        {key: len(receivers) * counts.fanout_sends / elapsed}, tally_notes([r.tally for r in receivers])
    )


async def same_instance(ctx: Context) -> Outcome:
    return await _run(ctx, ctx.layer, "fanout")


async def other_instance(ctx: Context) -> Outcome:
    return await with_peer(ctx, lambda peer: _run(ctx, peer, "fanout_peer"))


WORKLOADS = (
    Workload("fan-out", same_instance, (Metric("fanout", "group fan-out", "deliveries/s"),), needs=(GROUPS,)),
    Workload(
        "fan-out, another instance sends",
        other_instance,
        (Metric("fanout_peer", "group fan-out, sent by another instance", "deliveries/s"),),
        needs=(GROUPS, SHARED),
    ),
)
