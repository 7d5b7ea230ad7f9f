"""The channels a reader need not claim for until something says the table changed."""

from __future__ import annotations

from collections.abc import Iterable


class KnownEmpty:
    """Channels a claim found nothing for while LISTEN was in effect, with no wake-up since.

    Claiming for them again would find nothing, so a receive on one of them just waits: a
    consumer that keeps up then costs one claim per message instead of two (the empty one, and
    the one after the NOTIFY). The poll forgets them ``poll_interval`` seconds after the first
    of them was noted (loop time), not after the last wake-up: wake-ups that concern only the
    in-memory buffer come and go without touching the table, and must not put the poll off.
    """

    __slots__ = ("_channels", "_poll_interval", "_until")

    def __init__(self, poll_interval: float) -> None:
        self._channels: set[str] = set()
        self._poll_interval = poll_interval
        self._until = 0.0

    def __contains__(self, channel: object) -> bool:
        return channel in self._channels

    def forget(self) -> None:
        self._channels.clear()

    def note(self, channels: Iterable[str], now: float) -> None:
        """``channels`` were found empty at loop time ``now``."""
        if now >= self._until:
            # Those found empty before are due for the poll's look anyway.
            self._channels.clear()
        if not self._channels:
            self._until = now + self._poll_interval
        self._channels.update(channels)

    def until_poll(self, now: float) -> float:
        """Seconds from loop time ``now`` until the poll forgets them (0 or less: due)."""
        return self._until - now
