"""Soak test: several processes send, receive and group_send through the layer for a while.

    python benchmarks/soak.py [--url URL] [--processes 4] [--duration 60] [--rate 100]

Each worker process (this script again, in worker mode) has its own layer under one fresh
prefix and, for ``--duration`` seconds, sends about ``--rate`` messages a second:

- jobs to ``soak.work``, a normal channel every worker receives from (a work queue: each job
  must be received exactly once, by any worker);
- direct messages to the other workers' process-local channels (each exactly once, in order
  per sender and receiver);
- ``group_send`` to ``soak.room``, which every worker's process-local channel joined (each
  member gets each exactly once, in order per sender);
- a trickle to ``soak.nobody``, which nobody reads, through a second layer with a short
  expiry: the table stays bounded only if expired rows are cleaned up.

Receive loops run all along, and a fraction of receives is cancelled by a short timeout, as
when consumers stop in a Channels application. Once every sender has stopped, the receivers
drain until nothing has arrived for a few seconds. Meanwhile this process prints, every few
seconds, the layer's server connections, this run's message rows, the table's size and each
worker's RSS; at the end it counts what was sent, received, lost, duplicated and reordered.
Columns: work/local/nobody are this run's rows in soak.work, in process-local queues and in
soak.nobody; expired, those of them past their expiry (cleanup removes them every 30 s); dead
and table MB are for the whole message table (dead rows stay until VACUUM). busy is how much of
the machine's CPU was in use since the previous sample; pg and apps, how many cores the
layer's PostgreSQL sessions and the workers used: where a run falls behind, they say whether
the database, the app processes or the machine ran out (pg only with PostgreSQL on this
machine).

Exit status 0 if nothing was lost, duplicated or reordered and every worker finished, else 1.
Without --url a throwaway embedded PostgreSQL is started, migrated and always stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import secrets
import shlex
import signal
import sys
import tempfile
import time
from array import array
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

import channel_layer_pg
from channel_layer_pg import PostgresChannelLayer, migrate
from channel_layer_pg.embedded import embedded_postgres

SCRIPT = os.path.abspath(__file__)  # started again as each worker
URL_ENV = "SOAK_URL"  # the URL reaches workers in their environment: argv would show a password in ps

WORK = "soak.work"
GROUP = "soak.room"
NOBODY = "soak.nobody"
KINDS = ("work", "direct", "group")  # the kinds whose deliveries are checked; nobody's expire
ALL_KINDS = (*KINDS, "nobody")
# One round of sends, repeated: mostly jobs and direct messages, one group_send (a delivery to
# every worker) and one message that nobody reads.
ROUND = ("work", "direct") * 9 + ("group", "nobody")
FILLER = "x" * 64  # about the size of a small chat message

# On the 2-core machine this was written on, shared with other work, 4 workers asked for 200 or
# 400 sends a second each managed only 140 to 215 (PostgreSQL, the workers and the other work
# share the cores); 100 leaves a margin, so that a backlog in the time series points at the
# layer rather than at the machine.
DEFAULT_RATE = 100.0
CAPACITY = 10_000  # high: the soak looks for losses, not ChannelFull
EXPIRY = 20.0  # long enough that a healthy layer never expires a message under this load
NOBODY_EXPIRY = 5.0
# A consumer that stops cancels its pending receive(); this many receives are cancelled
# after a random few milliseconds, often just as a message is on its way to them.
CANCEL_FRACTION = 0.2
CANCEL_AFTER = (0.001, 0.05)
RECEIVE_TIMEOUT = 1.0  # an idle receive is cancelled too, so a loop checks for the end this often
DRAIN_QUIET = 3.0  # the drain ends once a loop has received nothing for this long...
DRAIN_LIMIT = 30.0  # ...or after this long in any case
SAMPLE_INTERVAL = 5.0
PROGRESS_INTERVAL = 1.0
STARTUP_TIMEOUT = 120.0  # interpreters starting on a busy 2-core machine
EXIT_TIMEOUT = 30.0
CLEANUP_TIMEOUT = 30.0


def describe(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


# == worker side ===============================================================================


class ParentGone(Exception):
    """The parent stopped talking to this worker (it exited, or a command never came)."""


@dataclass
class SendLog:
    # Arrays of machine integers, not lists of objects: the worker's own bookkeeping would
    # otherwise add megabytes a minute to its RSS and hide a leak in the layer.
    seqs: dict[str, array[int]] = field(default_factory=lambda: {kind: array("q") for kind in ALL_KINDS})
    direct_to: array[int] = field(default_factory=lambda: array("q"))  # each direct message's receiver
    errors: Counter[str] = field(default_factory=Counter)
    fell_behind: int = 0  # times the sender was over a second behind its schedule
    seconds: float = 0.0

    def record(self, kind: str, seq: int, receiver: int | None) -> None:
        self.seqs[kind].append(seq)
        if receiver is not None:
            self.direct_to.append(receiver)

    def total(self) -> int:
        return sum(len(seqs) for seqs in self.seqs.values())

    def sent(self) -> dict[str, list[Any]]:
        """kind -> what was sent, in order: a seq, or for direct messages [seq, receiver]."""
        sent: dict[str, list[Any]] = {kind: seqs.tolist() for kind, seqs in self.seqs.items()}
        sent["direct"] = [list(pair) for pair in zip(self.seqs["direct"], self.direct_to, strict=True)]
        return sent


@dataclass
class ReceiveLog:
    # What arrived, in order, as three parallel arrays (see SendLog on why arrays).
    senders: array[int] = field(default_factory=lambda: array("q"))
    kinds: array[int] = field(default_factory=lambda: array("b"))  # index into ALL_KINDS, -1 if unknown
    seqs: array[int] = field(default_factory=lambda: array("q"))
    cancelled: int = 0  # receives cancelled by the short random timeout
    idle: int = 0  # receives cancelled after RECEIVE_TIMEOUT with nothing to deliver
    errors: Counter[str] = field(default_factory=Counter)
    drain_cut_short: bool = False

    def record(self, message: dict[str, Any]) -> None:
        kind = message.get("kind")
        self.senders.append(int(message.get("sender", -1)))
        self.kinds.append(ALL_KINDS.index(kind) if kind in ALL_KINDS else -1)
        self.seqs.append(int(message.get("seq", -1)))

    def count(self) -> int:
        return len(self.seqs)

    def summary(self) -> dict[str, Any]:
        kinds = [ALL_KINDS[code] if code >= 0 else "unknown" for code in self.kinds]
        return {
            "received": [list(record) for record in zip(self.senders, kinds, self.seqs, strict=True)],
            "cancelled": self.cancelled,
            "idle": self.idle,
            "errors": self.errors,
            "drain_cut_short": self.drain_cut_short,
        }


class Drain:
    """When receive loops may end: after the parent says every sender stopped, and quiet."""

    def __init__(self) -> None:
        self.started: float | None = None

    def begin(self) -> None:
        self.started = asyncio.get_running_loop().time()

    def over(self, last_arrival: float, log: ReceiveLog) -> bool:
        if self.started is None:
            return False
        now = asyncio.get_running_loop().time()
        if now - self.started >= DRAIN_LIMIT:
            log.drain_cut_short = True
            return True
        return now - max(last_arrival, self.started) >= DRAIN_QUIET


def emit(**event: Any) -> None:
    """One JSON line to the parent; stdout is the worker's channel to it, stderr its log."""
    print(json.dumps(event), flush=True)


async def send_loop(
    layer: PostgresChannelLayer,
    short_lived: PostgresChannelLayer,
    me: int,
    peers: Sequence[tuple[int, str]],
    rate: float,
    duration: float,
    log: SendLog,
) -> None:
    """Send ROUND over and over at ``rate`` a second until ``duration`` is up.

    One send at a time: each stream's order is then the order of the sender's awaits, which is
    what the receivers' order is checked against.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + duration
    next_at = started
    seqs: Counter[str] = Counter()
    step = 0
    while loop.time() < deadline:
        kind = ROUND[step % len(ROUND)]
        step += 1
        seqs[kind] += 1
        seq = seqs[kind]
        message = {"type": "soak.message", "sender": me, "kind": kind, "seq": seq, "text": FILLER}
        receiver: int | None = None
        try:
            if kind == "work":
                await layer.send(WORK, message)
            elif kind == "direct":
                receiver, channel = peers[seq % len(peers)]
                await layer.send(channel, message)
            elif kind == "group":
                await layer.group_send(GROUP, message)
            else:
                await short_lived.send(NOBODY, message)
        except Exception as exc:
            log.errors[f"{kind}: {describe(exc)}"] += 1
        else:
            log.record(kind, seq, receiver)
        next_at += 1.0 / rate
        delay = next_at - loop.time()
        if delay > 0:
            await asyncio.sleep(min(delay, max(deadline - loop.time(), 0.0)))
        elif delay < -1.0:
            # A burst to catch up would hide that the layer cannot keep up; the achieved rate
            # in the summary shows it instead.
            log.fell_behind += 1
            next_at = loop.time()
    log.seconds = loop.time() - started


async def receive_loop(
    layer: PostgresChannelLayer, channel: str, log: ReceiveLog, drain: Drain, rng: random.Random
) -> None:
    """Receive on ``channel`` one message at a time, recording arrivals, until the drain ends.

    One loop per channel per process, so the order in which this loop records messages is the
    order the layer delivered them to this process.
    """
    loop = asyncio.get_running_loop()
    last_arrival = loop.time()
    while not drain.over(last_arrival, log):
        cancel_soon = rng.random() < CANCEL_FRACTION
        timeout = rng.uniform(*CANCEL_AFTER) if cancel_soon else RECEIVE_TIMEOUT
        try:
            message = await asyncio.wait_for(layer.receive(channel), timeout)
        except asyncio.TimeoutError:
            if cancel_soon:
                log.cancelled += 1
            else:
                log.idle += 1
            continue
        except Exception as exc:
            log.errors[describe(exc)] += 1
            await asyncio.sleep(0.1)  # an outage must not turn into a busy loop
            continue
        log.record(message)
        last_arrival = loop.time()


async def report_progress(send_log: SendLog, receive_logs: Sequence[ReceiveLog]) -> None:
    while True:
        received = sum(log.count() for log in receive_logs)
        emit(event="progress", sent=send_log.total(), received=received)
        await asyncio.sleep(PROGRESS_INTERVAL)


async def open_control() -> asyncio.StreamReader:
    """The parent's commands arrive on stdin, one JSON line each."""
    reader = asyncio.StreamReader()
    protocol = asyncio.StreamReaderProtocol(reader)
    await asyncio.get_running_loop().connect_read_pipe(lambda: protocol, sys.stdin)
    return reader


async def expect(control: asyncio.StreamReader, command: str, timeout: float) -> dict[str, Any]:
    try:
        line = await asyncio.wait_for(control.readline(), timeout)
    except asyncio.TimeoutError:
        raise ParentGone(f"no {command!r} command from the parent within {timeout:g} s") from None
    if not line:
        raise ParentGone(f"the parent closed stdin before {command!r}")
    message: dict[str, Any] = json.loads(line)
    if message.get("command") != command:
        raise ParentGone(f"expected {command!r} from the parent, got {message!r}")
    return message


class CountingHandler(logging.Handler):
    """Counts log records by level, logger and message template, for the parent's summary."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[f"{record.levelname} {record.name}: {record.msg}"] += 1


class FirstFew(logging.Filter):
    """Lets each kind of record through a few times, then stays quiet about it.

    A failure that repeats on every receive would otherwise bury the time series; every
    record is still counted, and the summary shows the counts.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit
        self._seen: Counter[str] = Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        key = f"{record.name}: {record.msg}"
        self._seen[key] += 1
        if self._seen[key] == self._limit + 1:
            print(f"(further records like {key!r} are counted, not printed)", file=sys.stderr)
        return self._seen[key] <= self._limit


def write_json(path: str, data: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(data))


async def worker_main(args: argparse.Namespace, log_counts: CountingHandler) -> int:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is not None:
        # The parent stops a worker with SIGTERM; cancelling lets `async with` close the layers.
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    index: int = args.worker
    url = os.environ[URL_ENV]
    control = await open_control()
    common: dict[str, Any] = {"url": url, "prefix": args.prefix, "capacity": CAPACITY}
    send_log = SendLog()
    receive_logs = {"work": ReceiveLog(), "local": ReceiveLog()}
    async with (
        PostgresChannelLayer(**common, expiry=EXPIRY) as layer,
        PostgresChannelLayer(**common, expiry=NOBODY_EXPIRY) as short_lived,
    ):
        me = await layer.new_channel()
        await layer.group_add(GROUP, me)
        emit(event="ready", channel=me)
        start = await expect(control, "start", STARTUP_TIMEOUT)
        peers = [(int(peer), channel) for peer, channel in start["peers"]]
        drain = Drain()
        rng = random.Random()
        tasks = [
            asyncio.create_task(receive_loop(layer, WORK, receive_logs["work"], drain, rng)),
            asyncio.create_task(receive_loop(layer, me, receive_logs["local"], drain, rng)),
            asyncio.create_task(report_progress(send_log, list(receive_logs.values()))),
        ]
        try:
            await send_loop(layer, short_lived, index, peers, args.rate, args.duration, send_log)
            emit(event="sent")
            # Other workers may still be sending (their jobs can land here): wait for all.
            await expect(control, "drain", args.duration + STARTUP_TIMEOUT)
            drain.begin()
            await asyncio.gather(*tasks[:2])
        finally:
            for running in tasks:
                running.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    result = {
        "index": index,
        "channel": me,
        "sent": send_log.sent(),
        "send_errors": send_log.errors,
        "fell_behind": send_log.fell_behind,
        "send_seconds": send_log.seconds,
        "receive": {name: log.summary() for name, log in receive_logs.items()},
        "log": log_counts.counts,
    }
    write_json(args.result, result)
    emit(event="done")
    return 0


def run_worker(args: argparse.Namespace) -> int:
    log_counts = CountingHandler()
    logging.getLogger().addHandler(log_counts)
    # The layer's INFO records (cleanup, group_send skipping full members) are counted;
    # warnings and errors also go to stderr, which the parent's terminal shows.
    logging.getLogger("channel_layer_pg").setLevel(logging.INFO)
    printer = logging.StreamHandler(sys.stderr)
    printer.setLevel(logging.WARNING)
    printer.addFilter(FirstFew(3))
    printer.setFormatter(logging.Formatter(f"worker {args.worker}: %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(printer)
    logging.captureWarnings(True)
    try:
        return asyncio.run(worker_main(args, log_counts))
    except ParentGone as exc:
        print(f"worker {args.worker}: stopping: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 130


# == parent side: workers =======================================================================


class WorkerFailed(Exception):
    """A worker exited early, or did not reach a step of the run in time."""


@dataclass
class Worker:
    index: int
    process: asyncio.subprocess.Process
    result_path: Path
    channel: str = ""
    sent: int = 0  # the latest progress report
    received: int = 0
    reached: dict[str, asyncio.Event] = field(
        default_factory=lambda: {step: asyncio.Event() for step in ("ready", "sent", "done")}
    )
    follower: asyncio.Task[None] | None = None


async def start_worker(
    index: int, args: argparse.Namespace, url: str, prefix: str, directory: Path
) -> Worker:
    result_path = directory / f"worker-{index}.json"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        SCRIPT,
        "--worker",
        str(index),
        "--prefix",
        prefix,
        "--rate",
        str(args.rate),
        "--duration",
        str(args.duration),
        "--result",
        str(result_path),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, URL_ENV: url},
    )
    worker = Worker(index, process, result_path)
    worker.follower = asyncio.create_task(follow(worker))
    return worker


async def follow(worker: Worker) -> None:
    """Read a worker's event lines until its stdout closes."""
    stdout = worker.process.stdout
    if stdout is None:
        raise RuntimeError("worker started without a stdout pipe")
    async for line in stdout:
        try:
            event = json.loads(line)
        except ValueError:
            print(f"worker {worker.index}: {line.decode(errors='replace').rstrip()}", file=sys.stderr)
            continue
        if event["event"] == "progress":
            worker.sent, worker.received = event["sent"], event["received"]
        elif event["event"] == "ready":
            worker.channel = event["channel"]
        if event["event"] in worker.reached:
            worker.reached[event["event"]].set()


async def command(worker: Worker, **message: Any) -> None:
    stdin = worker.process.stdin
    if stdin is None:
        raise RuntimeError("worker started without a stdin pipe")
    try:
        stdin.write((json.dumps(message) + "\n").encode())
        await stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        raise WorkerFailed(f"worker {worker.index} exited before {message['command']!r}") from None


async def wait_for_step(workers: Sequence[Worker], step: str, timeout: float) -> None:
    """Wait until every worker reached ``step``; fail fast if one exits first."""

    async def one(worker: Worker) -> None:
        reached = asyncio.create_task(worker.reached[step].wait())
        # The follower ends when stdout closes, after every line the worker wrote was read,
        # so a worker that did reach the step is never mistaken for one that died.
        others: set[asyncio.Task[Any]] = {reached}
        if worker.follower is not None:
            others.add(worker.follower)
        try:
            await asyncio.wait(others, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reached.cancel()
        if not worker.reached[step].is_set():
            code = await asyncio.wait_for(worker.process.wait(), EXIT_TIMEOUT)
            raise WorkerFailed(f"worker {worker.index} exited with status {code} before {step!r}")

    # Tasks and asyncio.wait rather than wait_for(gather()): on Ctrl-C the waits are cancelled
    # quietly, with no "exception was never retrieved" from a cancelled gather.
    waits = [asyncio.create_task(one(worker)) for worker in workers]
    try:
        done, pending = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for wait in waits:
            wait.cancel()
    for wait in done:
        error = wait.exception()
        if isinstance(error, WorkerFailed):
            raise error
        if error is not None:
            raise WorkerFailed(f"waiting for {step!r} failed: {describe(error)}") from error
    if pending:
        missing = [str(worker.index) for worker in workers if not worker.reached[step].is_set()]
        raise WorkerFailed(f"worker(s) {', '.join(missing)} did not reach {step!r} within {timeout:g} s")


async def stop_workers(workers: Sequence[Worker], *, patience: float) -> None:
    """Give workers ``patience`` s to exit, then SIGTERM (they close their layers), then SIGKILL."""

    async def stop(worker: Worker) -> None:
        process = worker.process
        for attempt, wait in ((None, patience), (process.terminate, EXIT_TIMEOUT / 2), (process.kill, 5.0)):
            if process.returncode is not None:
                break
            if attempt is not None:
                with suppress(ProcessLookupError):
                    attempt()
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(process.wait(), wait)
        if worker.follower is not None:
            worker.follower.cancel()
            await asyncio.gather(worker.follower, return_exceptions=True)

    await asyncio.gather(*(stop(worker) for worker in workers))


# == parent side: sampling ======================================================================


@dataclass(frozen=True)
class Sample:
    seconds: float
    phase: str
    sent: int
    received: int
    connections: int
    work_rows: int
    local_rows: int
    nobody_rows: int
    expired_rows: int
    dead_rows: int
    table_bytes: int
    rss_kib: tuple[int | None, ...]
    cpu: CpuUse | None


SAMPLE_SQL = """
SELECT
    (SELECT count(*) FROM pg_stat_activity
      WHERE (application_name = 'channel_layer_pg' OR application_name LIKE 'channel_layer_pg listener%')
        AND datname = current_database()) AS connections,
    (SELECT coalesce(array_agg(pid), '{}') FROM pg_stat_activity
      WHERE (application_name = 'channel_layer_pg' OR application_name LIKE 'channel_layer_pg listener%')
        AND datname = current_database()) AS backend_pids,
    count(*) FILTER (WHERE queue = $2) AS work_rows,
    count(*) FILTER (WHERE queue LIKE 'specific.%') AS local_rows,
    count(*) FILTER (WHERE queue = $3) AS nobody_rows,
    count(*) FILTER (WHERE expires_at <= now()) AS expired_rows,
    -- Every delivery deletes a row: the table stays small only if (auto)vacuum keeps up.
    (SELECT n_dead_tup FROM pg_stat_user_tables
      WHERE relid = 'channel_layer_pg_message'::regclass) AS dead_rows,
    pg_total_relation_size('channel_layer_pg_message') AS table_bytes
FROM channel_layer_pg_message WHERE prefix = $1
"""


def rss_kib(pid: int) -> int | None:
    """VmRSS from /proc, or None once the process is gone (or off Linux)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


@dataclass(frozen=True)
class CpuUse:
    busy: float | None  # fraction of the machine's CPU time in use
    database: float | None  # cores used by the layer's PostgreSQL sessions
    apps: float  # cores used by the worker processes


def cpu_ticks(pid: int, *, postgres: bool = False) -> int | None:
    """utime + stime of a process (all its threads), or None if it is gone or not ours to read.

    ``postgres``: only if it is a PostgreSQL process, since a remote server's backend pids
    may name unrelated processes here.
    """
    try:
        if postgres and not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"postgres"):
            return None
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def machine_ticks() -> tuple[int, int] | None:
    """(all, idle) CPU ticks since boot, from /proc/stat; None off Linux."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    ticks = [int(value) for value in first[1:9]]  # user .. steal
    return sum(ticks), ticks[3] + ticks[4]  # idle + iowait


class CpuMeter:
    """CPU used between two readings, from /proc: the machine, the database sessions, the workers.

    A session that ends between readings takes its last interval's ticks with it, so the
    database figure is a floor.
    """

    def __init__(self) -> None:
        self._hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._last: tuple[float, tuple[int, int] | None, dict[int, int], dict[int, int]] | None = None

    def read(self, backends: Sequence[int], workers: Sequence[int]) -> CpuUse | None:
        now = time.monotonic()
        machine = machine_ticks()
        database = {pid: t for pid in backends if (t := cpu_ticks(pid, postgres=True)) is not None}
        apps = {pid: t for pid in workers if (t := cpu_ticks(pid)) is not None}
        last, self._last = self._last, (now, machine, database, apps)
        if last is None or now <= last[0]:
            return None
        then, machine_then, database_then, apps_then = last

        def cores(current: dict[int, int], before: dict[int, int]) -> float:
            used = sum(ticks - before.get(pid, 0) for pid, ticks in current.items())
            return used / self._hz / (now - then)

        busy = None
        if machine is not None and machine_then is not None and machine[0] > machine_then[0]:
            total = machine[0] - machine_then[0]
            busy = 1 - (machine[1] - machine_then[1]) / total
        return CpuUse(
            busy=busy,
            database=cores(database, database_then) if backends and database else None,
            apps=cores(apps, apps_then),
        )


class Monitor:
    """The parent's own connection, under a name of its own so it never counts as the layer's."""

    def __init__(self, connection: asyncpg.Connection, prefix: str, workers: Sequence[Worker]) -> None:
        self._connection = connection
        self._prefix = prefix
        self._workers = workers
        self._started = time.monotonic()
        self.phase = "start"
        self.samples: list[Sample] = []
        self._cpu = CpuMeter()

    def restart_clock(self) -> None:
        self._started = time.monotonic()

    async def sample(self) -> Sample:
        row = dict(
            await asyncio.wait_for(self._connection.fetchrow(SAMPLE_SQL, self._prefix, WORK, NOBODY), 10)
        )
        backends = row.pop("backend_pids")
        sample = Sample(
            seconds=time.monotonic() - self._started,
            phase=self.phase,
            sent=sum(worker.sent for worker in self._workers),
            received=sum(worker.received for worker in self._workers),
            rss_kib=tuple(rss_kib(worker.process.pid) for worker in self._workers),
            cpu=self._cpu.read(backends, [worker.process.pid for worker in self._workers]),
            **row,
        )
        previous = self.samples[-1] if self.samples else None
        self.samples.append(sample)
        print(format_sample(sample, previous, len(self._workers)), flush=True)
        return sample

    async def sample_every(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sample()
            except Exception as exc:  # a slow or failed sample must not end the run
                print(f"sampling failed: {describe(exc)}", flush=True)

    async def rows_by_queue(self) -> dict[str, int]:
        rows = await asyncio.wait_for(
            self._connection.fetch(
                "SELECT queue, count(*) AS n FROM channel_layer_pg_message WHERE prefix = $1 GROUP BY queue",
                self._prefix,
            ),
            10,
        )
        return {row["queue"]: row["n"] for row in rows}


def sample_header(workers: int) -> str:
    rss = " ".join(f"{f'w{index}':>5}" for index in range(workers))
    return (
        f"{'t s':>5} {'phase':<6}{'sent/s':>7}{'recv/s':>7}{'conns':>6}"
        f"{'work':>7}{'local':>7}{'nobody':>7}{'expired':>8}{'dead':>7}{'table MB':>9}"
        f"{'busy':>6}{'pg':>5}{'apps':>5}  rss MB {rss}"
    )


def format_sample(sample: Sample, previous: Sample | None, workers: int) -> str:
    if previous is None or sample.seconds <= previous.seconds:
        sent_rate = received_rate = "-"
    else:
        elapsed = sample.seconds - previous.seconds
        sent_rate = f"{(sample.sent - previous.sent) / elapsed:.0f}"
        received_rate = f"{(sample.received - previous.received) / elapsed:.0f}"
    rss = " ".join(f"{kib / 1024:>5.0f}" if kib is not None else f"{'-':>5}" for kib in sample.rss_kib)
    cpu = sample.cpu
    busy = f"{cpu.busy:.0%}" if cpu is not None and cpu.busy is not None else "-"
    database = f"{cpu.database:.2f}" if cpu is not None and cpu.database is not None else "-"
    apps = f"{cpu.apps:.2f}" if cpu is not None else "-"
    return (
        f"{sample.seconds:>5.0f} {sample.phase:<6}{sent_rate:>7}{received_rate:>7}{sample.connections:>6}"
        f"{sample.work_rows:>7}{sample.local_rows:>7}{sample.nobody_rows:>7}{sample.expired_rows:>8}"
        f"{sample.dead_rows:>7}"
        f"{sample.table_bytes / 2**20:>9.1f}{busy:>6}{database:>5}{apps:>5}         {rss}"
    )


# == parent side: counting ======================================================================


@dataclass
class Tally:
    sent: int = 0  # messages sent; for group, group_send calls
    expected: int = 0  # deliveries expected
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    unexpected: int = 0  # received, but never (successfully) sent

    def add(self, other: Tally) -> None:
        for name in vars(self):
            setattr(self, name, getattr(self, name) + getattr(other, name))


# A delivery: (receiving worker, sender, kind, seq); a work job's receiver is ANYONE, since
# exactly one of the workers must get it.
Delivery = tuple[int, int, str, int]
ANYONE = -1


def expected_deliveries(results: Sequence[dict[str, Any]]) -> tuple[set[Delivery], Counter[str]]:
    expected: set[Delivery] = set()
    sent: Counter[str] = Counter()
    members = [result["index"] for result in results]
    for result in results:
        sender = result["index"]
        for kind, records in result["sent"].items():
            sent[kind] += len(records)
            for record in records:
                if kind == "work":
                    expected.add((ANYONE, sender, kind, record))
                elif kind == "direct":
                    expected.add((record[1], sender, kind, record[0]))
                elif kind == "group":
                    expected.update((member, sender, kind, record) for member in members)
    return expected, sent


def tally(results: Sequence[dict[str, Any]]) -> dict[str, Tally]:
    expected, sent = expected_deliveries(results)
    tallies = {kind: Tally(sent=sent[kind]) for kind in ALL_KINDS}
    for delivery in expected:
        tallies[delivery[2]].expected += 1
    received: Counter[Delivery] = Counter()
    for result in results:
        receiver = result["index"]
        for loop_name, log in result["receive"].items():
            # The highest seq seen so far per (sender, kind) stream into this receive loop.
            highest: dict[tuple[int, str], int] = {}
            for sender, kind, seq in log["received"]:
                tally_kind = tallies.setdefault(kind, Tally())
                tally_kind.received += 1
                who = ANYONE if loop_name == "work" and kind == "work" else receiver
                received[(who, sender, kind, seq)] += 1
                stream = (sender, kind)
                if seq < highest.get(stream, seq):
                    tally_kind.reordered += 1
                highest[stream] = max(seq, highest.get(stream, seq))
    for delivery in expected:
        if received[delivery] == 0:
            tallies[delivery[2]].lost += 1
    for delivery, count in received.items():
        if delivery in expected:
            tallies[delivery[2]].duplicated += count - 1
        else:
            tallies.setdefault(delivery[2], Tally()).unexpected += count
    return tallies


# == parent side: the run =======================================================================


def safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def asyncpg_dsn(url: str) -> str:
    """asyncpg takes plain postgresql:// URLs only, not SQLAlchemy's postgresql+driver://."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextmanager
def database(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    print("starting an embedded PostgreSQL ...", flush=True)
    with embedded_postgres() as embedded_url:
        migrate(embedded_url)
        yield embedded_url


async def run(args: argparse.Namespace, url: str) -> int:
    prefix = f"soak-{secrets.token_hex(4)}"
    print(f"command: {shlex.join([sys.executable, *sys.orig_argv[1:]])}")
    print(f"layer: {Path(channel_layer_pg.__file__).parent}")
    print(
        f"database {safe_url(url)}; prefix {prefix}; {args.processes} processes x {args.rate:g} msg/s "
        f"for {args.duration:g} s"
    )
    print(
        f"each round of {len(ROUND)} sends: {ROUND.count('work')} work, {ROUND.count('direct')} direct, "
        f"{ROUND.count('group')} group_send, {ROUND.count('nobody')} nobody; capacity {CAPACITY}, "
        f"expiry {EXPIRY:g} s ({NOBODY_EXPIRY:g} s for {NOBODY}); {CANCEL_FRACTION:.0%} of receives "
        f"cancelled after {CANCEL_AFTER[0] * 1000:g}-{CANCEL_AFTER[1] * 1000:g} ms",
        flush=True,
    )
    connection = await asyncpg.connect(
        asyncpg_dsn(url), timeout=10, server_settings={"application_name": "channel_layer_pg-soak"}
    )
    server = await connection.fetchrow(
        "SELECT current_setting('server_version') AS version, current_setting('autovacuum') AS autovacuum"
    )
    # Every delivery leaves a dead row behind: without autovacuum the table only grows.
    print(f"PostgreSQL {server['version']}, autovacuum {server['autovacuum']}", flush=True)
    workers: list[Worker] = []
    monitor = Monitor(connection, prefix, workers)
    sampler: asyncio.Task[None] | None = None
    failure: str | None = None
    finished = False
    left_over: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="soak-") as directory:
        try:
            for index in range(args.processes):
                workers.append(await start_worker(index, args, url, prefix, Path(directory)))
            await wait_for_step(workers, "ready", STARTUP_TIMEOUT)
            for worker in workers:
                peers = [[other.index, other.channel] for other in workers if other is not worker]
                await command(worker, command="start", peers=peers)
            monitor.phase = "send"
            monitor.restart_clock()
            print()
            print(sample_header(len(workers)), flush=True)
            await monitor.sample()
            sampler = asyncio.create_task(monitor.sample_every(SAMPLE_INTERVAL))
            await wait_for_step(workers, "sent", args.duration + STARTUP_TIMEOUT)
            monitor.phase = "drain"
            for worker in workers:
                await command(worker, command="drain")
            await wait_for_step(workers, "done", DRAIN_LIMIT + EXIT_TIMEOUT)
            sampler.cancel()
            monitor.phase = "end"
            await monitor.sample()
            left_over = await monitor.rows_by_queue()
            finished = True
        except WorkerFailed as exc:
            failure = str(exc)
        finally:
            if sampler is not None:
                sampler.cancel()
            # Finished workers are exiting on their own; after a failure or Ctrl-C, stop them now.
            await stop_workers(workers, patience=EXIT_TIMEOUT / 2 if finished else 0.0)
            await connection.close(timeout=10)
            await flush(url, prefix)
        results = read_results(workers)
    if failure is not None:
        print(f"\nFAILED: {failure}")
        return 1
    return report(workers, results, monitor.samples, left_over, args)


async def flush(url: str, prefix: str) -> None:
    try:
        async with PostgresChannelLayer(url=url, prefix=prefix) as layer:
            await asyncio.wait_for(layer.flush(), CLEANUP_TIMEOUT)
    except Exception as exc:
        print(f"flushing prefix {prefix} failed: {describe(exc)}", file=sys.stderr)


def read_results(workers: Sequence[Worker]) -> list[dict[str, Any]]:
    results = []
    for worker in workers:
        with suppress(OSError, ValueError):
            results.append(json.loads(worker.result_path.read_text()))
    return results


# == parent side: the summary ===================================================================


def report(
    workers: Sequence[Worker],
    results: Sequence[dict[str, Any]],
    samples: Sequence[Sample],
    left_over: dict[str, int],
    args: argparse.Namespace,
) -> int:
    print()
    tallies = tally(results)
    total = Tally()
    columns = ("sent", "expected", "received", "lost", "duplicated", "reordered", "unexpected")
    print(f"{'kind':<8}" + "".join(f"{name:>11}" for name in columns))
    for kind, kind_tally in tallies.items():
        if kind in KINDS:
            total.add(kind_tally)
        print(f"{kind:<8}" + "".join(f"{getattr(kind_tally, name):>11}" for name in columns))
    print(f"{'total':<8}" + "".join(f"{getattr(total, name):>11}" for name in columns))
    print(
        "(group: sent counts group_send calls, expected one delivery per member; nobody: never read, "
        "expected to expire, not in the total)"
    )

    print()
    for result in results:
        sent = sum(len(records) for records in result["sent"].values())
        receive = result["receive"]
        print(
            f"worker {result['index']}: sent {sent} in {result['send_seconds']:.1f} s "
            f"({sent / max(result['send_seconds'], 1e-9):.0f}/s; over 1 s behind schedule "
            f"{result['fell_behind']} times); receives cancelled early: work {receive['work']['cancelled']}, "
            f"local {receive['local']['cancelled']}; idle timeouts: work {receive['work']['idle']}, "
            f"local {receive['local']['idle']}"
        )
        problems = [f"send error x{n}: {text}" for text, n in result["send_errors"].items()]
        for name, log in receive.items():
            problems += [f"{name} receive error x{n}: {text}" for text, n in log["errors"].items()]
            if log["drain_cut_short"]:
                problems.append(f"{name} loop still receiving after {DRAIN_LIMIT:g} s of drain")
        problems += [f"log x{n}: {text}" for text, n in result["log"].items()]
        for problem in problems:
            print(f"    {problem}")
    missing = [worker.index for worker in workers if worker.index not in {r["index"] for r in results}]
    if missing:
        print(f"no result from worker(s) {missing}")

    print()
    print_trends(samples, len(workers))
    if left_over:
        print(
            "rows left under the prefix at the end (before flush): "
            + ", ".join(f"{queue} {count}" for queue, count in sorted(left_over.items()))
        )

    bad = {name: getattr(total, name) for name in ("lost", "duplicated", "reordered") if getattr(total, name)}
    print()
    if bad or missing:
        print(
            "FAIL: "
            + ", ".join(f"{count} {name}" for name, count in bad.items())
            + (f"; workers without a result: {missing}" if missing else "")
        )
        return 1
    print("OK: nothing lost, duplicated or reordered")
    return 0


def print_trends(samples: Sequence[Sample], workers: int) -> None:
    """First, highest and last of what should stay flat: connections, table, memory."""
    if not samples:
        return
    first, last = samples[0], samples[-1]

    def trend(values: Sequence[float], unit: str = "", scale: float = 0.0) -> str:
        """Counts as they are; with a scale (bytes or KiB to MB), one decimal and the unit."""
        picked = (values[0], max(values), values[-1])
        shown = [f"{value / scale:.1f}{unit}" if scale else f"{value:.0f}" for value in picked]
        return " / ".join(shown)

    print("first / highest / last sample:")
    print(f"  layer connections   {trend([s.connections for s in samples])}")
    print(f"  rows under prefix   {trend([s.work_rows + s.local_rows + s.nobody_rows for s in samples])}")
    print(f"  expired rows        {trend([s.expired_rows for s in samples])}")
    print(f"  dead rows (table)   {trend([s.dead_rows for s in samples])}")
    print(f"  message table       {trend([s.table_bytes for s in samples], ' MB', 2**20)}")
    cpu = [s.cpu for s in samples if s.cpu is not None and s.phase == "send"]
    if cpu:
        busy = [use.busy for use in cpu if use.busy is not None]
        database = [use.database for use in cpu if use.database is not None]
        apps = [use.apps for use in cpu]
        print(
            "  CPU while sending:  machine "
            + (f"{sum(busy) / len(busy):.0%} busy" if busy else "-")
            + "; layer's PostgreSQL sessions "
            + (f"{sum(database) / len(database):.2f}" if database else "-")
            + f" cores; workers {sum(apps) / len(apps):.2f} cores (means)"
        )
    for index in range(workers):
        rss = [float(kib) for kib in (s.rss_kib[index] for s in samples) if kib is not None]
        if rss:
            print(f"  worker {index} RSS        {trend(rss, ' MB', 1024)}")
    print(f"  (samples from t={first.seconds:.0f} s to t={last.seconds:.0f} s)")


# == command line ===============================================================================


def positive(kind: type[float] | type[int]) -> Any:
    def parse(text: str) -> float | int:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--url", help="a migrated PostgreSQL (default: start an embedded one for this run)")
    parser.add_argument("--processes", type=positive(int), default=4, help="worker processes (default: 4)")
    parser.add_argument(
        "--duration", type=positive(float), default=60.0, help="seconds of sending (default: 60)"
    )
    parser.add_argument(
        "--rate",
        type=positive(float),
        default=DEFAULT_RATE,
        help="messages a second per process (default: %(default)g)",
    )
    # Worker mode: this script started again by the parent.
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None and args.processes < 2:
        parser.error("--processes must be at least 2: workers send each other direct messages")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return run_worker(args)
    try:
        with database(args.url) as url:
            return asyncio.run(run(args, url))
    except KeyboardInterrupt:
        # asyncio.run cancelled run(), whose finally stopped the workers and flushed; leaving
        # database() stopped the embedded server.
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
