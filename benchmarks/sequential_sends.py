"""Time sequential sends: the per-statement cost that hot-path changes (logging, timing) add to.

One send at a time, so every send is one statement round trip and nothing is batched. To
compare two checkouts, run it with each on PYTHONPATH, alternating, on the same database:

    PYTHONPATH=/path/to/before python benchmarks/sequential_sends.py --url postgresql://...
    PYTHONPATH=/path/to/after python benchmarks/sequential_sends.py --url postgresql://...

It prints which checkout it imported, then the median and best of several rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

import channel_layer_pg
from channel_layer_pg import PostgresChannelLayer

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/bench"


async def run(url: str, sends: int, rounds: int) -> list[float]:
    layer = PostgresChannelLayer(url=url, prefix=f"seq{uuid.uuid4().hex[:10]}", capacity=sends + 1)
    per_send: list[float] = []
    async with layer:
        for _ in range(200):  # open the pool's connection and warm the statement cache
            await layer.send("bench.sequential", {"type": "warm-up"})
        await layer.flush()
        for _ in range(rounds):
            started = time.perf_counter()
            for number in range(sends):
                await layer.send("bench.sequential", {"type": "bench", "n": number})
            per_send.append((time.perf_counter() - started) / sends)
            await layer.flush()
    return per_send


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("CHANNEL_LAYER_PG_URL", DEFAULT_URL))
    parser.add_argument("--sends", type=int, default=2000, help="sends per round (default: 2000)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds (default: 7)")
    args = parser.parse_args()
    per_send = asyncio.run(run(args.url, args.sends, args.rounds))
    print(f"channel_layer_pg from {os.path.dirname(channel_layer_pg.__file__)}")
    print(
        f"{args.sends} sequential sends x {args.rounds} rounds: "
        f"median {statistics.median(per_send) * 1e6:.1f} us/send, best {min(per_send) * 1e6:.1f} us/send"
    )


if __name__ == "__main__":
    main()
