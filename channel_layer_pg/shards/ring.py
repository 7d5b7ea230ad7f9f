"""Which shard holds a channel: a consistent-hash ring keyed by stable shard names.

Every process must place a channel on the same shard, so the hash is SHA-256 (Python's own
``hash()`` is seeded per process) and each shard's points on the ring come from its name
alone, never from its position in the list. Adding a shard then moves only the names whose
nearest point is now one of the new shard's, about 1/n of them, all onto the new shard;
removing one moves only its own names, spread over the others.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Sequence

from ..naming import PROCESS_ID_PATTERN, is_process_local, non_local_name

# Points per shard. With 256 each, a shard's share of the names is within a few percent of
# 1/n for the handful of shards a site runs; more points cost only memory and start-up time.
POINTS_PER_SHARD = 256


def _point(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def routing_key(channel: str) -> str:
    """The part of ``channel`` that decides its shard.

    A normal channel is routed by its whole name. A process-local one (``prefix.p0123456789ab!x``)
    by the process id before its ``!``: every name the layer instance makes, whatever its
    prefix, then lives on one shard, the one its listener, liveness lock and memberships use.
    """
    if not is_process_local(channel):
        return channel
    queue = non_local_name(channel)[:-1]
    process_id = queue.rsplit(".", 1)[-1]
    if re.fullmatch(PROCESS_ID_PATTERN, process_id):
        return process_id
    return queue + "!"


class HashRing:
    """Shard names on a ring of 64-bit points; a key belongs to the next point clockwise."""

    def __init__(self, names: Sequence[str]) -> None:
        if not names:
            raise ValueError("a hash ring needs at least one shard")
        if len(set(names)) != len(names):
            raise ValueError(f"shard names must be unique, got {list(names)!r}")
        points = sorted((_point(f"{name}#{i}"), name) for name in names for i in range(POINTS_PER_SHARD))
        self._points = [point for point, _ in points]
        self._names = [name for _, name in points]
        self.names: tuple[str, ...] = tuple(names)

    def shard_for_key(self, key: str) -> str:
        index = bisect.bisect(self._points, _point(key)) % len(self._points)
        return self._names[index]

    def shard_of(self, channel: str) -> str:
        """The name of the shard that holds ``channel`` (see routing_key)."""
        return self.shard_for_key(routing_key(channel))
