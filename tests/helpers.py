"""Shared test vocabulary."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from channel_layer_pg import PostgresChannelLayer

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
