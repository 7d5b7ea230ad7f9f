"""What every series of the scaling study shares: results, worker processes, CPU and memory probes.

A series that needs several processes starts this benchmark's entry script again in worker
mode (``--worker NAME``), as bench.py does for its cross-process workload. Parent and worker
talk in JSON lines: the worker's stdout carries its events, its stdin the parent's commands;
its stderr is the benchmark's, so whatever its layer logs shows up there. The database URL
reaches a worker in its environment, never in argv, where ps would show a password.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

URL_ENV = "SCALING_URL"
MESSAGE_TABLE = "channel_layer_pg_message"
# A busy 2-core machine takes seconds to start a Python process with these imports.
STARTUP_TIMEOUT = 60.0


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    fmt: str = "{:,.0f}"  # a format for the value; None shows as "-"


@dataclass
class Series:
    """One dimension's figures: a table of rows, notes under it, and raw data for the plot."""

    name: str
    title: str
    columns: tuple[Column, ...]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def table(self) -> str:
        header = [column.label for column in self.columns]
        body = [[_cell(column, row.get(column.key)) for column in self.columns] for row in self.rows]
        widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
        lines = [
            " | ".join(
                (text.ljust(width) if i == 0 else text.rjust(width))
                for i, (text, width) in enumerate(zip(line, widths, strict=True))
            )
            for line in [header, *body]
        ]
        lines.insert(1, "-+-".join("-" * width for width in widths))
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "columns": [{"key": c.key, "label": c.label} for c in self.columns],
            "rows": self.rows,
            "notes": self.notes,
            "raw": self.raw,
            "seconds": round(self.seconds, 1),
        }


def _cell(column: Column, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return column.fmt.format(value)


def centiles(samples: Sequence[float]) -> tuple[float, float]:
    """p50 and p99 of ``samples`` (seconds in, milliseconds out)."""
    if len(samples) < 2:
        value = samples[0] * 1000 if samples else float("nan")
        return value, value
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000


# -- CPU and memory ---------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after it.
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float | None:
    fields = _proc_stat(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / _TICK


def runqueue_seconds(pid: int) -> float | None:
    """Seconds the process's main thread was ready to run but waited for a CPU (schedstat)."""
    try:
        with open(f"/proc/{pid}/schedstat") as schedstat:
            return int(schedstat.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / _TICK, sum(values) / _TICK


async def postgres_pids(conn: Any) -> list[int]:
    """The server processes that work for this database, if the server runs on this machine.

    Backends connected to this database, and the background processes every database shares
    (WAL writer, checkpointer, ...); not the backends of other databases on the same server,
    such as other people's test runs.
    """
    try:
        pids = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() OR datname IS NULL"
        )
    except Exception:
        return []
    local = [row["pid"] for row in pids if _proc_stat(row["pid"]) is not None]
    # A server elsewhere: its pids mean nothing here (the odd match would be a coincidence).
    return local if len(local) == len(pids) else []


class CpuMeter:
    """CPU used between start() and stop(): by the server, by our processes, by the machine.

    Tells a CPU-bound run from one that waits (on locks, the disk, the network), and which
    side, PostgreSQL or Python, burns the cores. Cores busy = CPU seconds / wall seconds;
    "waiting for a CPU" adds up the time those processes were ready to run but found every
    core taken, per wall second: high when the machine has too few cores for the work.
    """

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._ours: list[int] = []
        self._start: dict[str, Any] = {}

    async def start(self, our_pids: Sequence[int]) -> None:
        self._ours = [os.getpid(), *our_pids]
        self._start = await self._snapshot()

    async def stop(self) -> dict[str, float | None]:
        end = await self._snapshot()
        wall = end["wall"] - self._start["wall"]
        if wall <= 0:
            return {}

        def spent(key: str) -> float:
            before, after = self._start[key], end[key]
            # A process that started during the window counts from its start.
            return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items()) / wall

        return {
            "pg_cores": spent("pg") if end["pg"] else None,
            "py_cores": spent("ours"),
            "machine_cores": (end["busy"] - self._start["busy"]) / wall,
            "cpu_wait": spent("pg_wait") + spent("ours_wait"),
        }

    async def _snapshot(self) -> dict[str, Any]:
        pg_pids = await postgres_pids(self._conn)
        busy, _ = _machine_busy()
        return {
            "wall": asyncio.get_running_loop().time(),
            "busy": busy,
            "pg": _known({pid: cpu_seconds(pid) for pid in pg_pids}),
            "ours": _known({pid: cpu_seconds(pid) for pid in self._ours}),
            "pg_wait": _known({pid: runqueue_seconds(pid) for pid in pg_pids}),
            "ours_wait": _known({pid: runqueue_seconds(pid) for pid in self._ours}),
        }


def _known(values: dict[int, float | None]) -> dict[int, float]:
    return {pid: value for pid, value in values.items() if value is not None}


async def explain_analyze(conn: Any, statement: Any, parameters: dict[str, Any]) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of one of the layer's statements, compiled as its driver runs it.

    ANALYZE executes the statement: a claim really deletes, a send really stores.
    """
    from sqlalchemy.dialects.postgresql.asyncpg import dialect

    compiled = statement.compile(dialect=dialect())
    values = {**compiled.params, **parameters}  # the statement's own literals, then ours
    rows = await conn.fetch(
        f"EXPLAIN (ANALYZE, BUFFERS) {compiled}", *(values[name] for name in compiled.positiontup or [])
    )
    return "\n".join(trim_plan_line(row[0]) for row in rows)


def trim_plan_line(line: str, width: int = 300) -> str:
    """A plan line cut short: filters spell out array parameters, 10,000 channel names long."""
    return line if len(line) <= width else line[: width - 1] + "…"


def execution_ms(plan: str) -> float | None:
    found = re.search(r"Execution Time: ([\d.]+) ms", plan)
    return float(found.group(1)) if found else None


async def wal_bytes(conn: Any) -> int | None:
    """WAL the whole server has written so far (pg_stat_wal, PostgreSQL 14 and later)."""
    try:
        return int(await conn.fetchval("SELECT wal_bytes FROM pg_stat_wal"))
    except Exception:
        return None


async def count_connections(conn: Any) -> int:
    """Server connections the layer holds on this database (it names its sessions)."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = 'channel_layer_pg'"
        )
    )


async def connections_by_database(conn: Any) -> str:
    """Who holds the server's connections: "bench 60, test 35, (background) 5 of 100"."""
    rows = await conn.fetch(
        "SELECT coalesce(datname, '(background)') AS db, count(*) AS n FROM pg_stat_activity "
        "GROUP BY 1 ORDER BY 2 DESC"
    )
    limit = await conn.fetchval("SHOW max_connections")
    return ", ".join(f"{row['db']} {row['n']}" for row in rows) + f" of max_connections {limit}"


CPU_COLUMNS = (
    Column("pg_cores", "PG cores", "{:.2f}"),
    Column("py_cores", "Python cores", "{:.2f}"),
    Column("machine_cores", "machine cores", "{:.2f}"),
    Column("cpu_wait", "waiting for CPU", "{:.2f}"),
)


# -- worker processes: the parent's side -------------------------------------------------------


class WorkerFailed(Exception):
    """A worker process exited, said something unexpected, or went quiet."""


class Worker:
    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def start(cls, script: str, url: str, role: str, **params: Any) -> Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            script,
            "--worker",
            role,
            "--params",
            json.dumps(params),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, URL_ENV: url},
            # Big enough for a result line with every latency sample in it.
            limit=64 * 1024 * 1024,
        )
        return cls(f"{role}[{process.pid}]", process)

    async def event(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        except (TimeoutError, asyncio.TimeoutError):
            raise WorkerFailed(f"{self.name} said nothing for {timeout:g} s") from None
        if not line:
            raise WorkerFailed(f"{self.name} exited (code {await self.process.wait()})")
        event: dict[str, Any] = json.loads(line)
        if "error" in event:
            raise WorkerFailed(f"{self.name}: {event['error']}")
        return event

    async def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        event = await self.event(timeout)
        if event.get("event") != kind:
            raise WorkerFailed(f"{self.name} said {event!r}, expected {kind!r}")
        return event

    def command(self, **message: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(message) + "\n").encode())

    async def stop(self, timeout: float = 20.0) -> None:
        """Ask the worker to finish; kill it if it does not exit within ``timeout``."""
        if self.process.returncode is not None:
            return
        try:
            self.command(command="stop")
            assert self.process.stdin is not None
            self.process.stdin.close()
            await asyncio.wait_for(self.process.wait(), timeout)
        except (TimeoutError, asyncio.TimeoutError, ConnectionError):
            self.process.kill()
            await self.process.wait()


async def start_workers(script: str, url: str, role: str, params: Sequence[dict[str, Any]]) -> list[Worker]:
    workers = [await Worker.start(script, url, role, **p) for p in params]
    return workers


async def stop_workers(workers: Sequence[Worker]) -> None:
    await asyncio.gather(*(worker.stop() for worker in workers))


# -- worker processes: the worker's side -------------------------------------------------------


def emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


async def command_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def next_command(reader: asyncio.StreamReader, timeout: float | None = None) -> dict[str, Any]:
    """The parent's next command; a closed stdin (the parent went away) reads as "stop"."""
    line = await asyncio.wait_for(reader.readline(), timeout)
    if not line:
        return {"command": "stop"}
    command: dict[str, Any] = json.loads(line)
    return command


def worker_url() -> str:
    url = os.environ.get(URL_ENV)
    if not url:
        raise RuntimeError(f"a worker needs the database URL in ${URL_ENV}")
    return url


# -- what a run measures, and what every series gets --------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The points of each series and how long each is measured; ``quick()`` is a smoke run."""

    processes: tuple[int, ...] = (1, 2, 4, 8)
    warmup: float = 2.0  # seconds of traffic before a processes point's window opens
    window: float = 8.0
    group_sizes: tuple[int, ...] = (10, 100, 1_000, 10_000)
    group_rounds: int = 5
    big_capacity: int = 10_000_000
    sizes: tuple[int, ...] = (100, 1024, 10 * 1024, 100 * 1024, 1024 * 1024)
    budget: float = 3.0  # seconds for each of a point's round trips and stream
    backlog_levels: tuple[int, ...] = (0, 1_000, 10_000, 100_000, 1_000_000)
    backlog_variants: tuple[str, ...] = ("other", "same", "dead")
    explain: bool = True
    memory_members: int = 1_000
    memory_rate: float = 10.0  # group_sends a second
    memory_seconds: float = 20.0
    memory_tail: float = 3.0  # seconds of sampling after the last group_send
    memory_capacity: int = 100  # the layer's default

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            processes=(1, 2, 4),
            warmup=1.0,
            window=3.0,
            group_sizes=(10, 100, 1_000),
            group_rounds=2,
            sizes=(100, 10 * 1024, 1024 * 1024),
            budget=1.0,
            backlog_levels=(0, 10_000),
            memory_members=200,
            memory_seconds=5.0,
            memory_tail=1.0,
        )


@dataclass
class Context:
    script: str  # the entry script, started again for worker processes
    url: str
    conn: Any  # an asyncpg connection for probes, bulk inserts and cleanup
    plan: Plan

    def progress(self, series: Series, row: dict[str, Any]) -> None:
        shown = ", ".join(f"{column.label} {_cell(column, row.get(column.key))}" for column in series.columns)
        print(f"  [{series.name}] {shown}", flush=True)

    async def flush(self, prefix: str) -> None:
        """Delete what a point left under ``prefix``: messages in flight when it stopped."""
        await self.conn.execute("DELETE FROM channel_layer_pg_message WHERE prefix = $1", prefix)
        await self.conn.execute("DELETE FROM channel_layer_pg_group_member WHERE prefix = $1", prefix)
