"""Runs the comparison workloads against every layer, each on a fresh layer, and builds the table.

Every wait is bounded: an operation that makes no progress for ``counts.stall`` seconds, or a
workload running past ``counts.limit``, shows "timeout done/total" in its cell; an exception
shows its type. The notes under the table give the full text, what the layer logged at
WARNING or above, background task errors, and tasks or threads left running after close().
"""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from .db import first_line
from .layers import CHANNELS_POSTGRES, OURS, SHARED, SPECS, LayerSpec, Services, cancelling, close_layer
from .table import render

WARMUP = "bench.warmup"


@dataclass(frozen=True)
class Counts:
    latency_rounds: int = 2000
    latency_warmup: int = 20
    local_receivers: int = 50
    local_per_receiver: int = 100
    fanout_members: int = 200
    fanout_sends: int = 20
    cross_messages: int = 5000
    sync_calls: int = 1000
    # Another process sends: to this many process-local channels of this one, so many each...
    remote_channels: int = 20
    remote_per_channel: int = 250
    # ... and group_sends to the fanout_members of a group in this one, one at a time.
    remote_group_sends: int = 50
    # The shard benchmark (workloads/shards.py), for 1, 2 and 3 shards.
    shard_messages: int = 2000
    shard_members: int = 30
    shard_group_sends: int = 200
    stall: float = 10.0  # seconds one operation (or the whole workload) may go without progress
    limit: float = 60.0  # seconds one workload may take in all

    @classmethod
    def quick(cls) -> Counts:
        return cls(
            latency_rounds=200, latency_warmup=10, local_per_receiver=20, fanout_sends=5,
            cross_messages=500, sync_calls=100, remote_per_channel=50, remote_group_sends=10,
            shard_messages=500, shard_group_sends=50, stall=6.0, limit=20.0,
        )  # fmt: skip

    def describe(self) -> str:
        return (
            f"latency {self.latency_rounds} round trips; process-local {self.local_receivers} receivers x "
            f"{self.local_per_receiver}; fan-out {self.fanout_members} members x {self.fanout_sends} "
            f"group_sends; cross-process {self.cross_messages}; sync {self.sync_calls} calls each; "
            f"from another process {self.remote_channels} process-local channels x "
            f"{self.remote_per_channel} and {self.remote_group_sends} group_sends; shards "
            f"{self.shard_messages} messages and {self.shard_group_sends} group_sends to "
            f"{self.shard_members} members; timeout after "
            f"{self.stall:g} s without progress or {self.limit:g} s in all"
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
        self.beats += 1


@dataclass
class Context:
    layer_name: str
    services: Services
    counts: Counts
    progress: Progress
    layer: Any = None  # None for workloads that make their layers in worker processes
    prefix: str = ""  # the layer's; a worker process makes its own instance on it
    # Another instance of the layer on the same prefix, as a second app server would have.
    make_peer: Callable[[], Any] | None = None


@dataclass
class Outcome:
    metrics: dict[str, float]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    lower_is_better: bool = False


@dataclass(frozen=True)
class Workload:
    name: str
    run: Callable[[Context], Awaitable[Outcome]]
    metrics: tuple[Metric, ...]
    in_process: bool = True  # False: the workload makes no layer here, only in worker processes
    # Features (layers.NORMAL, LOOPS, SHARED, GROUPS) a layer must have; without one, "n/a".
    needs: tuple[str, ...] = ()

    def missing(self, spec: LayerSpec) -> list[str]:
        """Why ``spec`` cannot run this workload: the reasons for the features it lacks."""
        needed = {*self.needs, *(() if self.in_process else (SHARED,))}
        return [reason for feature, reason in spec.lacks.items() if feature in needed]


class WorkloadError(Exception):
    """The layer did something wrong (wrong message, a worker failed); the text says what."""


def token() -> str:
    return secrets.token_hex(4)


def fresh_prefix() -> str:
    return f"bench{secrets.token_hex(6)}"


# -- receivers, shared by the workloads that count deliveries ----------------------------------


@dataclass
class Tally:
    """Distinct messages that arrived on one channel, duplicates, and misordered ones.

    Each message carries a number unique on its channel, sent in increasing order by one
    sender: a repeated number is a duplicate delivery, a smaller one misordered.
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
        self.misordered += n < self.last
        self.last = n
        return True

    @property
    def received(self) -> int:
        return len(self.seen)


def tally_notes(tallies: Sequence[Tally]) -> list[str]:
    duplicates = sum(t.duplicates for t in tallies)
    misordered = sum(t.misordered for t in tallies)
    notes = [f"{duplicates} messages were delivered more than once (duplicates not counted)"] * bool(
        duplicates
    )
    if misordered:
        notes.append(f"{misordered} messages arrived out of the order their sender sent them in")
    return notes


class Receiver:
    """Receives on one channel until ``expected`` distinct messages arrived; warm-ups mark it ready."""

    def __init__(self, ctx: Context, channel: str, expected: int) -> None:
        self.ctx, self.channel, self.expected = ctx, channel, expected
        self.ready = asyncio.Event()
        self.tally = Tally()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while self.tally.received < self.expected:
            # Unbounded, as a Channels consumer receives: the runner's stall limit cancels the
            # workload and so these tasks, and a wait_for here would add a task per message,
            # a fifth or more of a fan-out figure at tens of thousands of deliveries a second.
            got = await self.ctx.layer.receive(self.channel)
            if got.get("type") == WARMUP:
                self.ready.set()
            elif self.tally.add(got["n"]):
                self.ctx.progress.tick()


@asynccontextmanager
async def receiving(ctx: Context, receivers: Sequence[Receiver]) -> AsyncIterator[None]:
    """Run every receiver as a task, warmed up; cancel whatever still runs on the way out.

    Warm-up: each receiver must get a message before the clock starts, so connection setup
    stays out of the figures. channels_postgres drops a message sent to a channel before the
    first receive on it took its advisory lock, so warm-ups are resent until each has one.
    """
    for r in receivers:
        r.task = asyncio.create_task(r.run(), name=f"bench receiver {r.channel}")
    tasks = [r.task for r in receivers if r.task is not None]
    try:
        deadline = time.monotonic() + ctx.counts.stall
        pending = list(receivers)
        await asyncio.sleep(0.1)  # let every receiver reach its first receive
        while pending:
            for r in pending:
                await asyncio.wait_for(ctx.layer.send(r.channel, {"type": WARMUP}), ctx.counts.stall)
                ctx.progress.beat()
            resend_at = time.monotonic() + 1.0
            while time.monotonic() < resend_at and not all(r.ready.is_set() for r in pending):
                for task in tasks:
                    if task.done() and not task.cancelled() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                await asyncio.sleep(0.01)
            pending = [r for r in pending if not r.ready.is_set()]
            if pending and time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(pending)} of {len(receivers)} receivers never got a warm-up message"
                )
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=5)  # bounded: a receive may ignore cancellation


async def all_received(ctx: Context, receivers: Sequence[Receiver]) -> None:
    await asyncio.wait_for(asyncio.gather(*(r.task for r in receivers if r.task)), ctx.counts.limit)


async def with_peer(ctx: Context, run: Callable[[Any], Awaitable[Outcome]]) -> Outcome:
    """Run ``run(peer)`` with a second instance of the layer on the same prefix."""
    if ctx.make_peer is None:
        raise WorkloadError("this workload needs a second instance of the layer")
    peer = ctx.make_peer()
    try:
        return await run(peer)
    finally:
        # channels_postgres' instances share one module-level pool, which the teardown of the
        # workload's own layer resets: closing the peer here would pull it from under that one.
        if ctx.layer_name != CHANNELS_POSTGRES:
            await close_layer(ctx.layer_name, peer, ctx.counts.stall)


# -- running one workload against one layer -----------------------------------------------------


class Stalled(Exception):
    """No progress for ``counts.stall`` seconds, or past ``counts.limit`` in all."""


async def _supervise(run: Awaitable[Outcome], progress: Progress, counts: Counts) -> Outcome:
    task = asyncio.ensure_future(run)
    started = last_change = time.monotonic()
    last_beats = progress.beats
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.25)
        if done:
            return task.result()
        now = time.monotonic()
        if progress.beats != last_beats:
            last_beats, last_change = progress.beats, now
        if now - last_change > counts.stall or now - started > counts.limit:
            task.cancel()
            await asyncio.wait({task}, timeout=5)  # cancelling a stuck layer may itself hang
            raise Stalled()


async def run_cell(
    workload: Workload, spec: LayerSpec, services: Services, counts: Counts
) -> tuple[Outcome | None, str | None, list[str]]:
    """Run one workload on one fresh layer: (outcome, failure text, notes for after the table)."""
    progress = Progress()
    ctx = Context(spec.name, services, counts, progress)
    notes: list[str] = []
    tasks_before, threads_before = asyncio.all_tasks(), set(threading.enumerate())
    outcome: Outcome | None = None
    failure: str | None = None
    with Complaints() as complaints:
        try:
            if workload.in_process:
                prefix = ctx.prefix = fresh_prefix()
                ctx.layer = spec.make(services, prefix)
                ctx.make_peer = lambda: spec.make(services, prefix)
            outcome = await _supervise(workload.run(ctx), progress, counts)
        except (Stalled, TimeoutError) as exc:
            failure = f"timeout {progress.done}/{progress.total}" if progress.total else "timeout"
            notes.append(f"{failure} ({str(exc) or 'no progress'}; stall limit {counts.stall:g} s)")
        except Exception as exc:
            text = f"{type(exc).__name__}: {first_line(exc)}"
            failure = text if len(text) <= 34 else text[:33] + "…"
            notes.append(text)
        if ctx.layer is not None:
            notes.extend(await _teardown(spec, ctx.layer, counts, tasks_before, threads_before))
    notes.extend(complaints.summary())
    return outcome, failure, [f"{spec.name}, {workload.name}: {note}" for note in notes]


# Threads that appear during a workload without belonging to the layer: our sync callers and
# loop threads, the loop's default executor, and asgiref's per-call loop threads.
_NOT_THE_LAYERS = ("bench ", "asyncio_", "ThreadPoolExecutor-")


async def _teardown(
    spec: LayerSpec, layer: Any, counts: Counts, tasks_before: set[Any], threads_before: set[threading.Thread]
) -> list[str]:
    """Flush and close the layer; report (and cancel) what it left running after that."""
    notes = []
    steps = [("close", lambda: close_layer(spec.name, layer, counts.stall))]
    # Only where the layer claims the extension: channels_rabbitmq's flush() raises
    # NotImplementedError, and channels-nats' clears this instance only, as close() does.
    if "flush" in getattr(layer, "extensions", ()):
        steps.insert(0, ("flush", layer.flush))
    for step, action in steps:
        try:
            await asyncio.wait_for(action(), counts.stall)
        except TimeoutError:
            notes.append(f"{step}() did not finish within {counts.stall:g} s")
        except Exception as exc:
            notes.append(f"{step}() failed: {type(exc).__name__}: {first_line(exc)}")
        except asyncio.CancelledError:
            if cancelling():  # a layer may leak the cancellation of its own task out of close()
                raise
            notes.append(f"{step}() raised CancelledError without being cancelled")
    await asyncio.sleep(0.05)  # let tasks that close() cancelled finish unwinding
    current = asyncio.current_task()
    leftovers = [t for t in asyncio.all_tasks() - tasks_before if t is not current and not t.done()]
    if leftovers:
        kinds = Counter(getattr(t.get_coro(), "__qualname__", "?") for t in leftovers)
        notes.append(
            f"{len(leftovers)} task(s) still running after close(), cancelled by the benchmark: "
            + ", ".join(f"{n} x {kind}" for kind, n in sorted(kinds.items()))
        )
        for task in leftovers:
            task.cancel()
        await asyncio.wait(leftovers, timeout=5)
    threads = [
        t.name
        for t in set(threading.enumerate()) - threads_before
        if t.is_alive() and not t.name.startswith(_NOT_THE_LAYERS)
    ]
    if threads:
        notes.append("thread(s) still alive after close(): " + ", ".join(sorted(threads)))
    return notes


class Complaints(logging.Handler):
    """Collects WARNING and above, Python warnings, and background task errors, per cell.

    They would otherwise scroll past on stderr mid-run; collected, they show in the notes
    under the table next to the layer and workload that caused them.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.seen: Counter[str] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Any = None

    def emit(self, record: logging.LogRecord) -> None:
        self.seen[f"logged {record.levelname} [{record.name}] {record.getMessage().strip()[:200]}"] += 1

    def _on_loop_error(self, _loop: Any, context: dict[str, Any]) -> None:
        error = context.get("exception")
        message = str(context.get("message", "")).strip()
        self.seen[
            f"background error: {message}: {type(error).__name__}: {first_line(error)}" if error else message
        ] += 1

    def __enter__(self) -> Complaints:
        logging.getLogger().addHandler(self)
        self._loop = asyncio.get_running_loop()
        self._previous = self._loop.get_exception_handler()
        self._loop.set_exception_handler(self._on_loop_error)
        return self

    def __exit__(self, *_exc: object) -> None:
        # Unretrieved task exceptions are reported when the task is collected: collect now, so
        # they are charged to the cell that caused them.
        gc.collect()
        if self._loop is not None:
            self._loop.set_exception_handler(self._previous)
        logging.getLogger().removeHandler(self)

    def summary(self) -> list[str]:
        return [f"{count} x {text}" if count > 1 else text for text, count in self.seen.items()]


# -- the whole comparison -------------------------------------------------------------------------


@dataclass
class Cell:
    value: float | None = None
    failure: str | None = None

    def text(self, metric: Metric) -> str:
        if self.value is None:
            return self.failure or "-"
        return f"{self.value:,.2f}" if metric.unit == "ms" else f"{self.value:,.0f}"


async def compare(
    workloads: Sequence[Workload], names: Sequence[str], services: Services, counts: Counts
) -> tuple[str, list[str]]:
    """Run every workload on every available layer: (the table, notes for under it)."""
    specs, notes = [], []
    for name in names:
        spec = SPECS[name]
        reason = await spec.unavailable(services)
        if reason is None:
            specs.append(spec)
            # Constructors open nothing, so a layer made just to be described needs no close.
            print(f"layer {name}: {spec.describe(spec.make(services, fresh_prefix()))}")
        else:
            notes.append(f"skipping {name}: {reason}")
            print(f"skipping {name}: {reason}", flush=True)
    results: dict[str, dict[str, Cell]] = {m.key: {} for w in workloads for m in w.metrics}
    unable: dict[tuple[str, str], list[str]] = {}  # (layer, reason) -> workloads shown as n/a
    for workload in workloads:
        for spec in specs:
            if missing := workload.missing(spec):
                for metric in workload.metrics:
                    results[metric.key][spec.name] = Cell(failure="n/a")
                for reason in missing:
                    unable.setdefault((spec.name, reason), []).append(workload.name)
                continue
            started = time.monotonic()
            outcome, failure, cell_notes = await run_cell(workload, spec, services, counts)
            notes.extend(cell_notes)
            if outcome is not None:
                notes.extend(f"{spec.name}, {workload.name}: {note}" for note in outcome.notes)
            for metric in workload.metrics:
                value = outcome.metrics.get(metric.key) if outcome else None
                results[metric.key][spec.name] = Cell(value, failure)
            shown = ", ".join(
                f"{m.label} {results[m.key][spec.name].text(m)}{'' if failure else ' ' + m.unit}"
                for m in workload.metrics
            )
            print(
                f"  [{workload.name}] {spec.name}: {shown}  ({time.monotonic() - started:.1f} s)", flush=True
            )
    notes[:0] = [
        f"{layer}: n/a for {', '.join(map(repr, names))}: {why}" for (layer, why), names in unable.items()
    ]
    layers = [spec.name for spec in specs]
    others = [layer for layer in layers if layer != OURS] if OURS in layers else []
    rows, ratios = [], []
    for metric in (m for w in workloads for m in w.metrics):
        cells = results[metric.key]
        direction = "lower is better" if metric.lower_is_better else "higher is better"
        label = f"{metric.label} ({metric.unit}, {direction})"
        rows.append([label, *(cells.get(layer, Cell()).text(metric) for layer in layers)])
        ours = cells.get(OURS, Cell()).value
        ratio = [label]
        for other in others:
            theirs = cells.get(other, Cell()).value
            ratio.append(f"{ours / theirs:.2f}x" if ours is not None and theirs else "-")
        ratios.append(ratio)
    table = render(["workload", *layers], rows)
    if others:
        table += "\n\nours / peer (the figure of ours divided by the peer's; read with the row's direction)\n"
        table += render(["workload", *(f"vs {o}" for o in others)], ratios)
    return table, notes
