"""Where a message is stored: one row per normal channel, one per receiving process.

Process-local members of one process share a queue (their non-local part) and that queue's
capacity. Storing one row per member would let a group larger than the capacity reach only
part of a process, and would cost one row per member; one row that lists its recipients
reaches them all and is fanned out by the receiving process.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from ..naming import non_local_name, topic_for


@dataclass(frozen=True)
class Target:
    queue: str
    channel: str
    recipients: tuple[str, ...]  # the local members a per-process row is for; () for a channel
    capacity: int

    @property
    def members(self) -> int:
        return len(self.recipients) or 1


def targets_for(members: Iterable[str], capacity_for: Callable[[str], int]) -> list[Target]:
    """One target per normal channel and one per process among ``members``."""
    targets: list[Target] = []
    local: dict[str, list[str]] = {}
    for channel in members:
        queue = non_local_name(channel)
        if queue == channel:
            targets.append(Target(channel, channel, (), capacity_for(channel)))
        else:
            local.setdefault(queue, []).append(channel)
    for queue, channels in local.items():
        # Shared capacity: the strictest of the members' settings applies to the process.
        capacity = min(capacity_for(channel) for channel in channels)
        targets.append(Target(queue, queue, tuple(channels), capacity))
    return targets


def enqueue_parameters(
    prefix: str, expiry: timedelta, payload: bytes, targets: Sequence[Target]
) -> dict[str, Any]:
    """The bound parameters of statements.ENQUEUE for ``targets``."""
    return {
        "prefix": prefix,
        "expiry": expiry,
        "payload": payload,
        "queues": [target.queue for target in targets],
        "channels": [target.channel for target in targets],
        # Channel names cannot contain spaces, so a space-separated list is unambiguous; an
        # array of arrays would have to be rectangular.
        "recipients": [" ".join(target.recipients) for target in targets],
        "capacities": [target.capacity for target in targets],
        "topics": [topic_for(prefix, target.queue) for target in targets],
    }


def send_parameters(
    prefix: str, expiry: timedelta, payload: bytes, queue: str, channel: str, capacity: int
) -> dict[str, Any]:
    """The bound parameters of statements.SEND: one message for one channel."""
    return {
        "prefix": prefix,
        "queue": queue,
        "channel": channel,
        "capacity": capacity,
        "expiry": expiry,
        "payload": payload,
        "topic": topic_for(prefix, queue),
    }


def members_reached(targets: Sequence[Target], stored_queues: Collection[str]) -> int:
    return sum(target.members for target in targets if target.queue in stored_queues)
