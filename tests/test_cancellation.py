"""Cancelling receive() is how Channels stops a consumer: it must never lose a message."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from channel_layer_pg import PostgresChannelLayer
from channel_layer_pg.backend import LoopBackend
from channel_layer_pg.reader import QueueReader
from tests.helpers import TIMEOUT, LayerFactory, receive, signal_when_waiting


async def test_a_cancelled_receive_leaves_the_message_for_the_next(layer: PostgresChannelLayer) -> None:
    receiving = asyncio.create_task(layer.receive("test.cancel"))
    await asyncio.sleep(0)
    receiving.cancel()
    await asyncio.gather(receiving, return_exceptions=True)
    await layer.send("test.cancel", {"type": "kept"})
    assert await receive(layer, "test.cancel") == {"type": "kept"}


async def test_a_message_claimed_for_a_receive_cancelled_meanwhile_is_kept(
    layer: PostgresChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    await layer.send("test.claim-race", {"type": "first"})
    await layer.send("test.claim-race", {"type": "second"})
    receiving: asyncio.Task[Any] | None = None
    claim = LoopBackend._claim

    async def claim_then_cancel(self: LoopBackend, *args: Any) -> Any:
        rows = await claim(self, *args)
        assert receiving is not None
        receiving.cancel()  # the rows are claimed; their receiver is gone
        return rows

    monkeypatch.setattr(LoopBackend, "_claim", claim_then_cancel)
    receiving = asyncio.create_task(layer.receive("test.claim-race"))
    await asyncio.gather(receiving, return_exceptions=True)
    assert receiving.cancelled()
    monkeypatch.undo()
    assert await receive(layer, "test.claim-race") == {"type": "first"}
    assert await receive(layer, "test.claim-race") == {"type": "second"}


async def test_a_message_handed_to_a_receive_cancelled_at_that_moment_is_kept(
    layer: PostgresChannelLayer, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiving: asyncio.Task[Any] | None = None
    dispatch = QueueReader._dispatch

    def dispatch_then_cancel(self: QueueReader, rows: Any) -> None:
        dispatch(self, rows)
        assert receiving is not None
        receiving.cancel()  # the message is in the waiter's hands, the task not resumed yet

    waiting = signal_when_waiting(monkeypatch)
    monkeypatch.setattr(QueueReader, "_dispatch", dispatch_then_cancel)
    receiving = asyncio.create_task(layer.receive("test.hand-race"))
    assert await asyncio.to_thread(waiting.wait, TIMEOUT)
    await layer.send("test.hand-race", {"type": "first"})
    await layer.send("test.hand-race", {"type": "second"})
    await asyncio.wait_for(asyncio.gather(receiving, return_exceptions=True), TIMEOUT)
    assert receiving.cancelled()
    monkeypatch.undo()
    assert await receive(layer, "test.hand-race") == {"type": "first"}
    assert await receive(layer, "test.hand-race") == {"type": "second"}


async def test_random_cancellations_under_traffic_lose_and_duplicate_nothing(
    make_layer: LayerFactory,
) -> None:
    sender, receiver = make_layer(capacity=1000), make_layer(capacity=1000)
    total = 300
    got: list[int] = []
    rng = random.Random(1234)

    async def send_all() -> None:
        for n in range(total):
            await sender.send("test.chaos", {"type": "n", "n": n})

    sending = asyncio.create_task(send_all())
    async with asyncio.timeout(TIMEOUT * 3):
        while len(got) < total:
            try:
                # Many of these time out mid-claim; each timeout is a cancel.
                message = await asyncio.wait_for(
                    receiver.receive("test.chaos"), rng.choice([0.0005, 0.002, 0.05])
                )
            except asyncio.TimeoutError:
                continue
            got.append(message["n"])
    await sending
    assert got == list(range(total))
