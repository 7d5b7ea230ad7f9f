"""Benchmark channel_layer_pg side by side with channels_redis, channels_postgres and in-memory.

    python benchmarks/bench.py [--url URL] [--redis URL] [--only ours,redis,...] [--quick] [--vacuum]

Each workload runs against every selected layer in turn, with a fresh layer each time. A layer
whose package or service is missing is skipped with a note; a workload that errors or stalls
shows the error or "timeout" in its cell, and the run goes on. The table comes last.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import shlex
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

# Run as a script, this directory is on sys.path already; run any other way, it may not be.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_env import environment
from bench_floors import floors
from bench_layers import (
    CHANNELS_POSTGRES,
    OURS,
    REDIS,
    SPECS,
    LayerSpec,
    Services,
    cancelling,
    close_layer,
)
from bench_workloads import (
    Context,
    Counts,
    Outcome,
    Progress,
    cross_process,
    fan_out,
    fan_out_from_peer,
    fresh_prefix,
    latency,
    process_local,
    process_local_from_peer,
    receive_worker,
    send_worker,
    sync_group_send,
    sync_send,
)

SCRIPT = os.path.abspath(__file__)  # the cross-process workload starts it again as its workers
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/bench"
DEFAULT_REDIS = "redis://127.0.0.1:6379"


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
    in_process: bool = True  # False: the workload starts its own worker processes
    shared_state: bool = False  # needs two instances that share messages (not the in-memory layer)


WORKLOADS = (
    Workload(
        "latency",
        latency,
        (
            Metric("latency_p50", "latency p50", "ms", lower_is_better=True),
            Metric("latency_p99", "latency p99", "ms", lower_is_better=True),
        ),
    ),
    Workload("process-local", process_local, (Metric("local", "process-local throughput", "msg/s"),)),
    Workload(
        "process-local, another instance sends",
        process_local_from_peer,
        (Metric("local_peer", "process-local, sent by another instance", "msg/s"),),
        shared_state=True,
    ),
    Workload("fan-out", fan_out, (Metric("fanout", "group fan-out", "deliveries/s"),)),
    Workload(
        "fan-out, another instance sends",
        fan_out_from_peer,
        (Metric("fanout_peer", "group fan-out, sent by another instance", "deliveries/s"),),
        shared_state=True,
    ),
    Workload(
        "cross-process",
        cross_process,
        (Metric("cross", "cross-process throughput", "msg/s"),),
        in_process=False,
    ),
    Workload("sync group_send", sync_group_send, (Metric("sync_group_send", "sync group_send", "calls/s"),)),
    Workload("sync send", sync_send, (Metric("sync_send", "sync send", "calls/s"),)),
)
METRICS = tuple(metric for workload in WORKLOADS for metric in workload.metrics)


@dataclass
class Cell:
    """One layer's result for one metric: a number, or why there is none."""

    value: float | None = None
    failure: str | None = None

    def text(self, metric: Metric) -> str:
        if self.value is None:
            return self.failure or "-"
        return f"{self.value:,.2f}" if metric.unit == "ms" else f"{self.value:,.0f}"


Results = dict[str, dict[str, Cell]]  # metric key -> layer name -> cell


# -- running one workload against one layer ---------------------------------------------------


class Stalled(Exception):
    """The workload made no progress for ``counts.stall`` seconds, or ran past ``counts.limit``."""


async def supervise(run: Awaitable[Outcome], progress: Progress, counts: Counts) -> Outcome:
    """Await ``run``, giving up if it stops making progress or exceeds the workload limit."""
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
            # Bounded: cancelling a stuck layer's operation may itself hang.
            await asyncio.wait({task}, timeout=5)
            raise Stalled()


async def run_cell(
    workload: Workload, spec: LayerSpec, services: Services, counts: Counts
) -> tuple[Outcome | None, str | None, list[str]]:
    """Run one workload on one fresh layer: (outcome, failure text, notes for after the table)."""
    progress = Progress()
    ctx = Context(spec.name, services, counts, progress, script=SCRIPT)
    notes: list[str] = []
    tasks_before = asyncio.all_tasks()
    threads_before = set(threading.enumerate())
    outcome: Outcome | None = None
    failure: str | None = None
    with Complaints() as complaints:
        try:
            if workload.in_process:
                prefix = fresh_prefix()
                ctx.layer = spec.make(services, prefix)
                ctx.make_peer = lambda: spec.make(services, prefix)
            outcome = await supervise(workload.run(ctx), progress, counts)
        except (Stalled, TimeoutError, asyncio.TimeoutError) as exc:
            failure = f"timeout {progress.done}/{progress.total}" if progress.total else "timeout"
            notes.append(f"{failure} ({str(exc) or 'no progress'}; stall limit {counts.stall:g} s)")
        except Exception as exc:
            failure = short(exc)
            notes.append(f"{type(exc).__name__}: {one_line(exc)}")
        if ctx.layer is not None:
            notes.extend(await teardown(spec, ctx.layer, counts, tasks_before, threads_before))
    notes.extend(complaints.summary())
    return outcome, failure, [f"{spec.name}, {workload.name}: {note}" for note in notes]


async def teardown(
    spec: LayerSpec,
    layer: Any,
    counts: Counts,
    tasks_before: set[asyncio.Task[Any]],
    threads_before: set[threading.Thread],
) -> list[str]:
    """Flush and close the layer; report (and cancel) what it left running after that."""
    notes = []
    for step, action in (
        ("flush", layer.flush),
        ("close", lambda: close_layer(spec.name, layer, counts.stall)),
    ):
        try:
            await asyncio.wait_for(action(), counts.stall)
        except (TimeoutError, asyncio.TimeoutError):
            notes.append(f"{step}() did not finish within {counts.stall:g} s")
        except Exception as exc:
            notes.append(f"{step}() failed: {type(exc).__name__}: {one_line(exc)}")
        except asyncio.CancelledError:
            # A layer may leak the cancellation of one of its own tasks out of close().
            if cancelling():
                raise
            notes.append(f"{step}() raised CancelledError without being cancelled")
    await asyncio.sleep(0.05)  # let tasks that close() cancelled finish unwinding
    current = asyncio.current_task()
    leftovers = [t for t in asyncio.all_tasks() - tasks_before if t is not current and not t.done()]
    if leftovers:
        kinds = Counter(_task_kind(task) for task in leftovers)
        notes.append(
            f"{len(leftovers)} task(s) still running after close(), cancelled by the benchmark: "
            + ", ".join(f"{n} x {kind}" for kind, n in sorted(kinds.items()))
        )
        for task in leftovers:
            task.cancel()
        await asyncio.wait(leftovers, timeout=5)
    threads = [
        t
        for t in set(threading.enumerate()) - threads_before
        if t.is_alive() and not t.name.startswith(_NOT_THE_LAYERS)
    ]
    if threads:
        notes.append("thread(s) still alive after close(): " + ", ".join(sorted(t.name for t in threads)))
    return notes


class Complaints(logging.Handler):
    """Collects what gets logged at WARNING or above, Python warnings, and background task errors.

    They would otherwise scroll past on stderr mid-run; collected per cell, they show in the
    notes under the table next to the layer and workload that caused them.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.seen: Counter[str] = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: Any = None

    def emit(self, record: logging.LogRecord) -> None:
        self.seen[f"logged {record.levelname} [{record.name}] {_first_line(record.getMessage())}"] += 1

    def _on_loop_error(self, _loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = _first_line(str(context.get("message", "")))
        error = context.get("exception")
        self.seen[
            f"background error: {message}: {type(error).__name__}: {one_line(error)}" if error else message
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


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


# Threads that appear during a workload without belonging to the layer: our sync caller, the
# event loop's default executor (asyncio.to_thread), and asgiref's per-call loop threads, which
# end once their executor is garbage-collected.
_NOT_THE_LAYERS = ("bench ", "asyncio_", "ThreadPoolExecutor-")


def _task_kind(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    return getattr(coro, "__qualname__", None) or type(coro).__name__


def short(exc: BaseException, width: int = 34) -> str:
    text = f"{type(exc).__name__}: {one_line(exc)}"
    return text if len(text) <= width else text[: width - 1] + "…"


def one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# -- the whole run ----------------------------------------------------------------------------


async def available_layers(names: list[str], services: Services) -> tuple[list[LayerSpec], list[str]]:
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
    return specs, notes


async def run_all(
    names: list[str], services: Services, counts: Counts
) -> tuple[list[str], Results, list[str]]:
    specs, notes = await available_layers(names, services)
    results: Results = {metric.key: {} for metric in METRICS}
    for workload in WORKLOADS:
        for spec in specs:
            if (not workload.in_process or workload.shared_state) and not spec.cross_process:
                for metric in workload.metrics:
                    results[metric.key][spec.name] = Cell(failure="n/a")
                continue
            started = time.monotonic()
            outcome, failure, cell_notes = await run_cell(workload, spec, services, counts)
            notes.extend(cell_notes)
            for metric in workload.metrics:
                value = outcome.metrics.get(metric.key) if outcome else None
                results[metric.key][spec.name] = Cell(value, failure)
            if outcome is not None:
                notes.extend(f"{spec.name}, {workload.name}: {note}" for note in outcome.notes)
            shown = ", ".join(
                f"{m.label} {results[m.key][spec.name].text(m)}{' ' + m.unit if failure is None else ''}"
                for m in workload.metrics
            )
            print(
                f"  [{workload.name}] {spec.name}: {shown}  ({time.monotonic() - started:.1f} s)", flush=True
            )
    return [spec.name for spec in specs], results, notes


# -- output -----------------------------------------------------------------------------------


def ratio(results: Results, metric: Metric, other: str) -> str:
    ours, theirs = results[metric.key].get(OURS), results[metric.key].get(other)
    if ours is None or theirs is None or ours.value is None or not theirs.value:
        return "-"
    return f"{ours.value / theirs.value:.2f}x"


def table(layers: list[str], results: Results) -> str:
    ratio_columns = [
        (other, f"ours vs {other}")
        for other in (REDIS, CHANNELS_POSTGRES)
        if other in layers and OURS in layers
    ]
    header = ["workload", *layers, *(title for _, title in ratio_columns)]
    rows = [header]
    for metric in METRICS:
        direction = "lower is better" if metric.lower_is_better else "higher is better"
        row = [f"{metric.label} ({metric.unit}, {direction})"]
        row += [results[metric.key].get(layer, Cell()).text(metric) for layer in layers]
        row += [ratio(results, metric, other) for other, _ in ratio_columns]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [
            cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)
        ]
        return " | ".join(cells)

    rule = "-+-".join("-" * width for width in widths)
    return "\n".join([line(rows[0]), rule, *(line(row) for row in rows[1:])])


def describe_counts(counts: Counts) -> str:
    return (
        f"latency {counts.latency_rounds} round trips; process-local {counts.local_receivers} receivers x "
        f"{counts.local_per_receiver}; fan-out {counts.fanout_members} members x {counts.fanout_sends} "
        "group_sends; "
        f"cross-process {counts.cross_messages}; sync {counts.sync_calls} calls each; "
        f"timeout after {counts.stall:g} s without progress or {counts.limit:g} s in all"
    )


async def main_async(args: argparse.Namespace) -> int:
    services = Services(args.url, args.redis)
    counts = Counts.quick() if args.quick else Counts.default()
    print(f"command: {shlex.join(sys.orig_argv)}", flush=True)
    # Before environment(), whose --vacuum then clears the dead rows the floors leave behind.
    try:
        floor_lines = await floors(services.pg_url)
    except Exception as exc:
        floor_lines = [f"floors: not measured ({type(exc).__name__}: {one_line(exc)})"]
    for line in await environment(services, vacuum=args.vacuum):
        print(line)
    print(f"counts: {describe_counts(counts)}")
    for line in floor_lines:
        print(line, flush=True)
    started = time.monotonic()
    layers, results, notes = await run_all(args.only, services, counts)
    print()
    print(table(layers, results))
    if notes:
        print("\nnotes:")
        for note in notes:
            print(f"  - {note}")
    print(f"\ntotal time: {time.monotonic() - started:.1f} s", flush=True)
    return 0


# -- worker processes for the cross-process workload ------------------------------------------


async def worker_async(args: argparse.Namespace) -> int:
    spec = SPECS[args.layer]
    layer = spec.make(Services(args.url, args.redis), args.prefix)
    try:
        if args.worker == "receive":
            report = await receive_worker(layer, args.channel, args.count, args.stall)
        else:
            report = await send_worker(layer, args.channel, args.count, args.stall)
    except Exception as exc:
        report = {"error": f"{type(exc).__name__}: {one_line(exc)}"}
    try:
        # The receiver cleans up the shared prefix; the sender must not: its messages may
        # still be unread.
        if args.worker == "receive":
            await asyncio.wait_for(layer.flush(), args.stall)
        await close_layer(spec.name, layer, args.stall)
    except Exception as exc:
        report.setdefault("teardown_error", f"{type(exc).__name__}: {one_line(exc)}")
    print(f"result {json.dumps(report)}", flush=True)
    return 0


# -- command line -----------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("CHANNEL_LAYER_PG_URL", DEFAULT_URL),
        help="PostgreSQL for ours and channels_postgres (default: $CHANNEL_LAYER_PG_URL or %(default)s)",
    )
    parser.add_argument(
        "--redis", default=DEFAULT_REDIS, help="Redis for channels_redis (default: %(default)s)"
    )
    parser.add_argument(
        "--only",
        type=_layer_names,
        default=list(SPECS),
        help=f"comma-separated layers to run (default: {','.join(SPECS)})",
    )
    parser.add_argument("--quick", action="store_true", help="smaller counts: under a minute")
    parser.add_argument(
        "--vacuum",
        action="store_true",
        help="VACUUM ANALYZE channel_layer_pg's tables first (their dead rows slow it down, and "
        "a server with autovacuum off never removes them)",
    )
    # The cross-process workload runs this script again as its sender and receiver.
    parser.add_argument("--worker", choices=("receive", "send"), help=argparse.SUPPRESS)
    parser.add_argument("--layer", choices=list(SPECS), help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--channel", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--stall", type=float, default=10.0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _layer_names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in SPECS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown layer(s) {', '.join(unknown) or text!r}; choose from {', '.join(SPECS)}"
        )
    return names


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # Python warnings (SQLAlchemy's, for one) go through logging, so Complaints sees them too.
    logging.captureWarnings(True)
    if args.worker:
        # A worker's stderr is the benchmark's: what its layer logs shows up there.
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s [%(name)s] %(message)s")
    else:
        # Not printed mid-run: Complaints collects it per cell for the notes under the table.
        logging.getLogger().addHandler(logging.NullHandler())
    code = asyncio.run(worker_async(args) if args.worker else main_async(args))
    sys.stdout.flush()
    sys.stderr.flush()
    stuck = [t for t in threading.enumerate() if t is not threading.main_thread() and t.is_alive()]
    if stuck:
        # A layer call that never returned (a "timeout" cell) leaves its thread blocked, and
        # interpreter shutdown would wait for it forever: concurrent.futures joins even the
        # daemon worker threads that async_to_sync runs its loops in.
        print(
            f"exiting without waiting for stuck threads: {', '.join(t.name for t in stuck)}", file=sys.stderr
        )
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
