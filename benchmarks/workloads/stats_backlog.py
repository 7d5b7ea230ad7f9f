"""Stats on a backlog: seconds one ``layer.stats()`` takes with a million rows queued.

    python benchmarks/bench.py stats-backlog [--url URL] [--rows 1000000] [--rounds 5] [--vacuum]

Fills the message table with ``--rows`` rows under a fresh prefix (60% on 2,000 normal
channels, 35% on 300 processes' local channels, 5% group rows listing three recipients),
plus 5,000 groups with 100,000 memberships, with one INSERT ... SELECT each; runs ANALYZE
(VACUUM ANALYZE with ``--vacuum``, as autovacuum would); then times ``--rounds`` calls of
``stats()`` (median and best, in seconds) and deletes what it added.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from harness.cli import add_url, print_header
from harness.compare import token
from harness.db import connect, delete_prefix
from harness.layers import ours

FILL = """
INSERT INTO channel_layer_pg_message (prefix, queue, channel, expires_at, payload, recipients)
SELECT $1, queue, channel, now() + interval '50 seconds' + (i % 10) * interval '1 second',
       '\\x00112233445566778899'::bytea, recipients
FROM generate_series(1, $2::int) AS i,
LATERAL (SELECT CASE WHEN i % 20 < 12 THEN 'chan.' || (i::bigint * 7919 % 2000)
                     ELSE 'specific.p' || (i % 300) || '!' END AS queue) AS q,
LATERAL (SELECT CASE WHEN i % 20 < 12 THEN q.queue
                     WHEN i % 20 < 19 THEN q.queue || 'c' || (i % 10)
                     ELSE q.queue END AS channel,
                CASE WHEN i % 20 = 19 THEN ARRAY[q.queue || 'c1', q.queue || 'c2', q.queue || 'c3']
                END AS recipients) AS c
"""
GROUPS = """
INSERT INTO channel_layer_pg_group_member (prefix, group_name, channel, expires_at)
SELECT $1, 'room' || (i % 5000), 'specific.p' || (i % 300) || '!c' || i, now() + interval '1 day'
FROM generate_series(1, 100000) AS i
"""


async def run(args: argparse.Namespace) -> int:
    await print_header(args.url, args.label)
    prefix = f"stats{token()}"
    conn = await connect(args.url)
    try:
        started = time.perf_counter()
        await conn.execute(FILL, prefix, args.rows)
        await conn.execute(GROUPS, prefix)
        print(f"filled {args.rows:,} rows under {prefix!r} in {time.perf_counter() - started:.1f} s")
        analyze = "VACUUM ANALYZE" if args.vacuum else "ANALYZE"
        await conn.execute(f"{analyze} channel_layer_pg_message, channel_layer_pg_group_member")
        async with ours(args.url, prefix) as layer:
            took = []
            for _ in range(args.rounds):
                started = time.perf_counter()
                stats = await layer.stats()
                took.append(time.perf_counter() - started)
        print(
            f"stats() over {stats.messages:,} queued rows, {stats.channel_count:,} channels, "
            f"{stats.group_count:,} groups: median {statistics.median(took):.2f} s, "
            f"best {min(took):.2f} s of {args.rounds}"
        )
    finally:
        await delete_prefix(conn, prefix)
        if args.vacuum:
            await conn.execute("VACUUM channel_layer_pg_message, channel_layer_pg_group_member")
        await conn.close()
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.py stats-backlog", description=__doc__.split("\n\n")[0])
    add_url(parser)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--vacuum", action="store_true", help="VACUUM ANALYZE after filling")
    return asyncio.run(run(parser.parse_args(argv)))
