"""Messages a layer sends to its own process-local channels stay in the process.

Only the instance that made a process-local channel can receive on it, so what that same
instance sends there has no other destination: it skips the table. It must still behave as
every other message does: in order, bounded by capacity, expiring, flushed, across loops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from asgiref.sync import async_to_sync

from channel_layer_pg import PostgresChannelLayer
from channel_layer_pg.faults import FaultHooks
from tests.helpers import CLAIMS, TIMEOUT, LayerFactory, Sql, nothing_arrives, receive


async def rows_under(sql: Sql, layer: PostgresChannelLayer) -> int:
    (row,) = await sql("SELECT count(*) AS n FROM channel_layer_pg_message WHERE prefix = $1", layer.prefix)
    return int(row["n"])


async def test_sends_to_its_own_process_local_channels_never_reach_the_table(
    layer: PostgresChannelLayer, sql: Sql
) -> None:
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    await layer.send(channel, {"type": "direct"})
    await layer.group_send("room", {"type": "to the group"})
    assert await rows_under(sql, layer) == 0
    assert await receive(layer, channel) == {"type": "direct"}
    assert await receive(layer, channel) == {"type": "to the group"}


async def test_a_waiting_receive_gets_a_message_sent_in_process(layer: PostgresChannelLayer) -> None:
    channel = await layer.new_channel()
    receiving = asyncio.create_task(layer.receive(channel))
    await asyncio.sleep(0)  # the receive starts waiting; either order must deliver
    await layer.send(channel, {"type": "wake up"})
    assert await asyncio.wait_for(receiving, TIMEOUT) == {"type": "wake up"}


async def test_sends_and_group_sends_in_process_arrive_in_the_order_sent(layer: PostgresChannelLayer) -> None:
    channel = await layer.new_channel()
    await layer.group_add("room", channel)
    for n in range(10):
        if n % 2:
            await layer.group_send("room", {"type": "n", "n": n})
        else:
            await layer.send(channel, {"type": "n", "n": n})
    assert [(await receive(layer, channel))["n"] for _ in range(10)] == list(range(10))


async def test_other_members_of_the_group_still_get_theirs_through_the_table(
    make_layer: LayerFactory, sql: Sql
) -> None:
    here, there = make_layer(), make_layer()
    mine, theirs = await here.new_channel(), await there.new_channel()
    await here.group_add("room", mine)
    await here.group_add("room", theirs)
    await here.group_send("room", {"type": "hello"})
    assert await rows_under(sql, here) == 1  # one row, for the other process
    assert await receive(here, mine) == {"type": "hello"}
    assert await receive(there, theirs) == {"type": "hello"}


async def test_a_message_sent_in_process_expires(make_layer: LayerFactory) -> None:
    layer = make_layer(expiry=0.2)
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "stale"})
    await asyncio.sleep(0.3)  # past its expiry: time passing, not a wait for an outcome
    assert await nothing_arrives(layer, channel)


async def test_flush_drops_messages_sent_in_process(layer: PostgresChannelLayer) -> None:
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "flushed"})
    await layer.flush()
    assert await nothing_arrives(layer, channel)


async def test_a_sync_caller_reaches_a_receive_on_the_main_loop(layer: PostgresChannelLayer) -> None:
    channel = await layer.new_channel()
    receiving = asyncio.create_task(layer.receive(channel))
    await asyncio.to_thread(async_to_sync(layer.send), channel, {"type": "from a view"})
    assert await asyncio.wait_for(receiving, TIMEOUT) == {"type": "from a view"}


class HoldFirstClaim(FaultHooks):
    """Holds the first claim back until ``release`` is set, with ``claiming`` set meanwhile."""

    def __init__(self) -> None:
        super().__init__(poll_interval=3600.0)  # a lost wake-up then shows as a hang, not a poll
        self.claiming = asyncio.Event()
        self.release = asyncio.Event()

    async def before_statement(self, name: str, parameters: Mapping[str, Any]) -> None:
        if name in CLAIMS and not self.claiming.is_set():
            self.claiming.set()
            await self.release.wait()


async def test_a_message_sent_in_process_while_the_receive_claims_reaches_it(
    make_layer: LayerFactory,
) -> None:
    faults = HoldFirstClaim()
    layer = make_layer(fault_hooks=faults)
    channel = await layer.new_channel()
    receiving = asyncio.create_task(layer.receive(channel))
    # The receive claims in the table and is not waiting yet: the message finds nobody to hand it to.
    await asyncio.wait_for(faults.claiming.wait(), TIMEOUT)
    await layer.send(channel, {"type": "sent during the claim"})
    faults.release.set()
    assert await asyncio.wait_for(receiving, TIMEOUT) == {"type": "sent during the claim"}


class SignalAfterEmptyClaims(FaultHooks):
    """Sets ``waiting`` once ``count`` claims have found nothing, with the poll an hour away."""

    def __init__(self, count: int) -> None:
        super().__init__(poll_interval=3600.0)
        self.waiting = asyncio.Event()
        self._left = count

    async def after_statement(self, name: str, parameters: Mapping[str, Any], result: Any) -> None:
        if name in CLAIMS and not result:
            self._left -= 1
            if self._left == 0:
                self.waiting.set()


async def test_a_group_send_in_process_reaches_waiting_receives_of_every_channel_prefix(
    make_layer: LayerFactory,
) -> None:
    # Each receive's own claim finds nothing, then its reader's: both receives wait in readers.
    faults = SignalAfterEmptyClaims(4)
    layer = make_layer(fault_hooks=faults)
    channels = [await layer.new_channel("specific"), await layer.new_channel("other")]
    for channel in channels:
        await layer.group_add("room", channel)
    receiving = [asyncio.create_task(layer.receive(channel)) for channel in channels]
    await asyncio.wait_for(faults.waiting.wait(), TIMEOUT)
    await layer.group_send("room", {"type": "to both"})
    assert await asyncio.wait_for(asyncio.gather(*receiving), TIMEOUT) == [{"type": "to both"}] * 2
