"""Another process sends to this one's process-local channels, in msg/s and deliveries/s.

As another app server's process would: this process holds the receivers, on channels of its
own layer (``new_channel()``), warmed up; a worker process (``bench.py --worker local-send``
or ``group-send``) makes its own instance of the layer on the same prefix, sends a warm-up
to connect, says it is ready, and on "go" sends:

- to ``counts.remote_channels`` process-local channels, ``counts.remote_per_channel``
  messages each, one awaited sender per channel (msg/s);
- ``counts.remote_group_sends`` ``group_send``s, one at a time, to a group of
  ``counts.fanout_members`` process-local members (deliveries/s).

The clock runs in this process, from "go" until every message arrived, so the worker's
start-up and connection setup stay outside it. n/a for the in-memory layer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from harness.compare import (
    WARMUP,
    Context,
    Metric,
    Outcome,
    Receiver,
    Workload,
    WorkloadError,
    all_received,
    receiving,
    tally_notes,
    token,
)
from harness.layers import GROUPS, SHARED, SPECS, Services, close_layer
from harness.procs import (
    STARTUP_TIMEOUT,
    Worker,
    WorkerFailed,
    WorkerQuiet,
    command_reader,
    emit,
    message,
    next_command,
)


async def _run(ctx: Context, receivers: list[Receiver], role: str, key: str, **params: Any) -> Outcome:
    """Start the worker, wait until it is connected, then time its sends until all arrived."""
    counts, services = ctx.counts, ctx.services
    expected = sum(r.expected for r in receivers)
    async with receiving(ctx, receivers):
        ctx.progress.total = expected
        worker = await Worker.start(
            role, services.pg_url, services.redis_url, env=services.environment(),
            layer=ctx.layer_name, prefix=ctx.prefix, stall=counts.stall, **params,
        )  # fmt: skip
        try:
            await _expect(ctx, worker, "ready", counts.stall + STARTUP_TIMEOUT)
            start = time.perf_counter()
            worker.command(command="go")
            sent = asyncio.create_task(worker.expect("result", counts.limit))
            received = asyncio.create_task(all_received(ctx, receivers))
            try:
                # The worker's error, if it fails first, says why nothing arrives.
                await asyncio.wait({sent, received}, return_when=asyncio.FIRST_EXCEPTION)
                if sent.done() and sent.exception() is not None:
                    raise WorkloadError(str(sent.exception()))
                await received
            finally:
                sent.cancel()
                received.cancel()
            elapsed = time.perf_counter() - start
        finally:
            await worker.stop(patience=5)
    return Outcome({key: expected / elapsed}, tally_notes([r.tally for r in receivers]))


async def _expect(ctx: Context, worker: Worker, kind: str, timeout: float) -> None:
    """Wait for the worker's ``kind`` event; a slow start is no stall of the layer's."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await worker.expect(kind, min(1.0, max(deadline - time.monotonic(), 0.01)))
            return
        except WorkerQuiet:
            if time.monotonic() > deadline:
                raise
            ctx.progress.beat()
        except WorkerFailed as failed:
            raise WorkloadError(str(failed)) from None


async def to_local_channels(ctx: Context) -> Outcome:
    per = ctx.counts.remote_per_channel
    receivers = [Receiver(ctx, await ctx.layer.new_channel(), per) for _ in range(ctx.counts.remote_channels)]
    channels = [r.channel for r in receivers]
    return await _run(ctx, receivers, "local-send", "remote_local", channels=channels, per=per)


async def group_send(ctx: Context) -> Outcome:
    counts = ctx.counts
    group = f"bench-remote-{token()}"
    receivers = [
        Receiver(ctx, await ctx.layer.new_channel(), counts.remote_group_sends)
        for _ in range(counts.fanout_members)
    ]
    for r in receivers:
        await asyncio.wait_for(ctx.layer.group_add(group, r.channel), counts.stall)
        ctx.progress.beat()
    sends = counts.remote_group_sends
    return await _run(ctx, receivers, "group-send", "remote_fanout", group=group, sends=sends)


# -- the worker process -----------------------------------------------------------------------


async def _in_worker(params: dict[str, Any], warm_up: Any, send: Any) -> None:
    spec, stall = SPECS[params["layer"]], params["stall"]
    commands = await command_reader()
    layer = spec.make(Services.in_worker(), params["prefix"])
    try:
        try:
            await asyncio.wait_for(warm_up(layer), stall)  # connects; the receivers skip warm-ups
        except TimeoutError:
            raise TimeoutError(f"the warm-up sends did not finish within {stall:g} s") from None
        emit(event="ready")
        if (await next_command(commands, stall + STARTUP_TIMEOUT))["command"] != "go":
            return
        emit(event="result", sent=await send(layer))
        await next_command(commands)  # stay connected until the parent has every message
    finally:
        await close_layer(spec.name, layer, stall)


async def local_send_worker(params: dict[str, Any]) -> None:
    channels, per, stall = params["channels"], params["per"], params["stall"]

    async def warm_up(layer: Any) -> None:
        for channel in channels:
            await layer.send(channel, {"type": WARMUP})

    async def feed(layer: Any, channel: str) -> None:
        for n in range(per):
            try:
                await asyncio.wait_for(layer.send(channel, message(n)), stall)
            except TimeoutError:
                raise TimeoutError(f"send {n + 1} of {per} took over {stall:g} s") from None

    async def send(layer: Any) -> int:
        await asyncio.gather(*(feed(layer, channel) for channel in channels))
        return len(channels) * per

    await _in_worker(params, warm_up, send)


async def group_send_worker(params: dict[str, Any]) -> None:
    group, sends, stall = params["group"], params["sends"], params["stall"]

    async def warm_up(layer: Any) -> None:
        await layer.group_send(group, {"type": WARMUP})

    async def send(layer: Any) -> int:
        for n in range(sends):
            try:
                await asyncio.wait_for(layer.group_send(group, message(n)), stall)
            except TimeoutError:
                raise TimeoutError(f"group_send {n + 1} of {sends} took over {stall:g} s") from None
        return sends

    await _in_worker(params, warm_up, send)


WORKLOADS = (
    Workload(
        "process-local, another process sends",
        to_local_channels,
        (Metric("remote_local", "process-local, sent by another process", "msg/s"),),
        needs=(SHARED,),
    ),
    Workload(
        "fan-out, another process group_sends",
        group_send,
        (Metric("remote_fanout", "group fan-out, sent by another process", "deliveries/s"),),
        needs=(GROUPS, SHARED),
    ),
)
WORKERS = {"local-send": local_send_worker, "group-send": group_send_worker}
