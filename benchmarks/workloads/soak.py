"""Soak: several processes send, receive and group_send for a while; counts of lost, duplicated, reordered.

    python benchmarks/bench.py soak [--url URL] [--processes 4] [--duration 60] [--rate 100]

Each worker process (``bench.py --worker soak``) has its own layer under one fresh prefix and,
for ``--duration`` seconds, sends about ``--rate`` messages a second:

- jobs to ``soak.work``, a normal channel every worker receives from (a work queue: each job
  must be received exactly once, by any worker);
- direct messages to the other workers' process-local channels (each exactly once, in order
  per sender and receiver);
- ``group_send`` to ``soak.room``, which every worker's process-local channel joined (each
  member gets each exactly once, in order per sender);
- a trickle to ``soak.nobody``, which nobody reads, through a second layer with a short
  expiry: the table stays bounded only if expired rows are cleaned up.

A send that raises is sent again after RETRY_AFTER s, as an application would; each failure is
counted by type, and a duplicate of a retried send (stored, though its caller heard of an
error) is counted apart. Receive loops run all along, and a fraction of receives is cancelled
by a short timeout, as when consumers stop in a Channels application. Once every sender has
stopped, the receivers drain until nothing has arrived for a few seconds. Every 5 s this
process prints the layer's server connections, this run's rows (in soak.work, in process-local
queues, in soak.nobody, and those past their expiry), the whole table's dead rows and MB, the
machine's busy share, the cores used by the layer's PostgreSQL sessions (pg, with the server on
this machine) and by the workers (apps), and each worker's RSS in MB. At the end it counts what
was sent, expected, received, lost, duplicated and reordered, per kind.

Exit status 0 if nothing was lost, duplicated or reordered and every worker finished, else 1.
Without --url a throwaway embedded PostgreSQL is started, migrated and always stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import sys
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from harness.cli import print_header
from harness.compare import token
from harness.db import LAYER_SESSIONS, connect, first_line
from harness.layers import internal, ours
from harness.procs import (
    STARTUP_TIMEOUT,
    CpuMeter,
    Worker,
    WorkerFailed,
    command_reader,
    emit,
    expect_all,
    next_command,
    rss_mb,
    start_workers,
    stop_workers,
    worker_services,
)
from harness.table import render
from sqlalchemy.engine import make_url

WORK, GROUP, NOBODY = "soak.work", "soak.room", "soak.nobody"
KINDS = ("work", "direct", "group")  # the kinds whose deliveries are checked; nobody's expire
ALL_KINDS = (*KINDS, "nobody")
# One round of sends, repeated: mostly jobs and direct messages, one group_send (a delivery to
# every worker) and one message that nobody reads.
ROUND = ("work", "direct") * 9 + ("group", "nobody")
FILLER = "x" * 64  # about the size of a small chat message
# On a 2-core machine shared with other work, 4 workers asked for 200 or 400 sends a second
# managed 140 to 215; 100 leaves a margin, so that a backlog points at the layer, not the machine.
DEFAULT_RATE = 100.0
CAPACITY = 10_000  # high: the soak looks for losses, not ChannelFull
EXPIRY = 20.0  # long enough that a healthy layer never expires a message under this load
NOBODY_EXPIRY = 5.0
# A consumer that stops cancels its pending receive(); this many receives are cancelled after
# a random few milliseconds, often just as a message is on its way to them.
CANCEL_FRACTION, CANCEL_AFTER = 0.2, (0.001, 0.05)
RECEIVE_TIMEOUT = 1.0  # an idle receive is cancelled too, so a loop checks for the end this often
DRAIN_QUIET, DRAIN_LIMIT = 3.0, 30.0  # the drain ends after this long without a message, or in any case
SAMPLE_INTERVAL = 5.0
EXIT_TIMEOUT = 30.0
# A send that raised is retried this often, and no longer than this past the end of sending.
RETRY_AFTER, RETRY_FOR = 0.1, 20.0


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc)}"


# == the worker ==================================================================================


@dataclass
class Log:
    """What one worker sent or one receive loop got, in order, as arrays of machine integers:
    lists of objects would add megabytes a minute to the RSS and hide a leak in the layer."""

    senders: array[int] = field(default_factory=lambda: array("q"))
    kinds: array[int] = field(default_factory=lambda: array("b"))  # index into ALL_KINDS, -1 if unknown
    seqs: array[int] = field(default_factory=lambda: array("q"))
    to: array[int] = field(default_factory=lambda: array("q"))  # a direct message's receiver
    errors: Counter[str] = field(default_factory=Counter)
    # (kind, seq) of the sends that raised and were sent again: a send whose connection was
    # lost mid-statement may have been stored, so its retry can be a duplicate.
    retried: list[tuple[str, int]] = field(default_factory=list)
    cancelled: int = 0  # receives cancelled by the short random timeout
    idle: int = 0  # receives cancelled after RECEIVE_TIMEOUT with nothing to deliver
    cut_short: bool = False  # still receiving after DRAIN_LIMIT of drain

    def record(self, sender: int, kind: Any, seq: int, to: int = -1) -> None:
        self.senders.append(sender)
        self.kinds.append(ALL_KINDS.index(kind) if kind in ALL_KINDS else -1)
        self.seqs.append(seq)
        self.to.append(to)

    def as_json(self) -> dict[str, Any]:
        records = zip(self.senders, self.kinds, self.seqs, self.to, strict=True)
        return {
            "records": [[s, ALL_KINDS[k] if k >= 0 else "unknown", q, t] for s, k, q, t in records],
            "errors": self.errors, "retried": self.retried, "cancelled": self.cancelled, "idle": self.idle,
            "cut_short": self.cut_short,
        }  # fmt: skip


class Drain:
    """When receive loops may end: after the parent says every sender stopped, and quiet."""

    started: float | None = None

    def over(self, last_arrival: float, log: Log) -> bool:
        if self.started is None:
            return False
        now = asyncio.get_running_loop().time()
        log.cut_short = now - self.started >= DRAIN_LIMIT
        return log.cut_short or now - max(last_arrival, self.started) >= DRAIN_QUIET


async def send_loop(
    layer: Any,
    short_lived: Any,
    me: int,
    peers: Sequence[tuple[int, str]],
    rate: float,
    duration: float,
    log: Log,
) -> tuple[float, int]:
    """Send ROUND over and over at ``rate`` a second; (seconds taken, times over 1 s behind).

    One send at a time: each stream's order is then the order of the sender's awaits, which is
    what the receivers' order is checked against.
    """
    loop = asyncio.get_running_loop()
    started = next_at = loop.time()
    deadline, seqs, fell_behind = started + duration, Counter[str](), 0
    while loop.time() < deadline:
        kind = ROUND[sum(seqs.values()) % len(ROUND)]
        seqs[kind] += 1
        seq, receiver = seqs[kind], -1
        message = {"type": "soak.message", "sender": me, "kind": kind, "seq": seq, "text": FILLER}
        if kind == "direct":
            receiver = peers[seq % len(peers)][0]
        # As an application would: a send that raised is sent again (each failure counted by
        # type), for as long as the run lasts and the drain allows.
        while True:
            try:
                if kind == "work":
                    await layer.send(WORK, message)
                elif kind == "direct":
                    await layer.send(peers[seq % len(peers)][1], message)
                elif kind == "group":
                    await layer.group_send(GROUP, message)
                else:
                    await short_lived.send(NOBODY, message)
            except Exception as exc:
                log.errors[f"{kind}: {describe(exc)}"] += 1
                if loop.time() > deadline + RETRY_FOR:
                    log.errors[f"{kind}: given up after retrying for {RETRY_FOR:g} s"] += 1
                    break
                if not log.retried or log.retried[-1] != (kind, seq):
                    log.retried.append((kind, seq))
                await asyncio.sleep(RETRY_AFTER)
                continue
            log.record(me, kind, seq, receiver)
            break
        next_at += 1.0 / rate
        delay = next_at - loop.time()
        if delay > 0:
            await asyncio.sleep(min(delay, max(deadline - loop.time(), 0.0)))
        elif delay < -1.0:
            # A burst to catch up would hide that the layer cannot keep up; the achieved rate
            # in the summary shows it instead.
            fell_behind += 1
            next_at = loop.time()
    return loop.time() - started, fell_behind


async def receive_loop(layer: Any, channel: str, log: Log, drain: Drain, rng: random.Random) -> None:
    """Receive on ``channel`` one message at a time until the drain ends.

    One loop per channel per process, so the order it records is the order the layer
    delivered them to this process.
    """
    loop = asyncio.get_running_loop()
    last_arrival = loop.time()
    while not drain.over(last_arrival, log):
        cancel_soon = rng.random() < CANCEL_FRACTION
        try:
            got = await asyncio.wait_for(
                layer.receive(channel), rng.uniform(*CANCEL_AFTER) if cancel_soon else RECEIVE_TIMEOUT
            )
        except TimeoutError:
            log.cancelled += cancel_soon
            log.idle += not cancel_soon
            continue
        except Exception as exc:
            log.errors[describe(exc)] += 1
            await asyncio.sleep(0.1)  # an outage must not turn into a busy loop
            continue
        log.record(int(got.get("sender", -1)), got.get("kind"), int(got.get("seq", -1)))
        last_arrival = loop.time()


class LogCounts(logging.Handler):
    """Counts the layer's log records by level, logger and template; prints the first few
    WARNINGs of each kind, so that one failing on every receive does not bury the samples."""

    def __init__(self, index: int) -> None:
        super().__init__(level=logging.INFO)
        self.index = index
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        key = f"{record.levelname} {record.name}: {record.msg}"
        self.counts[key] += 1
        if record.levelno >= logging.WARNING and self.counts[key] <= 3:
            print(
                f"worker {self.index}: {key if self.counts[key] < 3 else key + ' (further ones counted)'}",
                file=sys.stderr,
            )


async def worker(params: dict[str, Any]) -> None:
    index = params["index"]
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    counts = LogCounts(index)
    root.addHandler(counts)
    logging.getLogger("channel_layer_pg").setLevel(logging.INFO)  # cleanup, skipped members
    task = asyncio.current_task()
    if task is not None:  # SIGTERM from the parent: cancelling lets `async with` close the layers
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    url, _ = worker_services()
    control = await command_reader()
    sent, logs = Log(), {"work": Log(), "local": Log()}
    options = params.get("options", {})
    async with (
        ours(url, params["prefix"], capacity=CAPACITY, expiry=EXPIRY, **options) as layer,
        ours(url, params["prefix"], capacity=CAPACITY, expiry=NOBODY_EXPIRY, **options) as short_lived,
    ):
        me = await layer.new_channel()
        await layer.group_add(GROUP, me)
        emit(event="ready", channel=me)
        start = await next_command(control, STARTUP_TIMEOUT)
        if start.get("command") != "start":
            return
        drain, rng = Drain(), random.Random()

        async def progress() -> None:
            while True:
                emit(
                    event="progress",
                    sent=len(sent.seqs),
                    received=sum(len(log.seqs) for log in logs.values()),
                )
                await asyncio.sleep(1.0)

        tasks = [
            asyncio.create_task(receive_loop(layer, WORK, logs["work"], drain, rng)),
            asyncio.create_task(receive_loop(layer, me, logs["local"], drain, rng)),
            asyncio.create_task(progress()),
        ]
        try:
            peers = [(int(peer), channel) for peer, channel in start["peers"]]
            seconds, fell_behind = await send_loop(
                layer, short_lived, index, peers, params["rate"], params["duration"], sent
            )
            emit(event="sent")
            # Other workers may still be sending (their jobs can land here): wait for all.
            if (await next_command(control, params["duration"] + STARTUP_TIMEOUT)).get("command") != "drain":
                return
            drain.started = asyncio.get_running_loop().time()
            await asyncio.gather(*tasks[:2])
        finally:
            for running in tasks:
                running.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    emit(
        event="done", index=index, sent=sent.as_json(), send_seconds=seconds, fell_behind=fell_behind,
        receive={name: log.as_json() for name, log in logs.items()}, log=counts.counts,
    )  # fmt: skip


# == the parent ==================================================================================

MONITOR_NAME = "bench soak monitor"  # not the layer's application_name: faults spare it
SAMPLE_SQL = f"""
SELECT
    (SELECT count(*) FROM pg_stat_activity WHERE {LAYER_SESSIONS} AND datname = current_database()) AS conns,
    count(*) FILTER (WHERE queue = $2) AS work,
    count(*) FILTER (WHERE queue LIKE 'specific.%') AS local,
    count(*) FILTER (WHERE queue = $3) AS nobody,
    count(*) FILTER (WHERE expires_at <= now()) AS expired,
    -- Every delivery deletes a row: the table stays small only if (auto)vacuum keeps up.
    (SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'channel_layer_pg_message'::regclass) AS dead,
    pg_total_relation_size('channel_layer_pg_message') / 1048576.0 AS table_mb
FROM channel_layer_pg_message WHERE prefix = $1
"""


class Monitor:
    """Samples the run every SAMPLE_INTERVAL on a connection of its own (not named like the layer's)."""

    def __init__(self, url: str, conn: Any, prefix: str, workers: Sequence[Worker]) -> None:
        self.url, self.conn, self.prefix, self.workers = url, conn, prefix, workers
        self.cpu = CpuMeter(conn, [w.pid for w in workers], pg_sessions=LAYER_SESSIONS, this_process=False)
        self.samples: list[dict[str, Any]] = []
        self.phase = "send"
        self.started = asyncio.get_running_loop().time()
        self.rows = [
            ["t s", "phase", "sent/s", "recv/s", "conns", "work", "local", "nobody", "expired", "dead"]
        ]
        self.rows[0] += ["table MB", "busy", "pg", "apps", *(f"w{w} MB" for w in range(len(workers)))]

    async def sample(self) -> None:
        row = dict(await asyncio.wait_for(self.conn.fetchrow(SAMPLE_SQL, self.prefix, WORK, NOBODY), 10))
        row.update(
            t=asyncio.get_running_loop().time() - self.started, phase=self.phase,
            sent=sum(w.progress.get("sent", 0) for w in self.workers),
            received=sum(w.progress.get("received", 0) for w in self.workers),
            rss=[rss_mb(w.pid) for w in self.workers], **await self.cpu.read(),
        )  # fmt: skip
        last = self.samples[-1] if self.samples else None
        self.samples.append(row)
        elapsed = row["t"] - last["t"] if last else 0.0

        def rate(key: str) -> str:
            return f"{(row[key] - last[key]) / elapsed:.0f}" if last and elapsed > 0 else "-"

        def num(value: Any, fmt: str) -> str:
            return "-" if value is None else fmt.format(value)

        busy = row.get("machine_cores")
        line = [f"{row['t']:.0f}", row["phase"], rate("sent"), rate("received")]
        line += [str(row[k]) for k in ("conns", "work", "local", "nobody", "expired", "dead")]
        line += [f"{row['table_mb']:.1f}", num(busy and busy / (os.cpu_count() or 1), "{:.0%}")]
        line += [num(row.get("pg_cores"), "{:.2f}"), num(row.get("py_cores"), "{:.2f}")]
        line += [num(mb, "{:.0f}") for mb in row["rss"]]
        self.rows.append(line)
        print(self.line(line), flush=True)

    def line(self, cells: Sequence[str]) -> str:
        return " ".join(
            f"{cell:>{max(len(title), 5)}}" for cell, title in zip(cells, self.rows[0], strict=True)
        )

    async def sample_every(self) -> None:
        while True:
            await asyncio.sleep(SAMPLE_INTERVAL)
            try:
                await self.sample()
            except Exception as exc:  # a slow or failed sample must not end the run
                print(f"sampling failed: {describe(exc)}", flush=True)
                await self.reconnect()

    async def reconnect(self) -> None:
        """A new connection if a server restart took the old one; the next sample uses it."""
        if not self.conn.is_closed():
            return
        try:
            self.conn = await connect(self.url, server_settings={"application_name": MONITOR_NAME})
        except Exception as exc:
            print(f"monitor reconnect failed: {describe(exc)}", flush=True)
            return
        self.cpu = CpuMeter(
            self.conn, [w.pid for w in self.workers], pg_sessions=LAYER_SESSIONS, this_process=False
        )


@contextmanager
def database(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    from channel_layer_pg import migrate

    print("starting an embedded PostgreSQL ...", flush=True)
    with internal("embedded_postgres")() as embedded_url:
        migrate(embedded_url)
        yield embedded_url


@dataclass
class Outcome:
    code: int  # the exit status: 0 if nothing was lost, duplicated or reordered
    tallies: dict[str, Counter[str]]
    results: list[dict[str, Any]]


async def run(
    args: argparse.Namespace,
    url: str,
    *,
    options: dict[str, Any] | None = None,
    faults: Callable[[], Awaitable[None]] | None = None,
    header: bool = True,
) -> Outcome:
    """One soak on ``url``; ``options`` go to every worker's layers, and ``faults`` runs while
    they send (cancelled when they stop, if still running)."""
    prefix = f"soak-{token()}"
    if header:
        await print_header(url, args.label)
    print(
        f"database {make_url(url).render_as_string(hide_password=True)}; prefix {prefix}; {args.processes} "
        f"processes x {args.rate:g} msg/s for {args.duration:g} s; each round of {len(ROUND)} sends: "
        f"{ROUND.count('work')} work, {ROUND.count('direct')} direct, {ROUND.count('group')} group_send, "
        f"{ROUND.count('nobody')} nobody; capacity {CAPACITY}, expiry {EXPIRY:g} s ({NOBODY_EXPIRY:g} s for "
        f"{NOBODY}); {CANCEL_FRACTION:.0%} of receives cancelled after {CANCEL_AFTER[0] * 1000:g}-"
        f"{CANCEL_AFTER[1] * 1000:g} ms\n",
        flush=True,
    )
    conn = await connect(url, server_settings={"application_name": MONITOR_NAME})
    params = [
        {"index": i, "prefix": prefix, "rate": args.rate, "duration": args.duration, "options": options or {}}
        for i in range(args.processes)
    ]
    workers = await start_workers("soak", url, params)
    sampler: asyncio.Task[None] | None = None
    injector: asyncio.Task[None] | None = None
    monitor: Monitor | None = None
    try:
        channels = [ready["channel"] for ready in await expect_all(workers, "ready", STARTUP_TIMEOUT)]
        for i, worker in enumerate(workers):
            worker.command(command="start", peers=[[j, c] for j, c in enumerate(channels) if j != i])
        monitor = Monitor(url, conn, prefix, workers)
        print(monitor.line(monitor.rows[0]))
        await monitor.sample()
        sampler = asyncio.create_task(monitor.sample_every())
        if faults is not None:
            injector = asyncio.create_task(faults())
        await expect_all(workers, "sent", args.duration + RETRY_FOR + STARTUP_TIMEOUT)
        if injector is not None:
            injector.cancel()
            await asyncio.gather(injector, return_exceptions=True)
        monitor.phase = "drain"
        for worker in workers:
            worker.command(command="drain")
        results = await expect_all(workers, "done", DRAIN_LIMIT + EXIT_TIMEOUT)
        sampler.cancel()
        monitor.phase = "end"
        await monitor.reconnect()
        await monitor.sample()
        left = await monitor.conn.fetch(
            "SELECT queue, count(*) AS n FROM channel_layer_pg_message WHERE prefix = $1 GROUP BY queue",
            prefix,
        )
    except WorkerFailed as exc:
        print(f"\nFAILED: {exc}")
        return Outcome(1, {}, [])
    finally:
        for task in (sampler, injector):
            if task is not None:
                task.cancel()
        await stop_workers(workers, patience=EXIT_TIMEOUT / 2)
        await conn.close(timeout=10)
        if monitor is not None:
            await monitor.conn.close(timeout=10)
        try:
            async with ours(url, prefix) as layer:
                await asyncio.wait_for(layer.flush(), 30)
        except Exception as exc:
            print(f"flushing prefix {prefix} failed: {describe(exc)}", file=sys.stderr)
    code = report(results, monitor.samples, {row["queue"]: row["n"] for row in left})
    return Outcome(code, tally(results), results)


# == the summary =================================================================================

ANYONE = -1  # the receiver of a work job: exactly one of the workers must get it
COLUMNS = ("sent", "expected", "received", "lost", "duplicated", "reordered", "unexpected", "retried")


def tally(results: Sequence[dict[str, Any]]) -> dict[str, Counter[str]]:
    """Per kind: messages sent (group: calls), deliveries expected and received, and the faults."""
    tallies = {kind: Counter[str]() for kind in ALL_KINDS}
    members = [result["index"] for result in results]
    expected: set[tuple[int, int, str, int]] = set()  # (receiver, sender, kind, seq)
    retried = {(r["index"], kind, seq) for r in results for kind, seq in r["sent"].get("retried", ())}
    for _, kind, _ in retried:
        tallies[kind]["retried"] += 1
    for result in results:
        for sender, kind, seq, to in result["sent"]["records"]:
            tallies[kind]["sent"] += 1
            if kind == "work":
                expected.add((ANYONE, sender, kind, seq))
            elif kind == "direct":
                expected.add((to, sender, kind, seq))
            elif kind == "group":
                expected.update((member, sender, kind, seq) for member in members)
    for _, _, kind, _ in expected:
        tallies[kind]["expected"] += 1
    received: Counter[tuple[int, int, str, int]] = Counter()
    for result in results:
        for name, log in result["receive"].items():
            highest: dict[tuple[int, str], int] = {}  # per (sender, kind) stream into this loop
            for sender, kind, seq, _ in log["records"]:
                counts = tallies.setdefault(kind, Counter())
                counts["received"] += 1
                received[
                    (ANYONE if name == "work" and kind == "work" else result["index"], sender, kind, seq)
                ] += 1
                counts["reordered"] += seq < highest.get((sender, kind), seq)
                highest[(sender, kind)] = max(seq, highest.get((sender, kind), seq))
    for delivery in expected:
        tallies[delivery[2]]["lost"] += received[delivery] == 0
    for delivery, count in received.items():
        key = "duplicated" if delivery in expected else "unexpected"
        tallies.setdefault(delivery[2], Counter())[key] += count - 1 if delivery in expected else count
        # A retried send that had been stored already: the application's duplicate, not the layer's.
        tallies[delivery[2]]["duplicated after retry"] += (count - 1) * (delivery[1:] in retried)
    return tallies


def report(results: Sequence[dict[str, Any]], samples: Sequence[dict[str, Any]], left: dict[str, int]) -> int:
    tallies = tally(results)
    total = sum((tallies[kind] for kind in KINDS), Counter[str]())
    rows = [[kind, *(str(counts[c]) for c in COLUMNS)] for kind, counts in tallies.items()]
    print("\n" + render(["kind", *COLUMNS], [*rows, ["total", *(str(total[c]) for c in COLUMNS)]]))
    print(
        "(group: sent counts group_send calls, expected one delivery per member; nobody: never read, "
        "expected to expire, not in the total)\n"
    )
    for result in results:
        sent, receive = len(result["sent"]["records"]), result["receive"]
        print(
            f"worker {result['index']}: sent {sent} in {result['send_seconds']:.1f} s "
            f"({sent / max(result['send_seconds'], 1e-9):.0f}/s; over 1 s behind schedule "
            f"{result['fell_behind']} times); receives cancelled early: work {receive['work']['cancelled']}, "
            f"local {receive['local']['cancelled']}; "
            f"idle timeouts: work {receive['work']['idle']}, local {receive['local']['idle']}"
        )
        problems = [f"send error x{n}: {text}" for text, n in result["sent"]["errors"].items()]
        for name, log in receive.items():
            problems += [f"{name} receive error x{n}: {text}" for text, n in log["errors"].items()]
            problems += [f"{name} loop still receiving after {DRAIN_LIMIT:g} s of drain"] * log["cut_short"]
        problems += [f"log x{n}: {text}" for text, n in result["log"].items()]
        print("".join(f"    {problem}\n" for problem in problems), end="")
    if samples:

        def trend(values: Sequence[float | None]) -> str:
            known = [v for v in values if v is not None]
            picked = (known[0], max(known), known[-1]) if known else ()
            return " / ".join(f"{v:,.0f}" if float(v).is_integer() else f"{v:,.1f}" for v in picked) or "-"

        sending = [s for s in samples if s["phase"] == "send" and s.get("py_cores") is not None]
        print("\nfirst / highest / last sample:")
        print(f"  layer connections   {trend([s['conns'] for s in samples])}")
        print(f"  rows under prefix   {trend([s['work'] + s['local'] + s['nobody'] for s in samples])}")
        print(f"  expired rows        {trend([s['expired'] for s in samples])}")
        print(f"  dead rows (table)   {trend([s['dead'] for s in samples])}")
        print(f"  message table MB    {trend([float(s['table_mb']) for s in samples])}")
        for i in range(len(samples[0]["rss"])):
            print(f"  worker {i} RSS MB     {trend([s['rss'][i] for s in samples])}")
        if sending:
            pg = [s["pg_cores"] for s in sending if s.get("pg_cores") is not None]
            print(
                "  CPU while sending (means): machine "
                f"{sum(s['machine_cores'] for s in sending) / len(sending):.2f} cores; layer's PostgreSQL "
                f"sessions {f'{sum(pg) / len(pg):.2f}' if pg else '-'} cores; workers "
                f"{sum(s['py_cores'] for s in sending) / len(sending):.2f} cores"
            )
    if left:
        print(
            "rows left under the prefix at the end (before flush): "
            + ", ".join(f"{q} {n}" for q, n in sorted(left.items()))
        )
    bad = {name: total[name] for name in ("lost", "duplicated", "reordered") if total[name]}
    if bad:
        print("\nFAIL: " + ", ".join(f"{count} {name}" for name, count in bad.items()))
        return 1
    print("\nOK: nothing lost, duplicated or reordered")
    return 0


def positive(kind: type[float] | type[int]) -> Any:
    def parse(text: str) -> float | int:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.py soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a migrated PostgreSQL (default: start an embedded one for this run)")
    parser.add_argument(
        "--label", help="a name for this run, printed in the header beside the imported checkout"
    )
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
    args = parser.parse_args(argv)
    if args.processes < 2:
        parser.error("--processes must be at least 2: workers send each other direct messages")
    try:
        with database(args.url) as url:
            return asyncio.run(run(args, url)).code
    except KeyboardInterrupt:
        # asyncio.run cancelled run(), whose finally stopped the workers and flushed; leaving
        # database() stopped the embedded server.
        print("interrupted", file=sys.stderr)
        return 130


WORKERS = {"soak": worker}
