"""What encoding one message costs: the checks every send makes, then the serializer.

No database: ``Codec.encode`` of the layer's configuration (the message checks of
channel_layer_pg/messages.py, the serializer, the size limit; no encryption), for msgpack and
json, on a typical chat message, a nested one, a list of 100,000 ints and 1 MB of bytes
(msgpack only). Where the checkout has messages.py, ``is_well_formed`` alone is timed too:
the share of the checks. Variants take turns within each round, so a neighbour's load falls
on all of them alike; the median of the rounds is printed, with the lowest and highest round.
Run it under each checkout's PYTHONPATH, taking turns, to compare two.

    python benchmarks/bench.py encode [--rounds 15]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import statistics
import timeit
from collections.abc import Callable
from typing import Any

from channel_layer_pg.config import build_config

MESSAGES: dict[str, tuple[dict[str, Any], int]] = {
    "chat": ({"type": "chat.message", "text": "hello"}, 20_000),
    "nested": (
        {
            "type": "websocket.send",
            "data": {"user": {"id": 1, "name": "x", "tags": ["a", "b"]}, "items": [{"a": 1}, {"b": 2}]},
        },
        10_000,
    ),
    "100k ints": ({"type": "samples", "values": list(range(100_000))}, 3),
    "1 MB bytes": ({"type": "blob", "data": b"x" * 1_000_000}, 100),
}


def variants() -> dict[str, tuple[Callable[[], object], int]]:
    found: dict[str, tuple[Callable[[], object], int]] = {}
    for serializer in ("msgpack", "json"):
        # The limit lifted: the 1 MB message is a little over the default where there is one.
        options: dict[str, Any] = {"url": "postgresql://h/db", "serializer": serializer}
        if "max_message_size" in importlib.import_module("channel_layer_pg.config").OPTION_NAMES:
            options["max_message_size"] = None
        encode = build_config(options).codec.encode
        # Where encryption seals each message for its channel, encode() takes the channel.
        where = {"channel": "c"} if "channel" in inspect.signature(encode).parameters else {}
        for name, (message, number) in MESSAGES.items():
            if serializer == "json" and isinstance(message.get("data"), bytes):
                continue
            found[f"{serializer} encode, {name}"] = ((lambda e=encode, m=message, w=where: e(m, **w)), number)
    try:
        is_well_formed = importlib.import_module("channel_layer_pg.messages").is_well_formed
    except (ImportError, AttributeError):
        return found
    for name, (message, number) in MESSAGES.items():
        found[f"check alone, {name}"] = ((lambda m=message: is_well_formed(m)), number)
    return found


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="rounds (default: %(default)s)")
    args = parser.parse_args(argv)
    timed = variants()
    samples: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(args.rounds):
        for name, (call, number) in timed.items():
            samples[name].append(timeit.timeit(call, number=number) / number * 1e6)
    width = max(map(len, timed))
    print(f"{'µs per call':<{width}}  median     (lowest - highest of {args.rounds} rounds)")
    for name, values in samples.items():
        print(f"{name:<{width}}  {statistics.median(values):9.2f}  ({min(values):.2f} - {max(values):.2f})")
    return 0
