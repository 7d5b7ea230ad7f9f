"""The one back-off between attempts to reach PostgreSQL, wherever the layer retries."""

from __future__ import annotations

import random


class Backoff:
    """Waits that double from ``first`` to at most ``most`` seconds, optionally up to a total.

    Each wait is drawn between half and all of its step: after a server restart every
    process's pool, listener and readers retry at once, and the spread keeps them from
    knocking on the server in lockstep. ``give_up_after`` bounds the seconds waited in all;
    past it the back-off is ``exhausted`` and the caller gives up. Without it the waits go on
    (at ``most`` seconds each) until ``reset()``, which a caller makes once it got through.
    """

    __slots__ = ("_first", "_give_up_after", "_most", "_step", "_waited")

    def __init__(self, first: float, most: float, *, give_up_after: float | None = None) -> None:
        if not 0 < first <= most:
            raise ValueError(f"need 0 < first <= most, not first={first!r}, most={most!r}")
        self._first = first
        self._most = most
        self._give_up_after = give_up_after
        self._step = first
        self._waited = 0.0

    @property
    def exhausted(self) -> bool:
        """Whether the waits so far used up ``give_up_after``: time to give up."""
        return self._give_up_after is not None and self._waited >= self._give_up_after

    def next(self) -> float:
        """Seconds to wait before the next attempt."""
        wait = self._step * random.uniform(0.5, 1.0)
        if self._give_up_after is not None:
            wait = max(0.0, min(wait, self._give_up_after - self._waited))
        self._waited += wait
        self._step = min(self._step * 2, self._most)
        return wait

    def reset(self) -> None:
        """Start again from ``first``: the last attempt got through."""
        self._step = self._first
        self._waited = 0.0
