"""Cancelling receive() is how Channels stops a consumer: it must never lose a message."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import pytest

from channel_layer_pg import PostgresChannelLayer
from channel_layer_pg.errors import LayerClosedError
from channel_layer_pg.store import backend as backend_module
from channel_layer_pg.store.backend import LoopBackend
from channel_layer_pg.store.claims import QueueReader
from tests.conftest import connect
from tests.helpers import TIMEOUT, LayerFactory, Sql, receive, signal_when_waiting


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
    await receive_cancelled_after_its_claim(layer, "test.claim-race", monkeypatch)
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


# -- closing with messages in hand ------------------------------------------------------------
# A message claimed for a receive that was then cancelled waits in the layer for the next
# receive on its channel. If the layer closes first, another process must still get it.


async def test_close_puts_back_a_claimed_message_no_receive_took(
    make_layer: LayerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    closing, other = make_layer(), make_layer()
    await other.send("test.close-held", {"type": "first"})
    await other.send("test.close-held", {"type": "second"})
    await receive_cancelled_after_its_claim(closing, "test.close-held", monkeypatch)
    assert (await closing.stats()).held_in_process == 1
    await closing.close()
    # Back under its old id, so still ahead of the message sent after it.
    assert await receive(other, "test.close-held") == {"type": "first"}
    assert await receive(other, "test.close-held") == {"type": "second"}


async def test_close_waits_for_a_receive_s_claim_and_puts_back_its_message(
    make_layer: LayerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    closing, other = make_layer(), make_layer()
    await other.send("test.close-inline", {"type": "kept"})
    claiming, release = asyncio.Event(), asyncio.Event()
    claim = LoopBackend._claim

    async def held_claim(self: LoopBackend, *args: Any) -> Any:
        claiming.set()
        await release.wait()
        return await claim(self, *args)

    close_reader = QueueReader.close

    async def close_then_release(self: QueueReader, exc: BaseException) -> Any:
        in_flight = await close_reader(self, exc)
        release.set()  # the claim ends only once close() holds it among those to wait for
        return in_flight

    monkeypatch.setattr(LoopBackend, "_claim", held_claim)
    monkeypatch.setattr(QueueReader, "close", close_then_release)
    receiving = asyncio.create_task(closing.receive("test.close-inline"))
    await asyncio.wait_for(claiming.wait(), TIMEOUT)
    receiving.cancel()  # the receive's own claim goes on without it
    await asyncio.gather(receiving, return_exceptions=True)
    await asyncio.wait_for(closing.close(), TIMEOUT)
    monkeypatch.undo()
    assert await receive(other, "test.close-inline") == {"type": "kept"}


async def test_close_waits_for_the_reader_s_claim_and_puts_back_its_message(
    make_layer: LayerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    closing, other = make_layer(), make_layer()
    claiming, release = asyncio.Event(), asyncio.Event()
    claim = LoopBackend._claim
    claims = 0

    held_claim_found: list[Any] = []

    async def second_claim_held(self: LoopBackend, *args: Any) -> Any:
        # The first is the receive's own, which finds nothing; the second is the reader's.
        nonlocal claims
        claims += 1
        if claims == 1:
            return await claim(self, *args)
        claiming.set()
        await release.wait()
        rows = await claim(self, *args)
        held_claim_found.extend(rows)
        return rows

    monkeypatch.setattr(LoopBackend, "_claim", second_claim_held)
    receiving = asyncio.create_task(closing.receive("test.close-reader"))
    await asyncio.wait_for(claiming.wait(), TIMEOUT)
    await other.send("test.close-reader", {"type": "kept"})
    close = asyncio.create_task(closing.close())
    # Once the receive has failed, the reader was cancelled in the same step: the message
    # its claim is about to find has no receiver left.
    results = await asyncio.wait_for(asyncio.gather(receiving, return_exceptions=True), TIMEOUT)
    assert isinstance(results[0], LayerClosedError)
    release.set()
    await asyncio.wait_for(close, TIMEOUT)
    monkeypatch.undo()
    # The held claim itself took the message (close() waited for it), and put it back.
    assert [row.channel for row in held_claim_found] == ["test.close-reader"]
    assert await receive(other, "test.close-reader") == {"type": "kept"}


async def test_close_gives_up_putting_messages_back_when_the_table_stays_locked(
    make_layer: LayerFactory,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    closing = make_layer()
    await closing.send("test.close-locked", {"type": "held"})
    await receive_cancelled_after_its_claim(closing, "test.close-locked", monkeypatch)
    monkeypatch.setattr(backend_module, "CLOSE_GRACE", 0.5)
    locker = await connect(database_url)
    try:
        # What a migration or VACUUM FULL would hold: inserts wait for it.
        await locker.execute("BEGIN; LOCK TABLE channel_layer_pg_message IN SHARE MODE")
        with caplog.at_level(logging.WARNING, logger="channel_layer_pg"):
            await asyncio.wait_for(closing.close(), TIMEOUT)
    finally:
        await locker.close()
    assert "1 claimed messages no receive took are lost" in caplog.text


async def test_close_leaves_process_local_messages_behind(
    make_layer: LayerFactory, sql: Sql, prefix: str
) -> None:
    closing = make_layer()
    channel = await closing.new_channel()
    await closing.send(channel, {"type": "held in memory"})
    await closing.close()
    # Nobody else can ever receive on that channel: nothing goes to the table for it.
    assert await sql("SELECT count(*) FROM channel_layer_pg_message WHERE prefix = $1", prefix) == [(0,)]


async def receive_cancelled_after_its_claim(
    layer: PostgresChannelLayer, channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receive on ``channel`` cancelled as its claim returns: the layer keeps the message."""
    receiving: asyncio.Task[Any] | None = None
    claim = LoopBackend._claim

    async def claim_then_cancel(self: LoopBackend, *args: Any) -> Any:
        rows = await claim(self, *args)
        assert receiving is not None
        receiving.cancel()  # the rows are claimed; their receiver is gone
        return rows

    monkeypatch.setattr(LoopBackend, "_claim", claim_then_cancel)
    try:
        receiving = asyncio.create_task(layer.receive(channel))
        await asyncio.gather(receiving, return_exceptions=True)
    finally:
        monkeypatch.setattr(LoopBackend, "_claim", claim)
    assert receiving.cancelled()
