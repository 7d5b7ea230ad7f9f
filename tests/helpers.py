"""Shared test vocabulary."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from channel_layer_pg import PostgresChannelLayer
from channel_layer_pg.faults import FaultHooks

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
    except TimeoutError:
        return True
    return False


# The statements that claim rows for receives, as fault hooks see them named.
CLAIMS = frozenset({"statements.CLAIM", "statements.CLAIM_CHANNEL"})


def without_the_poll() -> FaultHooks:
    """Fault hooks that put the readers' safety-net poll an hour away.

    A receive that completes within TIMEOUT was then woken by a NOTIFY or a reconnect, never
    by the poll that would otherwise hide a lost wake-up.
    """
    return FaultHooks(poll_interval=3600.0)


def cancel(task: asyncio.Task[Any], times: int = 1) -> None:
    """Cancel ``task`` now if it runs on this thread's loop, else as soon as its loop can."""
    loop = task.get_loop()
    try:
        here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    for _ in range(times):
        if loop is here:
            task.cancel()
        else:
            loop.call_soon_threadsafe(task.cancel)


class SignalWhenWaiting(FaultHooks):
    """Sets ``waiting`` once a claim found nothing: the receive that made it waits next.

    Tests of what happens as the reader hands a message over send only after this, so the
    message reaches the receive through the reader rather than its own first claim.
    """

    def __init__(self, *, poll_interval: float | None = None) -> None:
        super().__init__(poll_interval=poll_interval)
        self.waiting = threading.Event()

    async def after_statement(self, name: str, parameters: Mapping[str, Any], result: Any) -> None:
        if name in CLAIMS and not result:
            self.waiting.set()


class CancelAtHandOver(SignalWhenWaiting):
    """Cancels ``target`` (``times`` times) as a message is handed to it, once.

    The message is then in the receive's hands but the receive has not resumed: the moment
    a cancel must not lose it.
    """

    def __init__(self, *, times: int = 1) -> None:
        super().__init__()
        self.target: asyncio.Task[Any] | None = None
        self._times = times

    def handed_over(self, channel: str) -> None:
        task, self.target = self.target, None
        if task is not None:
            cancel(task, self._times)


class CancelAfterClaim(FaultHooks):
    """Cancels ``target`` as a claim returns its rows, once: they are claimed, their receiver gone."""

    def __init__(self) -> None:
        super().__init__()
        self.target: asyncio.Task[Any] | None = None

    async def after_statement(self, name: str, parameters: Mapping[str, Any], result: Any) -> None:
        task = self.target
        if name in CLAIMS and task is not None:
            self.target = None
            cancel(task)


@asynccontextmanager
async def channel_layers_setting(layers: dict[str, Any]) -> AsyncIterator[None]:
    """Django's CHANNEL_LAYERS set to ``layers`` inside the block, as a project's settings would.

    Channels builds each layer on first use and never closes it: those it built are closed
    on the way out.
    """
    from channels.layers import channel_layers
    from django.conf import settings
    from django.test.utils import override_settings

    if not settings.configured:
        settings.configure()
    # Changing CHANNEL_LAYERS makes Channels drop the layers it built before, on entry and exit.
    with override_settings(CHANNEL_LAYERS=layers):
        try:
            yield
        finally:
            for layer in list(channel_layers.backends.values()):
                if isinstance(layer, PostgresChannelLayer):
                    await layer.close()
