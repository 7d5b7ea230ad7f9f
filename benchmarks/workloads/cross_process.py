"""Cross-process throughput: one process sends, another receives, one normal channel, in msg/s.

Two worker processes (``bench.py --worker cross-receive`` / ``cross-send``), each with a fresh
layer on one shared prefix. The sender sends a warm-up message, then ``counts.cross_messages``
sequential awaited sends; the receiver measures from its first to its last numbered message
((count - 1) / seconds), so process start-up and connection setup stay outside the clock.
Given ``marks`` (message numbers; ``workloads/cross_breakdown.py`` does), each worker also says
"mark" with its CPU time (``time.process_time()``) and the time (``time.monotonic()``) once
that many messages are through.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from harness.compare import (
    WARMUP,
    Context,
    Metric,
    Outcome,
    Tally,
    Workload,
    WorkloadError,
    fresh_prefix,
    tally_notes,
    token,
)
from harness.layers import NORMAL, SPECS, Services, close_layer
from harness.procs import STARTUP_TIMEOUT, Worker, WorkerFailed, WorkerQuiet, emit, message


async def cross_process(ctx: Context) -> Outcome:
    counts = ctx.counts
    params = {
        "layer": ctx.layer_name, "prefix": fresh_prefix(), "channel": f"bench.cross.{token()}",
        "count": counts.cross_messages, "stall": counts.stall,
    }  # fmt: skip
    url, redis, env = ctx.services.pg_url, ctx.services.redis_url, ctx.services.environment()
    ctx.progress.total = counts.cross_messages
    receiver = await Worker.start("cross-receive", url, redis, env=env, **params)
    sender: Worker | None = None
    try:
        await receiver.expect("ready", counts.stall + STARTUP_TIMEOUT)
        ctx.progress.beat()
        sender = await Worker.start("cross-send", url, redis, env=env, **params)
        sent = asyncio.create_task(sender.expect("result", counts.limit + STARTUP_TIMEOUT))
        try:
            while not (report := await _poll(receiver, ctx)):
                pass
            await sent
        except WorkerFailed as failed:
            # The sender's own error usually says why the receiver saw nothing.
            error = sent.exception() if sent.done() and not sent.cancelled() else None
            text = str(error or failed)
            if "TimeoutError" in text:
                raise TimeoutError(text) from None
            raise WorkloadError(text) from None
        finally:
            sent.cancel()
    finally:
        for worker in (receiver, sender):
            if worker is not None:
                await worker.stop(patience=5)
    tally = Tally(duplicates=report["duplicates"], misordered=report["misordered"])
    return Outcome({"cross": report["rate"]}, tally_notes([tally]))


async def _poll(receiver: Worker, ctx: Context) -> dict[str, Any] | None:
    """The receiver's result, or None after a progress report (so that a stall shows)."""
    done = receiver.progress.get("received", 0)
    try:
        return await receiver.expect("result", 0.5)
    except WorkerQuiet:
        return None
    finally:
        if receiver.progress.get("received", 0) != done:
            ctx.progress.done = receiver.progress["received"]
            ctx.progress.beat()


# -- the worker processes ---------------------------------------------------------------------


async def _in_worker(params: dict[str, Any], run: Any) -> None:
    spec = SPECS[params["layer"]]
    layer = spec.make(Services.in_worker(), params["prefix"])
    try:
        await run(layer, params["channel"], params["count"], params["stall"], params.get("marks", ()))
    finally:
        await close_layer(spec.name, layer, params["stall"])


async def _receive(layer: Any, channel: str, count: int, stall: float, marks: Sequence[int] = ()) -> None:
    tally = Tally()
    first = last = 0.0
    subscribed = asyncio.Event()

    async def receive_all() -> None:
        nonlocal first, last
        while tally.received < count:
            # The first message waits for the sender process to start as well.
            got = await asyncio.wait_for(
                layer.receive(channel), stall if tally.received else stall + STARTUP_TIMEOUT
            )
            if got.get("type") == WARMUP:
                subscribed.set()
                continue
            if not tally.add(got["n"]):
                continue
            last = time.perf_counter()
            first = first or last
            if tally.received in marks:
                emit(event="mark", cpu=time.process_time(), at=time.monotonic())
            if tally.received % 100 == 0:
                emit(event="progress", received=tally.received)

    task = asyncio.create_task(receive_all())
    # Ready once a warm-up sent to itself arrived: the receive has subscribed (LISTEN, an
    # advisory lock, a NATS subscription) and nothing the sender sends is dropped for want of it.
    deadline = time.monotonic() + stall
    while not subscribed.is_set():
        if task.done():
            await task  # its error says why
        if time.monotonic() > deadline:
            task.cancel()
            raise TimeoutError(f"a warm-up message sent to itself never arrived within {stall:g} s")
        await asyncio.wait_for(layer.send(channel, {"type": WARMUP}), stall)
        try:
            await asyncio.wait_for(subscribed.wait(), 1.0)
        except TimeoutError:
            pass
    emit(event="ready")
    try:
        await task
    except TimeoutError:
        raise TimeoutError(f"no message for {stall:g} s after {tally.received}/{count}") from None
    await asyncio.wait_for(layer.flush(), stall)  # the receiver cleans up the shared prefix
    rate = (count - 1) / (last - first) if last > first else float("inf")
    emit(event="result", rate=rate, duplicates=tally.duplicates, misordered=tally.misordered)


async def _send(layer: Any, channel: str, count: int, stall: float, marks: Sequence[int] = ()) -> None:
    await asyncio.wait_for(layer.send(channel, {"type": WARMUP}), stall)
    for n in range(count):
        if n in marks:
            emit(event="mark", cpu=time.process_time(), at=time.monotonic())
        await asyncio.wait_for(layer.send(channel, message(n)), stall)
    emit(event="result", sent=count)


async def receive_worker(params: dict[str, Any]) -> None:
    await _in_worker(params, _receive)


async def send_worker(params: dict[str, Any]) -> None:
    await _in_worker(params, _send)


WORKLOADS = (
    Workload(
        "cross-process",
        cross_process,
        (Metric("cross", "cross-process throughput", "msg/s"),),
        in_process=False,
        needs=(NORMAL,),
    ),
)
WORKERS = {"cross-receive": receive_worker, "cross-send": send_worker}
