"""A sharded layer over 1, 2 and 3 servers: messages/s, each shard's work, and what a shard costs.

For each number of shards k (1 up to the servers given), a ShardedChannelLayer on the first k:

- ``msg/s``: ``--count`` messages sent over 64 channels (64 sends in flight), then all
  received; messages/s over both;
- ``group_send ms``: ms per group_send (``--group-sends`` of them, one after another) to a
  group of ``--members`` normal channels spread over the shards; ``+ms/shard``, what each
  shard past the first adds: ``(ms(k) - ms(1)) / (k - 1)``;
- per shard, from after a first batch of 64 (not counted: the pools connect then) to after
  the layer's close: ``messages/shard``, the rows written there (sends to its channels, group
  deliveries to its members); ``commits/shard``, its database's
  ``pg_stat_database.xact_commit`` delta; ``server CPU s/shard``, user + system seconds of its
  server's postmaster and every process under it, from /proc ("n/a" when the server is not on
  this machine);
- ``connections/shard``: the layer's sessions there, pool + LISTEN (by application_name in
  pg_stat_activity), counted after the work while a receive waits on every shard, as a
  consumer's would: what each shard costs every process.

Without ``--url``, three embedded servers are started (a few seconds each) and stopped after.
On a machine with few cores every server shares the same cores: more shards then divide the
work, but cannot show more throughput. What carries over is how the work divides.
``bench.py`` without a subcommand runs this last (``--shard-url`` for ``--url``; ``--quick``
for 500 messages and 50 group_sends).

    python benchmarks/bench.py shards [--url URL --url URL ...] [--count 2000] [--members 30]
                                      [--group-sends 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass

from harness.compare import Counts
from harness.db import LAYER_SESSIONS, POOL_SESSIONS, connect, first_line
from harness.procs import postmaster_pid, tree_cpu_seconds
from harness.table import render

from channel_layer_pg import ShardedChannelLayer, migrate
from channel_layer_pg.embedded import embedded_server

PREFIX = "bench_shards"
CHANNELS = 64
SERVERS = 3  # embedded ones, without --url
LISTEN_WAIT = 10.0


@dataclass
class Shard:
    """One shard's share of one setting."""

    messages: int = 0
    commits: int = 0
    cpu: float | None = None
    pool: int = 0
    listeners: int = 0


@dataclass
class Setting:
    rate: float
    group_send_ms: float
    shards: list[Shard]


async def _readings(urls: list[str], postmasters: list[int | None]) -> list[tuple[int, float | None]]:
    """Each shard's commits so far, and its server's CPU seconds so far."""
    readings = []
    for url, pid in zip(urls, postmasters, strict=True):
        conn = await connect(url)
        try:
            commits = await conn.fetchval(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            )
        finally:
            await conn.close()
        readings.append((int(commits), None if pid is None else tree_cpu_seconds(pid)))
    return readings


async def _sessions(url: str) -> tuple[int, int]:
    """The layer's sessions on the database at ``url``: (pool, LISTEN), counted at one instant."""
    conn = await connect(url)
    try:
        pool, listen = await conn.fetchrow(
            f"SELECT count(*) FILTER (WHERE {POOL_SESSIONS}), "
            f"count(*) FILTER (WHERE {LAYER_SESSIONS} AND NOT {POOL_SESSIONS}) "
            "FROM pg_stat_activity WHERE datname = current_database()"
        )
    finally:
        await conn.close()
    return int(pool), int(listen)


async def _connections(layer: ShardedChannelLayer, urls: list[str]) -> list[tuple[int, int]]:
    """The layer's sessions on each shard while a receive waits there, as a consumer's would.

    A layer LISTENs on a shard only while something waits on it; the wait ends once every
    shard shows its LISTEN session, or after LISTEN_WAIT seconds with what is there.
    """
    idle: dict[str, str] = {}
    for n in range(10_000):
        idle.setdefault(layer.shard_of(f"bench.idle{n}"), f"bench.idle{n}")
        if len(idle) == len(urls):
            break
    waiting = [asyncio.create_task(layer.receive(channel)) for channel in idle.values()]
    try:
        deadline = time.monotonic() + LISTEN_WAIT
        while True:
            sessions = [await _sessions(url) for url in urls]
            if all(listen for _, listen in sessions) or time.monotonic() > deadline:
                return sessions
            await asyncio.sleep(0.05)
    finally:
        for task in waiting:
            task.cancel()
        await asyncio.wait(waiting, timeout=5)


async def _send_receive(layer: ShardedChannelLayer, channels: list[str], count: int) -> None:
    """``count`` messages over ``channels``, as many sends in flight as channels; then all received."""
    for first in range(0, count, len(channels)):
        batch = range(first, min(first + len(channels), count))
        await asyncio.gather(*(layer.send(channels[n % len(channels)], {"type": "m", "n": n}) for n in batch))
    for first in range(0, count, len(channels)):
        batch = range(first, min(first + len(channels), count))
        await asyncio.gather(*(layer.receive(channels[n % len(channels)]) for n in batch))


async def one_setting(urls: list[str], postmasters: list[int | None], counts: Counts) -> Setting:
    layer = ShardedChannelLayer(
        shards=urls, prefix=PREFIX, capacity=max(counts.shard_messages, counts.shard_group_sends)
    )
    try:
        await layer.flush()
        shards = [Shard() for _ in urls]
        index = {name: n for n, name in enumerate(layer.shard_names)}  # in the order of urls
        channels = [f"bench.shards{n}" for n in range(CHANNELS)]
        # One batch first, not counted: the pools open their connections outside the figures.
        await _send_receive(layer, channels, CHANNELS)
        before = await _readings(urls, postmasters)
        count = counts.shard_messages
        started = time.perf_counter()
        await _send_receive(layer, channels, count)
        rate = count / (time.perf_counter() - started)
        for n in range(count):
            shards[index[layer.shard_of(channels[n % CHANNELS])]].messages += 1
        group = [f"bench.member{n}" for n in range(counts.shard_members)]
        for channel in group:
            await layer.group_add("bench-room", channel)
            shards[index[layer.shard_of(channel)]].messages += counts.shard_group_sends
        started = time.perf_counter()
        for _ in range(counts.shard_group_sends):
            await layer.group_send("bench-room", {"type": "g"})
        per_group_send = (time.perf_counter() - started) / counts.shard_group_sends * 1000
        for shard, (pool, listeners) in zip(shards, await _connections(layer, urls), strict=True):
            shard.pool, shard.listeners = pool, listeners
        await layer.flush()
    finally:
        await layer.close()
    # After close(): a busy backend reports its commits at most once a second, the rest when
    # its session ends.
    after = await _readings(urls, postmasters)
    for shard, (commits0, cpu0), (commits1, cpu1) in zip(shards, before, after, strict=True):
        shard.commits = commits1 - commits0
        shard.cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    return Setting(rate, per_group_send, shards)


def table(settings: list[Setting]) -> str:
    def each(values: list[str]) -> str:
        return " / ".join(values)

    rows = []
    for k, s in enumerate(settings, 1):
        added = (s.group_send_ms - settings[0].group_send_ms) / (k - 1) if k > 1 else None
        rows.append([
            str(k), f"{s.rate:,.0f}", f"{s.group_send_ms:.2f}", "-" if added is None else f"{added:+.2f}",
            each([str(sh.messages) for sh in s.shards]), each([str(sh.commits) for sh in s.shards]),
            each(["n/a" if sh.cpu is None else f"{sh.cpu:.2f}" for sh in s.shards]),
            each([f"{sh.pool}+{sh.listeners}" for sh in s.shards]),
        ])  # fmt: skip
    header = [
        "shards", "msg/s", "group_send ms", "+ms/shard", "messages/shard", "commits/shard",
        "server CPU s/shard", "connections/shard",
    ]  # fmt: skip
    return render(header, rows)


def notes(postmasters: list[int | None], embedded: bool) -> list[str]:
    cpus = os.cpu_count()
    lines = [
        f"every server runs on this machine's {cpus} cores: more shards divide the work (messages, "
        "commits, server CPU per shard) but cannot show more throughput here, which needs cores "
        "(a machine) per server; what carries over is how the work divides",
        "connections/shard: pool+LISTEN sessions the layer holds there, what each shard costs every "
        "process; +ms/shard: what each shard past the first adds to a group_send",
    ]
    if unseen := [str(n) for n, pid in enumerate(postmasters, 1) if pid is None]:
        lines.append(
            f"server CPU n/a for shard {', '.join(unseen)}: its server is not on this machine, or /proc "
            "does not show its processes (its backend's parent did not start when the server did)"
        )
    seen = [pid for pid in postmasters if pid is not None]
    if len(set(seen)) < len(seen):
        lines.append("some shards share one server: each of them shows that whole server's CPU")
    if not embedded:
        lines.append("on a server others use too, their commits, CPU and channel_layer_pg sessions count")
    return lines


async def run(urls: list[str], counts: Counts, *, embedded: bool) -> None:
    print(
        f"shards: {counts.shard_messages} messages over {CHANNELS} channels; {counts.shard_group_sends} "
        f"group_sends to {counts.shard_members} members; "
        + (f"{len(urls)} embedded servers" if embedded else f"{len(urls)} servers given"),
        flush=True,
    )
    postmasters = []
    for url in urls:
        conn = await connect(url)
        try:
            postmasters.append(await postmaster_pid(conn))
        finally:
            await conn.close()
    settings = [await one_setting(urls[:k], postmasters[:k], counts) for k in range(1, len(urls) + 1)]
    print(table(settings))
    print("\n".join(f"  - {line}" for line in notes(postmasters, embedded)), flush=True)


async def measure(urls: list[str] | None, counts: Counts) -> int:
    """Print the shard benchmark (on three embedded servers without ``urls``); 1 if they would not start."""
    # The servers start and stop blocking this loop: nothing else runs on it meanwhile.
    with ExitStack() as stack:
        embedded = not urls
        if not urls:
            try:
                urls = [stack.enter_context(embedded_server()).url for _ in range(SERVERS)]
                for url in urls:
                    migrate(url)
            except Exception as exc:
                why = f"{type(exc).__name__}: {first_line(exc)}"
                print(f"shards: not measured: embedded PostgreSQL did not start ({why})")
                return 1
        await run(urls, counts, embedded=embedded)
    return 0


def main(argv: list[str]) -> int:
    defaults = Counts()
    parser = argparse.ArgumentParser(prog="bench.py shards", description=__doc__.split("\n")[0])
    parser.add_argument("--url", action="append", help="a shard (migrated); repeat (default: 3 embedded)")
    parser.add_argument(
        "--count", type=int, default=defaults.shard_messages, help="messages sent and received per setting"
    )
    parser.add_argument("--members", type=int, default=defaults.shard_members, help="members of the group")
    parser.add_argument(
        "--group-sends", type=int, default=defaults.shard_group_sends, help="group_sends per setting"
    )
    args = parser.parse_args(argv)
    if min(args.count, args.members, args.group_sends) < 1:
        parser.error("--count, --members and --group-sends must be at least 1")
    counts = Counts(shard_messages=args.count, shard_members=args.members, shard_group_sends=args.group_sends)
    return asyncio.run(measure(args.url, counts))
