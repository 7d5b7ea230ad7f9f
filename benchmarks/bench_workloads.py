"""The workloads, each run against one fresh layer (or, cross-process, two worker processes).

Every wait is bounded: a receive or send that does not finish within ``counts.stall`` seconds
raises TimeoutError, which the runner reports as "timeout" in the layer's cell.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import secrets
import statistics
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import async_to_sync
from bench_layers import CHANNELS_POSTGRES, Services, close_layer

WARMUP = "bench.warmup"
MESSAGE = "bench.message"
# About the size of a small chat or notification event; the same for every layer.
_TEXT = "x" * 100


@dataclass(frozen=True)
class Counts:
    latency_rounds: int
    latency_warmup: int
    local_receivers: int
    local_per_receiver: int
    fanout_members: int
    fanout_sends: int
    cross_messages: int
    sync_calls: int
    stall: float  # seconds one operation (or the whole workload) may go without progress
    limit: float  # seconds one workload may take in all

    @classmethod
    def default(cls) -> Counts:
        return cls(
            latency_rounds=2000,
            latency_warmup=20,
            local_receivers=50,
            local_per_receiver=100,
            fanout_members=200,
            fanout_sends=20,
            cross_messages=5000,
            sync_calls=1000,
            stall=10.0,
            limit=60.0,
        )

    @classmethod
    def quick(cls) -> Counts:
        return cls(
            latency_rounds=200,
            latency_warmup=10,
            local_receivers=50,
            local_per_receiver=20,
            fanout_members=200,
            fanout_sends=5,
            cross_messages=500,
            sync_calls=100,
            stall=6.0,
            limit=20.0,
        )


@dataclass
class Progress:
    """Shared with the runner, which reports a stall when ``beats`` stops moving."""

    done: int = 0
    total: int = 0
    beats: int = 0

    def tick(self, n: int = 1) -> None:
        self.done += n
        self.beats += 1

    def beat(self) -> None:
        """Setup made progress (nothing counted towards the result yet)."""
        self.beats += 1


@dataclass
class Context:
    layer_name: str
    services: Services
    counts: Counts
    progress: Progress
    script: str  # this benchmark's entry script, to start worker processes with
    layer: Any = None  # None for workloads that make their layers in worker processes
    # Another instance of the layer on the same prefix, as a second app server would have.
    make_peer: Callable[[], Any] | None = None


@dataclass
class Outcome:
    metrics: dict[str, float]
    notes: list[str] = field(default_factory=list)


class WorkloadError(Exception):
    """The layer did something wrong (wrong message, a worker failed); the text says what."""


def token() -> str:
    return secrets.token_hex(4)


def fresh_prefix() -> str:
    return f"bench{secrets.token_hex(6)}"


def message(n: int) -> dict[str, Any]:
    return {"type": MESSAGE, "n": n, "text": _TEXT}


# -- 1. latency -------------------------------------------------------------------------------


async def latency(ctx: Context) -> Outcome:
    """Send then receive on one normal channel, one round trip at a time."""
    layer, stall = ctx.layer, ctx.counts.stall
    channel = f"bench.latency.{token()}"

    async def round_trip(n: int) -> float:
        start = time.perf_counter()
        await asyncio.wait_for(layer.send(channel, message(n)), stall)
        received = await asyncio.wait_for(layer.receive(channel), stall)
        elapsed = time.perf_counter() - start
        if received.get("n") != n:
            raise WorkloadError(f"round trip {n} received message n={received.get('n')!r}")
        return elapsed

    # Not timed: the first round trips open connections and start the layer's readers.
    for n in range(ctx.counts.latency_warmup):
        await round_trip(-1 - n)
        ctx.progress.beat()
    ctx.progress.total = ctx.counts.latency_rounds
    samples = []
    for n in range(ctx.counts.latency_rounds):
        samples.append(await round_trip(n))
        ctx.progress.tick()
    centiles = statistics.quantiles(samples, n=100, method="inclusive")
    return Outcome({"latency_p50": centiles[49] * 1000, "latency_p99": centiles[98] * 1000})


# -- receivers shared by the process-local and fan-out workloads ------------------------------


@dataclass
class Tally:
    """What arrived on one channel: distinct benchmark messages, duplicates, misordered ones.

    Each message carries a number ``n`` unique on its channel, sent in increasing order by a
    single sender, so a repeated ``n`` is a duplicate delivery and a smaller one is misordered.
    """

    seen: set[int] = field(default_factory=set)
    duplicates: int = 0
    misordered: int = 0
    last: int = -1

    def add(self, n: int) -> bool:
        """Count message ``n``; False if it had arrived before (a duplicate, not counted)."""
        if n in self.seen:
            self.duplicates += 1
            return False
        self.seen.add(n)
        if n < self.last:
            self.misordered += 1
        self.last = n
        return True

    @property
    def received(self) -> int:
        return len(self.seen)


def tally_notes(tallies: Sequence[Tally]) -> list[str]:
    duplicates = sum(tally.duplicates for tally in tallies)
    misordered = sum(tally.misordered for tally in tallies)
    notes = []
    if duplicates:
        notes.append(f"{duplicates} messages were delivered more than once (duplicates not counted)")
    if misordered:
        notes.append(f"{misordered} messages arrived out of the order their sender sent them in")
    return notes


class Receiver:
    """Receives on one channel until ``expected`` distinct benchmark messages arrived.

    Warm-up messages only mark the receiver ready.
    """

    def __init__(self, ctx: Context, channel: str, expected: int) -> None:
        self.ctx = ctx
        self.channel = channel
        self.expected = expected
        self.ready = asyncio.Event()
        self.tally = Tally()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while self.tally.received < self.expected:
            got = await asyncio.wait_for(self.ctx.layer.receive(self.channel), self.ctx.counts.stall)
            if got.get("type") == WARMUP:
                self.ready.set()
            elif self.tally.add(got["n"]):
                self.ctx.progress.tick()


@asynccontextmanager
async def running(receivers: Sequence[Receiver]) -> AsyncIterator[None]:
    """Run every receiver as a task; cancel whatever still runs on the way out."""
    for receiver in receivers:
        receiver.task = asyncio.create_task(receiver.run(), name=f"bench receiver {receiver.channel}")
    tasks = [receiver.task for receiver in receivers if receiver.task is not None]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        # Bounded: a layer whose receive ignores cancellation must not hang the run.
        await asyncio.wait(tasks, timeout=5)


async def warm_up(ctx: Context, receivers: Sequence[Receiver]) -> None:
    """Make sure every receiver is really waiting before the clock starts.

    channels_postgres drops a message sent to a channel before the first receive on it has
    taken its advisory lock, so warm-up messages are sent again until each receiver has one.
    """
    deadline = time.monotonic() + ctx.counts.stall
    pending = list(receivers)
    await asyncio.sleep(0.1)  # let every receiver reach its first receive
    while pending:
        for receiver in pending:
            await asyncio.wait_for(ctx.layer.send(receiver.channel, {"type": WARMUP}), ctx.counts.stall)
            ctx.progress.beat()
        resend_at = time.monotonic() + 1.0
        while time.monotonic() < resend_at and not all(r.ready.is_set() for r in pending):
            _raise_if_failed(receivers)
            await asyncio.sleep(0.01)
        pending = [receiver for receiver in pending if not receiver.ready.is_set()]
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} of {len(receivers)} receivers never got a warm-up message")


def _raise_if_failed(receivers: Sequence[Receiver]) -> None:
    for receiver in receivers:
        if receiver.task is not None and receiver.task.done() and not receiver.task.cancelled():
            error = receiver.task.exception()
            if error is not None:
                raise error


async def all_received(ctx: Context, receivers: Sequence[Receiver]) -> None:
    tasks = [receiver.task for receiver in receivers if receiver.task is not None]
    await asyncio.wait_for(asyncio.gather(*tasks), ctx.counts.limit)


# -- 2. process-local throughput --------------------------------------------------------------


async def process_local(ctx: Context) -> Outcome:
    """Many new_channel() receivers in one process, each fed by its own concurrent sender."""
    return await _process_local(ctx, ctx.layer)


async def process_local_from_peer(ctx: Context) -> Outcome:
    """process_local, but the senders use another instance of the layer, as another app
    server's would: a layer that delivers its own process-local traffic in memory cannot."""
    return renamed(await _with_peer(ctx, _process_local), "local", "local_peer")


def renamed(outcome: Outcome, key: str, new_key: str) -> Outcome:
    metrics = {new_key if name == key else name: value for name, value in outcome.metrics.items()}
    return Outcome(metrics, outcome.notes)


async def _with_peer(ctx: Context, workload: Callable[[Context, Any], Awaitable[Outcome]]) -> Outcome:
    if ctx.make_peer is None:
        raise WorkloadError("this workload needs a second instance of the layer")
    peer = ctx.make_peer()
    try:
        return await workload(ctx, peer)
    finally:
        # channels_postgres' instances share one module-level pool, which the teardown of the
        # workload's own layer resets: closing the peer here would pull it from under that one.
        if ctx.layer_name != CHANNELS_POSTGRES:
            await close_layer(ctx.layer_name, peer, ctx.counts.stall)


async def _process_local(ctx: Context, sender: Any) -> Outcome:
    layer, counts = ctx.layer, ctx.counts
    per = counts.local_per_receiver
    receivers = [Receiver(ctx, await layer.new_channel(), per) for _ in range(counts.local_receivers)]

    async def feed(channel: str) -> None:
        for n in range(per):
            await asyncio.wait_for(sender.send(channel, message(n)), counts.stall)
            ctx.progress.beat()

    async with running(receivers):
        await warm_up(ctx, receivers)
        ctx.progress.total = len(receivers) * per
        start = time.perf_counter()
        senders = asyncio.gather(*(feed(receiver.channel) for receiver in receivers))
        await asyncio.wait_for(senders, counts.limit)
        await all_received(ctx, receivers)
        elapsed = time.perf_counter() - start
    return Outcome(
        {"local": len(receivers) * per / elapsed}, tally_notes([receiver.tally for receiver in receivers])
    )


# -- 3. group fan-out -------------------------------------------------------------------------


async def fan_out(ctx: Context) -> Outcome:
    """group_send to a group of process-local members, each receiving in a loop."""
    return await _fan_out(ctx, ctx.layer)


async def fan_out_from_peer(ctx: Context) -> Outcome:
    """fan_out, with the group_sends made by another instance of the layer."""
    return renamed(await _with_peer(ctx, _fan_out), "fanout", "fanout_peer")


async def _fan_out(ctx: Context, sender: Any) -> Outcome:
    layer, counts = ctx.layer, ctx.counts
    group = f"bench-fanout-{token()}"
    receivers = [
        Receiver(ctx, await layer.new_channel(), counts.fanout_sends) for _ in range(counts.fanout_members)
    ]
    for receiver in receivers:
        await asyncio.wait_for(layer.group_add(group, receiver.channel), counts.stall)
        ctx.progress.beat()

    async with running(receivers):
        await warm_up(ctx, receivers)
        ctx.progress.total = len(receivers) * counts.fanout_sends
        start = time.perf_counter()
        for n in range(counts.fanout_sends):
            await asyncio.wait_for(sender.group_send(group, message(n)), counts.stall)
            ctx.progress.beat()
        await all_received(ctx, receivers)
        elapsed = time.perf_counter() - start
    return Outcome(
        {"fanout": len(receivers) * counts.fanout_sends / elapsed},
        tally_notes([receiver.tally for receiver in receivers]),
    )


# -- 4. cross-process -------------------------------------------------------------------------


async def cross_process(ctx: Context) -> Outcome:
    """A sender process and a receiver process, each with a fresh layer on one shared prefix."""
    counts = ctx.counts
    prefix, channel = fresh_prefix(), f"bench.cross.{token()}"

    def command(role: str) -> list[str]:
        return [
            sys.executable, ctx.script, "--worker", role, "--layer", ctx.layer_name,
            "--prefix", prefix, "--channel", channel, "--count", str(counts.cross_messages),
            "--url", ctx.services.pg_url, "--redis", ctx.services.redis_url, "--stall", str(counts.stall),
        ]  # fmt: skip

    ctx.progress.total = counts.cross_messages
    receiver = await asyncio.create_subprocess_exec(*command("receive"), stdout=asyncio.subprocess.PIPE)
    sender: asyncio.subprocess.Process | None = None
    try:
        # Starting a Python process with these imports takes a second or two.
        await _expect_ready(receiver, timeout=counts.stall + 20)
        ctx.progress.beat()
        sender = await asyncio.create_subprocess_exec(*command("send"), stdout=asyncio.subprocess.PIPE)
        sent = asyncio.create_task(_read_result(sender, timeout=counts.limit + 20))
        try:
            report = await _follow_receiver(ctx, receiver)
        except BaseException:
            # The sender's own error usually says why the receiver saw nothing.
            sender_report = await asyncio.wait_for(asyncio.shield(sent), 5)
            if "error" in sender_report:
                raise WorkloadError(f"sender: {sender_report['error']}") from None
            raise
        sender_report = await sent
        if "error" in sender_report:
            raise WorkloadError(f"sender: {sender_report['error']}")
    finally:
        for process in (receiver, sender):
            if process is not None and process.returncode is None:
                process.kill()
                await asyncio.wait_for(process.wait(), 10)
    tally = Tally(duplicates=report["duplicates"], misordered=report["misordered"])
    return Outcome({"cross": report["rate"]}, tally_notes([tally]))


async def _expect_ready(process: asyncio.subprocess.Process, timeout: float) -> None:
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), timeout)).decode().strip()
    if line != "ready":
        report = _parse_result(line) if line.startswith("result ") else {"error": f"said {line!r}"}
        raise WorkloadError(f"receiver: {report.get('error', 'exited early')}")


async def _follow_receiver(ctx: Context, process: asyncio.subprocess.Process) -> dict[str, Any]:
    """Read the receiver's progress lines (so a stall shows) until its result line."""
    assert process.stdout is not None
    while True:
        # The receiver reports every 100 messages and itself gives up after `stall` seconds.
        line = (await asyncio.wait_for(process.stdout.readline(), ctx.counts.stall + 10)).decode().strip()
        if not line:
            raise WorkloadError(f"receiver exited (code {await process.wait()}) without a result")
        if line.startswith("progress "):
            ctx.progress.done = int(line.split()[1])
            ctx.progress.beat()
        elif line.startswith("result "):
            report = _parse_result(line)
            if "error" in report:
                if report.get("timeout"):
                    raise TimeoutError(report["error"])
                raise WorkloadError(f"receiver: {report['error']}")
            ctx.progress.done = ctx.counts.cross_messages
            return report


async def _read_result(process: asyncio.subprocess.Process, timeout: float) -> dict[str, Any]:
    output, _ = await asyncio.wait_for(process.communicate(), timeout)
    for line in reversed(output.decode().splitlines()):
        if line.startswith("result "):
            return _parse_result(line)
    return {"error": f"exited (code {process.returncode}) without a result"}


def _parse_result(line: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(line.removeprefix("result "))
    return result


# -- 4b. the worker processes' side -----------------------------------------------------------


async def receive_worker(layer: Any, channel: str, count: int, stall: float) -> dict[str, Any]:
    """Receive ``count`` distinct messages; the rate runs from the first to the last of them."""
    tally = Tally()

    async def receive_all() -> dict[str, Any]:
        first = last = 0.0
        while tally.received < count:
            # The first message waits for the sender process to start as well.
            timeout = stall if tally.received else stall + 20
            got = await asyncio.wait_for(layer.receive(channel), timeout)
            if got.get("type") == WARMUP or not tally.add(got["n"]):
                continue
            last = time.perf_counter()
            if tally.received == 1:
                first = last
            if tally.received % 100 == 0:
                print(f"progress {tally.received}", flush=True)
        # count - 1 gaps between the first and the last message.
        rate = (count - 1) / (last - first) if last > first else float("inf")
        return {"rate": rate, "duplicates": tally.duplicates, "misordered": tally.misordered}

    task = asyncio.create_task(receive_all())
    # A moment for the first receive to subscribe (LISTEN, advisory lock) before any send.
    await asyncio.sleep(0.3)
    print("ready", flush=True)
    try:
        return await task
    except (TimeoutError, asyncio.TimeoutError):
        return {"error": f"no message for {stall:g} s after {tally.received}/{count}", "timeout": True}


async def send_worker(layer: Any, channel: str, count: int, stall: float) -> dict[str, Any]:
    """One warm-up message (connection setup stays out of the receiver's clock), then ``count``."""
    await asyncio.wait_for(layer.send(channel, {"type": WARMUP}), stall)
    start = time.perf_counter()
    for n in range(count):
        await asyncio.wait_for(layer.send(channel, message(n)), stall)
    return {"sent": count, "seconds": time.perf_counter() - start}


# -- 5. sync callers --------------------------------------------------------------------------


async def sync_group_send(ctx: Context) -> Outcome:
    """async_to_sync(layer.group_send) from a plain thread, to a group of one channel."""
    group, channel = f"bench-sync-{token()}", f"bench.syncgroup.{token()}"
    await asyncio.wait_for(ctx.layer.group_add(group, channel), ctx.counts.stall)
    return await _sync_calls(ctx, async_to_sync(ctx.layer.group_send), group, channel, "sync_group_send")


async def sync_send(ctx: Context) -> Outcome:
    """async_to_sync(layer.send) from a plain thread, to one normal channel."""
    channel = f"bench.sync.{token()}"
    return await _sync_calls(ctx, async_to_sync(ctx.layer.send), channel, channel, "sync_send")


async def _sync_calls(
    ctx: Context, call: Callable[[str, dict[str, Any]], None], target: str, channel: str, metric: str
) -> Outcome:
    calls = ctx.counts.sync_calls
    ctx.progress.total = calls
    stop = threading.Event()
    outcome: concurrent.futures.Future[float] = concurrent.futures.Future()

    def caller() -> None:
        # A plain thread with no event loop, like a Django view or a management command.
        # Marked running so that the runner giving up cannot cancel it under our feet.
        outcome.set_running_or_notify_cancel()
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
    threading.Thread(target=caller, name=f"bench sync {metric}", daemon=True).start()
    try:
        elapsed = await asyncio.wait_for(asyncio.wrap_future(outcome), ctx.counts.limit)
    finally:
        stop.set()
    # Not timed: check that every call really stored its message.
    arrived = await drain(ctx, channel, calls)
    notes = tally_notes([arrived])
    if arrived.received < calls:
        notes.append(f"only {arrived.received} of {calls} messages could be received afterwards")
    return Outcome({metric: calls / elapsed}, notes)


async def drain(ctx: Context, channel: str, expected: int) -> Tally:
    """Receive until ``expected`` distinct messages arrived or none comes for a while."""
    tally = Tally()
    try:
        while tally.received < expected:
            got = await asyncio.wait_for(ctx.layer.receive(channel), min(ctx.counts.stall, 5.0))
            tally.add(got["n"])
            ctx.progress.beat()
    except (TimeoutError, asyncio.TimeoutError):
        pass
    return tally
