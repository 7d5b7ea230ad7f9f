"""Processes and time: worker processes, CPU and memory from /proc, round trips and percentiles.

A workload that needs several processes starts ``bench.py --worker ROLE --params JSON`` again.
Parent and worker talk in JSON lines: the worker's stdout carries its events, its stdin the
parent's commands; its stderr is the benchmark's, so whatever its layer logs shows up there.
The database URL reaches a worker in its environment, never in argv, where ps would show a
password.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

URL_ENV, REDIS_ENV = "BENCH_URL", "BENCH_REDIS"
ENTRY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench.py")
STARTUP_TIMEOUT = 60.0  # a busy 2-core machine takes seconds to start Python with these imports


class WorkerFailed(Exception):
    """A worker process exited, reported an error, said something unexpected, or went quiet."""


class WorkerQuiet(WorkerFailed):
    """A worker said nothing of what was expected within the time allowed."""


class Worker:
    """The parent's handle on one worker; ``progress`` holds its latest "progress" event."""

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name, self.process = name, process
        self.progress: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def start(
        cls, role: str, url: str, redis: str = "", *, env: Mapping[str, str] | None = None, **params: Any
    ) -> Worker:
        """Start ``role``; ``env`` adds to its environment (the other services' URLs)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, ENTRY, "--worker", role, "--params", json.dumps(params),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {}), URL_ENV: url, REDIS_ENV: redis},
            limit=256 * 1024 * 1024,  # a result line may carry every sample or delivery of a run
        )  # fmt: skip
        return cls(f"{role}[{process.pid}]", process)

    async def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        """The next event of ``kind``; "progress" events on the way update ``progress``."""
        if self.process.stdout is None:
            raise WorkerFailed(f"{self.name} has no stdout")
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = await asyncio.wait_for(self.process.stdout.readline(), deadline - time.monotonic())
            except TimeoutError:
                raise WorkerQuiet(f"{self.name} did not say {kind!r} within {timeout:g} s") from None
            if not line:
                raise WorkerFailed(f"{self.name} exited (code {await self.process.wait()}) before {kind!r}")
            event: dict[str, Any] = json.loads(line)
            if "error" in event:
                raise WorkerFailed(f"{self.name}: {event['error']}")
            if event.get("event") == kind:
                return event
            if event.get("event") != "progress":
                raise WorkerFailed(f"{self.name} said {event!r}, expected {kind!r}")
            self.progress = event

    def command(self, **message: Any) -> None:
        if self.process.stdin is None or self.process.stdin.is_closing():
            raise WorkerFailed(f"{self.name} no longer takes commands")
        self.process.stdin.write((json.dumps(message) + "\n").encode())

    async def stop(self, patience: float = 20.0) -> None:
        """Ask the worker to finish; SIGTERM, then SIGKILL, if it does not exit in time."""
        process = self.process
        try:
            self.command(command="stop")
            if process.stdin is not None:
                process.stdin.close()
        except (WorkerFailed, ConnectionError):
            pass
        for then, wait in ((process.terminate, patience), (process.kill, 5.0), (None, 5.0)):
            if process.returncode is not None:
                return
            try:
                await asyncio.wait_for(process.wait(), wait)
            except TimeoutError:
                if then is not None:
                    try:
                        then()
                    except ProcessLookupError:
                        return


async def start_workers(
    role: str, url: str, params: Sequence[dict[str, Any]], redis: str = ""
) -> list[Worker]:
    return [await Worker.start(role, url, redis, **p) for p in params]


async def expect_all(workers: Sequence[Worker], kind: str, timeout: float) -> list[dict[str, Any]]:
    """Every worker's next ``kind`` event; fails as soon as one of them fails."""
    waits = [asyncio.create_task(worker.expect(kind, timeout)) for worker in workers]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for wait in waits:
            wait.cancel()
    for wait in waits:
        if not wait.cancelled() and wait.exception() is not None:
            raise wait.exception()  # type: ignore[misc]
    return [wait.result() for wait in waits]


async def stop_workers(workers: Sequence[Worker], patience: float = 20.0) -> None:
    await asyncio.gather(*(worker.stop(patience) for worker in workers))


# -- the worker's side ------------------------------------------------------------------------


def emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


def worker_services() -> tuple[str, str]:
    url = os.environ.get(URL_ENV)
    if not url:
        raise RuntimeError(f"a worker needs the database URL in ${URL_ENV}")
    return url, os.environ.get(REDIS_ENV, "")


async def command_reader() -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    return reader


async def next_command(reader: asyncio.StreamReader, timeout: float | None = None) -> dict[str, Any]:
    """The parent's next command; a closed stdin (the parent went away) reads as "stop"."""
    line = await asyncio.wait_for(reader.readline(), timeout)
    command: dict[str, Any] = json.loads(line) if line else {"command": "stop"}
    return command


async def run_worker(role: Callable[[dict[str, Any]], Awaitable[None]], params: dict[str, Any]) -> int:
    try:
        await role(params)
    except Exception as exc:
        emit(error=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


# -- CPU and memory from /proc ----------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as file:
            text = file.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # the command name may hold spaces


def cpu_seconds(pid: int) -> float | None:
    fields = _stat(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / _TICK


def runqueue_seconds(pid: int) -> float | None:
    """Seconds the process's main thread was ready to run but waited for a CPU (schedstat)."""
    try:
        with open(f"/proc/{pid}/schedstat") as file:
            return int(file.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as file:
            for line in file:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _boot_time() -> float:
    with open("/proc/stat") as file:
        return float(next(line.split()[1] for line in file if line.startswith("btime ")))


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) of ``pid``, its children, and its children that have exited.

    For a PostgreSQL server's postmaster: its backends and background processes are its
    children, and the time of one that exits moves into the postmaster's cutime and cstime
    when it is reaped, so two readings subtract to what the whole server used between them.
    """
    fields = _stat(pid)
    if fields is None:
        return None
    ticks = sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (child := _stat(int(entry))) is not None and child[1] == str(pid):
            ticks += sum(int(v) for v in child[11:15])
    return ticks / _TICK


async def postmaster_pid(conn: Any) -> int | None:
    """The pid of the server's postmaster if it runs on this machine and /proc shows it, else None."""
    backend, started = await conn.fetchrow(
        "SELECT pg_backend_pid(), extract(epoch FROM pg_postmaster_start_time())::float8"
    )
    fields = _stat(backend)
    parent = None if fields is None else _stat(int(fields[1]))
    # A server elsewhere (another machine, a container) numbers its processes apart: a local
    # process may carry its backend's pid, but its parent did not start when the server did.
    if fields is None or parent is None or abs(int(parent[19]) / _TICK + _boot_time() - started) > 5:
        return None
    return int(fields[1])


def _machine_busy() -> float:
    with open("/proc/stat") as file:
        values = [int(v) for v in file.readline().split()[1:9]]
    return (sum(values) - values[3] - values[4]) / _TICK  # all but idle and iowait


# Server processes working for this database: its backends and the background processes every
# database shares (WAL writer, checkpointer), not other databases' backends.
THIS_DATABASE = "datname = current_database() OR datname IS NULL"


class CpuMeter:
    """Cores used between two ``read()``s: by PostgreSQL, by our processes, by the machine.

    Tells a CPU-bound run from one that waits, and which side burns the cores. "cpu_wait"
    adds up the time those processes were ready to run but found every core taken, per wall
    second. ``pg_sessions`` picks the server processes counted (an SQL condition on
    pg_stat_activity); with the server on another machine, "pg_cores" is None.
    """

    def __init__(
        self,
        conn: Any,
        our_pids: Sequence[int] = (),
        *,
        pg_sessions: str = THIS_DATABASE,
        this_process: bool = True,
    ) -> None:
        self._conn, self._sessions = conn, pg_sessions
        self._ours = [*([os.getpid()] if this_process else []), *our_pids]
        self._last: dict[str, Any] | None = None

    async def read(self) -> dict[str, float | None]:
        now = await self._snapshot()
        last, self._last = self._last, now
        wall = now["wall"] - last["wall"] if last else 0.0
        if last is None or wall <= 0:
            return {}

        def cores(key: str) -> float:
            # A process that started during the window counts from its start.
            return float(sum(s - last[key].get(pid, 0.0) for pid, s in now[key].items()) / wall)

        return {
            "pg_cores": cores("pg") if now["pg"] else None,
            "py_cores": cores("ours"),
            "machine_cores": (now["busy"] - last["busy"]) / wall,
            "cpu_wait": cores("pg_wait") + cores("ours_wait"),
        }

    async def _snapshot(self) -> dict[str, Any]:
        try:
            rows = await self._conn.fetch(f"SELECT pid FROM pg_stat_activity WHERE {self._sessions}")
            pids = [row["pid"] for row in rows]
        except Exception:
            pids = []
        pg = {pid: s for pid in pids if (s := cpu_seconds(pid)) is not None}
        if len(pg) != len(pids):
            pg = {}  # a server elsewhere: its pids mean nothing here
        ours = {pid: s for pid in self._ours if (s := cpu_seconds(pid)) is not None}
        return {
            "wall": time.monotonic(),
            "busy": _machine_busy(),
            "pg": pg,
            "ours": ours,
            "pg_wait": {pid: w for pid in pg if (w := runqueue_seconds(pid)) is not None},
            "ours_wait": {pid: w for pid in ours if (w := runqueue_seconds(pid)) is not None},
        }


# -- timing -----------------------------------------------------------------------------------


def centiles(samples: Sequence[float]) -> tuple[float, float]:
    """p50 and p99 of ``samples`` (seconds in, milliseconds out)."""
    if len(samples) < 2:
        value = samples[0] * 1000 if samples else float("nan")
        return value, value
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000


def message(n: int, text: str = "x" * 100) -> dict[str, Any]:
    """A benchmark message: about a small chat event, numbered so order and duplicates show."""
    return {"type": "bench.message", "n": n, "text": text}


async def round_trips(
    layer: Any,
    channel: str,
    *,
    count: int,
    budget: float | None = None,
    warmup: int = 3,
    sender: Any = None,
    make: Callable[[int], dict[str, Any]] = message,
    timeout: float = 60.0,
    tick: Callable[[], None] | None = None,
) -> list[float]:
    """Seconds per send-then-receive on ``channel``, one message at a time.

    ``count`` round trips, or with a ``budget`` in seconds as many as fit (at least 10, at
    most ``count``). ``sender`` (default: ``layer``) sends: another instance makes a message
    to one of the receiver's process-local channels go through the table. The first
    ``warmup`` trips are not timed: they open connections and start the layer's readers.
    If the first of them does not arrive within a second, the trip starts over with a
    ``receive()`` waiting before the send, sending again until one arrives: a pub/sub layer
    (channels-nats) drops a message sent to a normal channel nobody receives on yet. Copies
    of it that arrive later are skipped.
    """
    sender = sender or layer

    async def arrival(n: int) -> None:
        while True:
            got = await asyncio.wait_for(layer.receive(channel), timeout)
            if got.get("n") == n:
                return
            if got.get("n") != -1:  # not a resent copy of the first warm-up
                raise RuntimeError(f"round trip {n} received message n={got.get('n')!r}")

    async def one(n: int) -> float:
        start = time.perf_counter()
        await asyncio.wait_for(sender.send(channel, make(n)), timeout)
        await arrival(n)
        return time.perf_counter() - start

    async def first() -> None:
        # A plain trip first, not a receive waiting from the start: two calls at once on a
        # fresh layer meet channels_postgres' module-global asyncio.Lock, bound to whichever
        # event loop used it first, and fail on any other.
        await asyncio.wait_for(sender.send(channel, make(-1)), timeout)
        try:
            await asyncio.wait_for(arrival(-1), 1.0)
            return
        except TimeoutError:
            pass
        waiting = asyncio.create_task(arrival(-1))
        try:
            deadline = time.monotonic() + timeout
            while not waiting.done():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the first warm-up message never arrived on {channel}")
                await asyncio.wait_for(sender.send(channel, make(-1)), timeout)
                await asyncio.wait({waiting}, timeout=1.0)
            waiting.result()
        finally:
            waiting.cancel()

    for n in range(warmup):
        if n == 0:
            await first()
        else:
            await one(-1 - n)
    samples: list[float] = []
    deadline = time.monotonic() + (budget or 0.0)
    while len(samples) < count and (budget is None or len(samples) < 10 or time.monotonic() < deadline):
        samples.append(await one(len(samples)))
        if tick is not None:
            tick()
    return samples
