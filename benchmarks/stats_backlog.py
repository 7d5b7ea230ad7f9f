"""Time stats() on a large backlog: how long an operator waits when something is piling up.

Fills the message table with ``--rows`` rows under a fresh prefix (60% on 2,000 normal
channels, 35% on 300 processes' local channels, 5% group rows listing three recipients),
plus 5,000 groups with 100,000 memberships, then times stats() and deletes what it added:

    python benchmarks/stats_backlog.py --url postgresql://postgres@127.0.0.1:5432/bench

``--vacuum`` runs VACUUM ANALYZE after filling, as autovacuum would on a server that has it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

import asyncpg
from sqlalchemy.engine import make_url

from channel_layer_pg import PostgresChannelLayer

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/bench"

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


async def run(url: str, rows: int, rounds: int, vacuum: bool) -> None:
    prefix = f"stats{uuid.uuid4().hex[:10]}"
    parsed = make_url(url)
    conn = await asyncpg.connect(
        user=parsed.username,
        password=parsed.password or None,
        host=parsed.query.get("host") or parsed.host,
        port=parsed.port,
        database=parsed.database,
    )
    try:
        started = time.perf_counter()
        await conn.execute(FILL, prefix, rows)
        await conn.execute(GROUPS, prefix)
        print(f"filled {rows:,} rows under {prefix!r} in {time.perf_counter() - started:.1f} s")
        if vacuum:
            await conn.execute("VACUUM ANALYZE channel_layer_pg_message, channel_layer_pg_group_member")
        else:
            await conn.execute("ANALYZE channel_layer_pg_message, channel_layer_pg_group_member")
        async with PostgresChannelLayer(url=url, prefix=prefix) as layer:
            took = []
            for _ in range(rounds):
                started = time.perf_counter()
                stats = await layer.stats()
                took.append(time.perf_counter() - started)
        print(
            f"stats() over {stats.messages:,} queued rows, {stats.channel_count:,} channels, "
            f"{stats.group_count:,} groups: median {statistics.median(took):.2f} s, "
            f"best {min(took):.2f} s of {rounds}"
        )
    finally:
        await conn.execute("DELETE FROM channel_layer_pg_message WHERE prefix = $1", prefix)
        await conn.execute("DELETE FROM channel_layer_pg_group_member WHERE prefix = $1", prefix)
        if vacuum:
            await conn.execute("VACUUM channel_layer_pg_message, channel_layer_pg_group_member")
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("CHANNEL_LAYER_PG_URL", DEFAULT_URL))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--vacuum", action="store_true", help="VACUUM ANALYZE after filling")
    args = parser.parse_args()
    asyncio.run(run(args.url, args.rows, args.rounds, args.vacuum))


if __name__ == "__main__":
    main()
