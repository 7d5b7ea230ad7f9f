"""Process-local channels: names only their layer instance may receive on."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any

import pytest

from channel_layer_pg import PostgresChannelLayer
from channel_layer_pg.faults import FaultHooks
from tests.conftest import connect
from tests.helpers import CLAIMS, TIMEOUT, LayerFactory, receive


async def test_new_channel_names_hold_prefix_client_and_a_random_part(layer: PostgresChannelLayer) -> None:
    first, second = await layer.new_channel(), await layer.new_channel("other")
    assert re.fullmatch(rf"specific\.{layer.client_prefix}![0-9a-f]+", first)
    assert second.startswith(f"other.{layer.client_prefix}!")
    assert first != await layer.new_channel()


async def test_new_channel_rejects_a_prefix_that_makes_an_invalid_name(layer: PostgresChannelLayer) -> None:
    with pytest.raises(TypeError, match="new_channel prefix"):
        await layer.new_channel("bad prefix")


async def test_a_process_local_channel_receives_what_is_sent_to_it(make_layer: LayerFactory) -> None:
    owner, sender = make_layer(), make_layer()
    channel = await owner.new_channel()
    await sender.send(channel, {"type": "direct"})
    assert await receive(owner, channel) == {"type": "direct"}


async def test_receiving_on_another_instances_channel_is_an_error(make_layer: LayerFactory) -> None:
    owner, other = make_layer(), make_layer()
    channel = await owner.new_channel()
    with pytest.raises(ValueError, match="another layer instance"):
        await other.receive(channel)


async def test_local_channels_of_one_instance_are_delivered_separately(layer: PostgresChannelLayer) -> None:
    channels = [await layer.new_channel() for _ in range(5)]
    for n, channel in enumerate(channels):
        await layer.send(channel, {"type": "n", "n": n})
    got = await asyncio.wait_for(asyncio.gather(*(layer.receive(c) for c in reversed(channels))), TIMEOUT)
    assert [message["n"] for message in got] == [4, 3, 2, 1, 0]


async def test_many_waiting_local_receivers_all_get_their_message(layer: PostgresChannelLayer) -> None:
    channels = [await layer.new_channel() for _ in range(100)]
    waiting = [asyncio.create_task(layer.receive(channel)) for channel in channels]
    await asyncio.sleep(0)
    for n, channel in enumerate(channels):
        await layer.send(channel, {"type": "n", "n": n})
    got = await asyncio.wait_for(asyncio.gather(*waiting), TIMEOUT)
    assert [message["n"] for message in got] == list(range(100))


async def test_the_poll_finds_a_row_skipped_while_locked_despite_traffic_in_memory(
    make_layer: LayerFactory, database_url: str
) -> None:
    # A claim skips a row another session holds locked; when that lock goes, no NOTIFY says
    # so, and only the poll looks again. Messages this layer delivers in memory to its other
    # local channels keep waking the reader meanwhile: they must not keep putting the poll off.
    found_empty = asyncio.Event()
    looks = 0

    class TwoLooksAtTheLockedRow(FaultHooks):
        async def after_statement(self, name: str, parameters: Mapping[str, Any], result: Any) -> None:
            # The receive's own claim, then its reader's, which LISTENs first: from the
            # second on, the reader counts on a NOTIFY or the poll to look again.
            nonlocal looks
            if name in CLAIMS and skipped in parameters["channels"] and not result:
                looks += 1
                if looks == 2:
                    found_empty.set()

    layer, other = make_layer(fault_hooks=TwoLooksAtTheLockedRow(poll_interval=0.5)), make_layer()
    skipped, busy = await layer.new_channel(), await layer.new_channel()
    await other.send(skipped, {"type": "was locked"})
    locker = await connect(database_url)
    try:
        await locker.execute("BEGIN")
        await locker.execute("SELECT id FROM channel_layer_pg_message WHERE channel = $1 FOR UPDATE", skipped)
        receiving = asyncio.create_task(layer.receive(skipped))
        await asyncio.wait_for(found_empty.wait(), TIMEOUT)
    finally:
        await locker.close()  # the lock goes, and nothing tells the reader

    async def traffic() -> None:
        while True:
            await layer.send(busy, {"type": "in memory"})
            await receive(layer, busy)
            await asyncio.sleep(0.05)

    chatter = asyncio.create_task(traffic())
    try:
        assert await asyncio.wait_for(receiving, TIMEOUT) == {"type": "was locked"}
    finally:
        chatter.cancel()
        await asyncio.gather(chatter, return_exceptions=True)
