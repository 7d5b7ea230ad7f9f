"""Cancelling receive() is how Channels stops a consumer: it must never lose a message."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from typing import Any

import pytest

from channel_layer_pg import PostgresChannelLayer
from channel_layer_pg.errors import LayerClosedError
from channel_layer_pg.faults import FaultHooks
from tests.conftest import connect
from tests.helpers import (
    CLAIMS,
    TIMEOUT,
    CancelAfterClaim,
    CancelAtHandOver,
    LayerFactory,
    Sql,
    receive,
)


async def test_a_cancelled_receive_leaves_the_message_for_the_next(layer: PostgresChannelLayer) -> None:
    receiving = asyncio.create_task(layer.receive("test.cancel"))
    await asyncio.sleep(0)
    receiving.cancel()
    await asyncio.gather(receiving, return_exceptions=True)
    await layer.send("test.cancel", {"type": "kept"})
    assert await receive(layer, "test.cancel") == {"type": "kept"}


async def test_a_message_claimed_for_a_receive_cancelled_meanwhile_is_kept(make_layer: LayerFactory) -> None:
    faults = CancelAfterClaim()
    layer = make_layer(fault_hooks=faults)
    await layer.send("test.claim-race", {"type": "first"})
    await layer.send("test.claim-race", {"type": "second"})
    await receive_cancelled_after_its_claim(layer, faults, "test.claim-race")
    assert await receive(layer, "test.claim-race") == {"type": "first"}
    assert await receive(layer, "test.claim-race") == {"type": "second"}


async def test_a_message_handed_to_a_receive_cancelled_at_that_moment_is_kept(
    make_layer: LayerFactory,
) -> None:
    faults = CancelAtHandOver()
    layer = make_layer(fault_hooks=faults)
    receiving = faults.target = asyncio.create_task(layer.receive("test.hand-race"))
    assert await asyncio.to_thread(faults.waiting.wait, TIMEOUT)
    await layer.send("test.hand-race", {"type": "first"})
    await layer.send("test.hand-race", {"type": "second"})
    await asyncio.wait_for(asyncio.gather(receiving, return_exceptions=True), TIMEOUT)
    assert receiving.cancelled()
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
            except TimeoutError:
                continue
            got.append(message["n"])
    await sending
    assert got == list(range(total))


# -- closing with messages in hand ------------------------------------------------------------
# A message claimed for a receive that was then cancelled waits in the layer for the next
# receive on its channel. If the layer closes first, another process must still get it.


async def test_close_puts_back_a_claimed_message_no_receive_took(make_layer: LayerFactory) -> None:
    faults = CancelAfterClaim()
    closing, other = make_layer(fault_hooks=faults), make_layer()
    await other.send("test.close-held", {"type": "first"})
    await other.send("test.close-held", {"type": "second"})
    await receive_cancelled_after_its_claim(closing, faults, "test.close-held")
    assert (await closing.stats()).held_in_process == 1
    await closing.close()
    # Back under its old id, so still ahead of the message sent after it.
    assert await receive(other, "test.close-held") == {"type": "first"}
    assert await receive(other, "test.close-held") == {"type": "second"}


async def test_close_waits_for_a_receive_s_claim_and_puts_back_its_message(
    make_layer: LayerFactory,
) -> None:
    claimed, release = asyncio.Event(), asyncio.Event()
    running_at_close: list[int] = []

    class HeldClaim(FaultHooks):
        async def after_statement(self, name: str, parameters: Mapping[str, Any], result: Any) -> None:
            if name in CLAIMS:
                claimed.set()  # the row is taken from the table: only this claim holds it
                await release.wait()

        async def receives_closed(self, claims_running: int) -> None:
            running_at_close.append(claims_running)
            release.set()  # the claim ends only once close() holds it among those to wait for

    closing, other = make_layer(fault_hooks=HeldClaim()), make_layer()
    await other.send("test.close-inline", {"type": "kept"})
    receiving = asyncio.create_task(closing.receive("test.close-inline"))
    await asyncio.wait_for(claimed.wait(), TIMEOUT)
    receiving.cancel()  # the receive's own claim goes on without it
    await asyncio.gather(receiving, return_exceptions=True)
    await asyncio.wait_for(closing.close(), TIMEOUT)
    assert running_at_close == [1]
    assert await receive(other, "test.close-inline") == {"type": "kept"}


async def test_close_waits_for_the_reader_s_claim_and_puts_back_its_message(
    make_layer: LayerFactory,
) -> None:
    claiming, sent, claimed, release = asyncio.Event(), asyncio.Event(), asyncio.Event(), asyncio.Event()
    held_claim_found: list[str] = []

    class SecondClaimHeld(FaultHooks):
        claims = 0

        async def before_statement(self, name: str, parameters: Mapping[str, Any]) -> None:
            # The first is the receive's own, which finds nothing; the second is the reader's,
            # held until the message is in the table so that it finds it.
            if name in CLAIMS:
                self.claims += 1
                if self.claims == 2:
                    claiming.set()
                    await sent.wait()

        async def after_statement(self, name: str, parameters: Mapping[str, Any], result: Any) -> None:
            if name in CLAIMS and self.claims == 2:
                held_claim_found.extend(row["channel"] for row in result)
                claimed.set()
                await release.wait()

        async def receives_closed(self, claims_running: int) -> None:
            release.set()  # the claim ends only once close() holds it among those to wait for

    closing, other = make_layer(fault_hooks=SecondClaimHeld()), make_layer()
    receiving = asyncio.create_task(closing.receive("test.close-reader"))
    await asyncio.wait_for(claiming.wait(), TIMEOUT)
    await other.send("test.close-reader", {"type": "kept"})
    sent.set()
    await asyncio.wait_for(claimed.wait(), TIMEOUT)
    await asyncio.wait_for(closing.close(), TIMEOUT)
    # The receive failed as close() began: the message the held claim took had no receiver left.
    results = await asyncio.wait_for(asyncio.gather(receiving, return_exceptions=True), TIMEOUT)
    assert isinstance(results[0], LayerClosedError)
    # The held claim itself took the message (close() waited for it), and put it back.
    assert held_claim_found == ["test.close-reader"]
    assert await receive(other, "test.close-reader") == {"type": "kept"}


async def test_close_gives_up_putting_messages_back_when_the_table_stays_locked(
    make_layer: LayerFactory, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    faults = CancelAfterClaim()
    closing = make_layer(fault_hooks=faults, close_timeout=0.5)
    await closing.send("test.close-locked", {"type": "held"})
    await receive_cancelled_after_its_claim(closing, faults, "test.close-locked")
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
    layer: PostgresChannelLayer, faults: CancelAfterClaim, channel: str
) -> None:
    """A receive on ``channel`` cancelled as its claim returns: the layer keeps the message."""
    receiving = faults.target = asyncio.create_task(layer.receive(channel))
    await asyncio.wait_for(asyncio.gather(receiving, return_exceptions=True), TIMEOUT)
    assert receiving.cancelled()
