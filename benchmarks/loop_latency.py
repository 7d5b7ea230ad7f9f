"""Round-trip latency from the main thread's event loop vs a long-lived loop in another thread.

A round trip is a send and then a receive of that message on one normal channel, from one
loop, one at a time. Each scenario runs under ``asyncio.run`` with a layer of its own (same
settings); the main thread's loop and a loop in a ``threading.Thread`` alternate for
``--rounds`` rounds, since the machine may be shared. The thread's loop is served directly
only after its first loops.DIRECT_AFTER_CALLS calls: the round trips made before that go
through the layer's I/O thread, and are reported on their own line ("via the I/O thread").

    python benchmarks/loop_latency.py --url postgresql://postgres@127.0.0.1:5432/loops_wt
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import threading
import time
import uuid
from typing import Any

import channel_layer_pg
from channel_layer_pg import PostgresChannelLayer
from channel_layer_pg.loops import DIRECT_AFTER_CALLS

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/loops_wt"
CHANNEL = "bench.loop-latency"
WARM_UP = 200
MAIN = "main thread's loop, served directly"
THREAD = "loop in another thread, served directly"


async def round_trips(layer: PostgresChannelLayer, count: int) -> list[float]:
    times = []
    for number in range(count):
        started = time.perf_counter()
        await layer.send(CHANNEL, {"type": "bench", "n": number})
        await layer.receive(CHANNEL)
        times.append(time.perf_counter() - started)
    return times


async def scenario(url: str, count: int, options: dict[str, Any]) -> dict[str, list[float]]:
    """Round trips on the running loop: those made through the I/O thread first, if any, then the rest."""
    layer = PostgresChannelLayer(url=url, prefix=f"lat{uuid.uuid4().hex[:10]}", **options)
    async with layer:  # its check() is the loop's first call
        results = {}
        if threading.current_thread() is not threading.main_thread():
            # Two calls a round trip; check() made one.
            results["via the I/O thread"] = await round_trips(layer, (DIRECT_AFTER_CALLS - 1) // 2)
        await round_trips(layer, WARM_UP)
        results["served directly"] = await round_trips(layer, count)
        if layer.direct_loops != 1:
            raise RuntimeError(f"expected the loop to be served directly, {layer.direct_loops} loops are")
        return results


def in_a_thread(url: str, count: int, options: dict[str, Any]) -> dict[str, list[float]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = asyncio.run(scenario(url, count, options))
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="app-loop")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    result: dict[str, list[float]] = outcome["result"]
    return result


def percentiles(times: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(times, n=100, method="inclusive")
    return statistics.median(times) * 1e3, cuts[98] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("CHANNEL_LAYER_PG_URL", DEFAULT_URL))
    parser.add_argument("--count", type=int, default=1000, help="round trips a round (default: 1000)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds, alternating the loops (default: 10)")
    args = parser.parse_args()
    options: dict[str, Any] = {}
    print(f"channel_layer_pg from {os.path.dirname(channel_layer_pg.__file__)}")
    print(f"{args.count} send+receive round trips per round on one normal channel, {args.rounds} rounds")
    rows: dict[str, list[tuple[float, float]]] = {}
    pooled: dict[str, list[float]] = {}
    for number in range(args.rounds):
        results = {"main thread's loop": asyncio.run(scenario(args.url, args.count, options))}
        results["loop in another thread"] = in_a_thread(args.url, args.count, options)
        for where, by_route in results.items():
            for route, times in by_route.items():
                p50, p99 = percentiles(times)
                rows.setdefault(f"{where}, {route}", []).append((p50, p99))
                pooled.setdefault(f"{where}, {route}", []).extend(times)
                line = f"{where}, {route} ({len(times)}): p50 {p50:.3f}, p99 {p99:.3f} ms"
                print(f"  round {number + 1}: {line}")
    print("ranges over the rounds (ms):")
    for name, values in rows.items():
        p50s, p99s = [p50 for p50, _ in values], [p99 for _, p99 in values]
        print(
            f"  {name:<48} p50 {min(p50s):.3f}-{max(p50s):.3f} (median {statistics.median(p50s):.3f}), "
            f"p99 {min(p99s):.3f}-{max(p99s):.3f}"
        )
    print("all rounds pooled (ms):")
    for name, times in pooled.items():
        p50, p99 = percentiles(times)
        print(f"  {name:<48} p50 {p50:.3f}, p99 {p99:.3f}")
    main_p50 = [p50 for p50, _ in rows[MAIN]]
    thread_p50 = [p50 for p50, _ in rows[THREAD]]
    ratios = [thread / main for main, thread in zip(main_p50, thread_p50, strict=True)]
    pooled_ratio = percentiles(pooled[THREAD])[0] / percentiles(pooled[MAIN])[0]
    print(
        f"thread p50 / main p50, per round: {', '.join(f'{ratio:.3f}' for ratio in ratios)} "
        f"(median {statistics.median(ratios):.3f}); pooled: {pooled_ratio:.3f}"
    )


if __name__ == "__main__":
    main()
