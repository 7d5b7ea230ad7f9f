"""Sync callers: ``async_to_sync(layer.group_send)`` and ``async_to_sync(layer.send)``, in calls/s.

A plain thread with no event loop (a Django view, a management command) makes
``counts.sync_calls`` calls one after another: ``group_send`` to a group of one normal channel,
or ``send`` to one normal channel. Afterwards, not timed, the messages are received to check
that every call stored one; a shortfall goes in the notes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any

from asgiref.sync import async_to_sync
from harness.compare import Context, Metric, Outcome, Tally, Workload, tally_notes, token
from harness.layers import GROUPS, LOOPS, NORMAL
from harness.procs import message, round_trips


async def group_send(ctx: Context) -> Outcome:
    group, channel = f"bench-sync-{token()}", f"bench.syncgroup.{token()}"
    await asyncio.wait_for(ctx.layer.group_add(group, channel), ctx.counts.stall)
    return await _calls(ctx, async_to_sync(ctx.layer.group_send), group, channel, "sync_group_send")


async def send(ctx: Context) -> Outcome:
    channel = f"bench.sync.{token()}"
    return await _calls(ctx, async_to_sync(ctx.layer.send), channel, channel, "sync_send")


async def _calls(
    ctx: Context, call: Callable[[str, dict[str, Any]], None], target: str, channel: str, key: str
) -> Outcome:
    calls = ctx.counts.sync_calls
    # Untimed: a receive is waiting on the channel once before the calls, for a pub/sub layer
    # (channels-nats) drops what is sent to a channel nobody has received on.
    await round_trips(ctx.layer, channel, count=0, warmup=1, timeout=ctx.counts.stall)
    ctx.progress.total = calls
    stop = threading.Event()
    outcome: concurrent.futures.Future[float] = concurrent.futures.Future()
    outcome.set_running_or_notify_cancel()  # so that the runner giving up cannot cancel it

    def caller() -> None:
        try:
            start = time.perf_counter()
            for n in range(calls):
                if stop.is_set():
                    raise RuntimeError("stopped by the benchmark")
                call(target, message(n))
                ctx.progress.tick()
            outcome.set_result(time.perf_counter() - start)
        except BaseException as exc:
            outcome.set_exception(exc)

    # A daemon: a call that never returns must not keep the benchmark from exiting.
    threading.Thread(target=caller, name=f"bench sync {key}", daemon=True).start()
    try:
        elapsed = await asyncio.wait_for(asyncio.wrap_future(outcome), ctx.counts.limit)
    finally:
        stop.set()
    arrived = Tally()
    try:
        while arrived.received < calls:
            arrived.add((await asyncio.wait_for(ctx.layer.receive(channel), min(ctx.counts.stall, 5.0)))["n"])
            ctx.progress.beat()
    except TimeoutError:
        pass
    notes = tally_notes([arrived])
    if arrived.received < calls:
        notes.append(f"only {arrived.received} of {calls} messages could be received afterwards")
    return Outcome({key: calls / elapsed}, notes)


WORKLOADS = (
    Workload(
        "sync group_send",
        group_send,
        (Metric("sync_group_send", "sync group_send", "calls/s"),),
        needs=(GROUPS, NORMAL, LOOPS),
    ),
    Workload("sync send", send, (Metric("sync_send", "sync send", "calls/s"),), needs=(NORMAL, LOOPS)),
)
