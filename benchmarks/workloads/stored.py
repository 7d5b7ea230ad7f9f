"""Stored: messages sent to a normal channel before anyone receives on it, then received.

A channel layer's consumer is not always waiting: it restarts, it is busy with the previous
message, its process has not started yet. ``STORED_MESSAGES`` numbered messages are sent to a
fresh channel that this layer has never received on; then they are received, waiting at most
FIRST_WAIT seconds for the first and NEXT_WAIT for each after. The row is the share that
arrived, in per cent. A layer that stores messages delivers 100; a pub/sub layer (channels-nats)
drops what is published to a subject nobody subscribes to, and its faster figures elsewhere are
bought with that.
"""

from __future__ import annotations

import asyncio

from harness.compare import Context, Metric, Outcome, Tally, Workload, tally_notes, token
from harness.layers import NORMAL
from harness.procs import message

STORED_MESSAGES = 100
FIRST_WAIT, NEXT_WAIT = 2.0, 0.5


async def sent_before_receive(ctx: Context) -> Outcome:
    layer, stall = ctx.layer, ctx.counts.stall
    channel = f"bench.stored.{token()}"
    ctx.progress.total = STORED_MESSAGES
    for n in range(STORED_MESSAGES):
        await asyncio.wait_for(layer.send(channel, message(n)), stall)
        ctx.progress.beat()
    arrived = Tally()
    try:
        while arrived.received < STORED_MESSAGES:
            wait = NEXT_WAIT if arrived.received else FIRST_WAIT
            arrived.add((await asyncio.wait_for(layer.receive(channel), wait))["n"])
            ctx.progress.tick()
    except TimeoutError:
        pass
    notes = tally_notes([arrived])
    if arrived.received < STORED_MESSAGES:
        notes.append(
            f"{STORED_MESSAGES - arrived.received} of {STORED_MESSAGES} messages sent before the first "
            "receive never arrived"
        )
    return Outcome({"stored": arrived.received / STORED_MESSAGES * 100}, notes)


WORKLOADS = (
    Workload(
        "sent before the first receive",
        sent_before_receive,
        (Metric("stored", "sent before the first receive, delivered", "%"),),
        needs=(NORMAL,),
    ),
)
