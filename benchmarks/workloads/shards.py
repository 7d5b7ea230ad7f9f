"""A sharded layer over 1, 2 and 3 servers: messages/s, each shard's work, and group_send's cost.

For each number of shards k (1 up to the servers given), a ShardedChannelLayer on the first k:

- ``send+receive``: ``--count`` messages sent over 64 channels (64 sends in flight), then all
  received; messages/s over both;
- ``group_send``: ms per group_send to a group of ``--members`` normal channels spread over the
  shards, sent one after another; what each further shard adds is its own statement;
- ``commits per shard``: pg_stat_database.xact_commit deltas of each shard's database over the
  whole run of that k, the share of the work each server did (on a shared server other
  clients' commits count too; embedded servers are the layer's alone).

Without ``--url``, three embedded servers are started (a few seconds each) and stopped after.
On a machine with few cores every server shares the same cores: more shards then spread the
work, but cannot show more throughput. The figure that carries over is the commits per shard.

    python benchmarks/bench.py shards [--url URL --url URL ...] [--count 2000] [--members 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from contextlib import ExitStack

from harness.db import connect

from channel_layer_pg import ShardedChannelLayer, migrate
from channel_layer_pg.embedded import embedded_server

PREFIX = "bench_shards"
CHANNELS = 64
GROUP_SENDS = 200


async def commits(urls: list[str]) -> list[int]:
    counts = []
    for url in urls:
        conn = await connect(url)
        try:
            counts.append(
                await conn.fetchval(
                    "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
                )
            )
        finally:
            await conn.close()
    return counts


async def one_setting(urls: list[str], count: int, members: int) -> tuple[float, float, list[int]]:
    layer = ShardedChannelLayer(shards=urls, prefix=PREFIX, capacity=count)
    try:
        await layer.flush()
        before = await commits(urls)
        channels = [f"bench.shards{n}" for n in range(CHANNELS)]
        started = time.perf_counter()
        for first in range(0, count, CHANNELS):
            batch = range(first, min(first + CHANNELS, count))
            await asyncio.gather(*(layer.send(channels[n % CHANNELS], {"type": "m", "n": n}) for n in batch))
        for first in range(0, count, CHANNELS):
            batch = range(first, min(first + CHANNELS, count))
            await asyncio.gather(*(layer.receive(channels[n % CHANNELS]) for n in batch))
        rate = count / (time.perf_counter() - started)
        group = [f"bench.member{n}" for n in range(members)]
        for channel in group:
            await layer.group_add("bench-room", channel)
        started = time.perf_counter()
        for _ in range(GROUP_SENDS):
            await layer.group_send("bench-room", {"type": "g"})
        per_group_send = (time.perf_counter() - started) / GROUP_SENDS * 1000
        after = await commits(urls)
        await layer.flush()
        return rate, per_group_send, [b - a for a, b in zip(before, after, strict=True)]
    finally:
        await layer.close()


async def run(urls: list[str], count: int, members: int) -> None:
    print(f"cpus: {os.cpu_count()}; {count} messages over {CHANNELS} channels; group of {members}")
    print(f"{'shards':>6}  {'send+receive msg/s':>18}  {'group_send ms':>13}  commits per shard")
    for k in range(1, len(urls) + 1):
        rate, per_group_send, deltas = await one_setting(urls[:k], count, members)
        print(f"{k:>6}  {rate:>18.0f}  {per_group_send:>13.2f}  {' / '.join(str(d) for d in deltas)}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.py shards", description=__doc__.split("\n")[0])
    parser.add_argument("--url", action="append", help="a shard (migrated); repeat (default: 3 embedded)")
    parser.add_argument("--count", type=int, default=2000, help="messages sent and received per setting")
    parser.add_argument("--members", type=int, default=30, help="members of the group_send's group")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        urls = args.url
        if not urls:
            urls = [stack.enter_context(embedded_server()).url for _ in range(3)]
            for url in urls:
                migrate(url)
        asyncio.run(run(urls, args.count, args.members))
    return 0
