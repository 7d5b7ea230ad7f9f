"""Shared test vocabulary."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from channel_layer_pg import PostgresChannelLayer
from channel_layer_pg.store.claims import QueueReader

# Every wait in the suite is bounded by this; nothing sleeps hoping for an outcome.
TIMEOUT = 10.0

LayerFactory = Callable[..., PostgresChannelLayer]
# Runs raw SQL on the test database: (query, *args) -> rows.
Sql = Callable[..., Awaitable[list[Any]]]


async def receive(layer: PostgresChannelLayer, channel: str) -> dict[str, Any]:
    return await asyncio.wait_for(layer.receive(channel), TIMEOUT)


async def nothing_arrives(layer: PostgresChannelLayer, channel: str, within: float = 0.5) -> bool:
    """True if no message for ``channel`` arrives within ``within`` seconds.

    Proving absence needs a bound: the receive is left waiting this long, then cancelled.
    """
    try:
        await asyncio.wait_for(layer.receive(channel), within)
    except asyncio.TimeoutError:
        return True
    return False


def signal_when_waiting(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """An event set once a receive found nothing and is about to wait for the reader task.

    Tests of what happens as the reader hands a message over send only after this, so the
    message reaches the receive through the reader rather than its own first claim.
    """
    waiting = threading.Event()
    claim_inline = QueueReader._claim_inline

    async def claim_inline_then_signal(self: QueueReader, channel: str) -> Any:
        claimed = await claim_inline(self, channel)
        waiting.set()
        return claimed

    monkeypatch.setattr(QueueReader, "_claim_inline", claim_inline_then_signal)
    return waiting
