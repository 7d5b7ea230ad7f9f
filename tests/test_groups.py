"""Groups and flush."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from channel_layer_pg import PostgresChannelLayer
from channel_layer_pg.faults import FaultHooks
from tests.helpers import (
    CLAIMS,
    TIMEOUT,
    LayerFactory,
    SignalWhenWaiting,
    Sql,
    nothing_arrives,
    receive,
)


async def test_group_send_reaches_every_member(layer: PostgresChannelLayer) -> None:
    local = await layer.new_channel()
    for channel in ("test.one", "test.two", local):
        await layer.group_add("room", channel)
    await layer.group_send("room", {"type": "hello"})
    for channel in ("test.one", "test.two", local):
        assert await receive(layer, channel) == {"type": "hello"}


async def test_adding_a_channel_twice_delivers_once(layer: PostgresChannelLayer) -> None:
    await layer.group_add("room", "test.twice")
    await layer.group_add("room", "test.twice")
    await layer.group_send("room", {"type": "once"})
    assert await receive(layer, "test.twice") == {"type": "once"}
    assert await nothing_arrives(layer, "test.twice")


async def test_group_discard_stops_delivery_and_tolerates_absent_members(layer: PostgresChannelLayer) -> None:
    await layer.group_add("room", "test.leaver")
    await layer.group_discard("room", "test.leaver")
    await layer.group_discard("room", "test.leaver")
    await layer.group_discard("never-existed", "test.nobody")
    await layer.group_send("room", {"type": "gone"})
    assert await nothing_arrives(layer, "test.leaver")


async def test_group_send_to_an_empty_group_does_nothing(layer: PostgresChannelLayer) -> None:
    await layer.group_send("empty", {"type": "nobody hears"})


async def test_a_99_character_group_name_works(layer: PostgresChannelLayer) -> None:
    group = "g" * 99
    await layer.group_add(group, "test.long-group")
    await layer.group_send(group, {"type": "long"})
    assert await receive(layer, "test.long-group") == {"type": "long"}


async def test_groups_span_layer_instances(make_layer: LayerFactory) -> None:
    first, second = make_layer(), make_layer()
    first_channel, second_channel = await first.new_channel(), await second.new_channel()
    await first.group_add("shared", first_channel)
    await second.group_add("shared", second_channel)
    await first.group_send("shared", {"type": "to both"})
    got = await asyncio.gather(receive(first, first_channel), receive(second, second_channel))
    assert got == [{"type": "to both"}, {"type": "to both"}]


async def test_flush_empties_this_prefix_and_leaves_others_alone(
    make_layer: LayerFactory, prefix: str, sql: Sql
) -> None:
    mine, theirs = make_layer(), make_layer(prefix=f"{prefix}.other")
    for layer in (mine, theirs):
        await layer.send("test.flush", {"type": "queued"})
        await layer.group_add("room", "test.flush-member")
    await mine.flush()
    counts = await sql(
        "SELECT prefix, count(*) AS n FROM ("
        " SELECT prefix FROM channel_layer_pg_message UNION ALL"
        " SELECT prefix FROM channel_layer_pg_group_member) rows"
        " WHERE prefix IN ($1, $2) GROUP BY prefix",
        mine.prefix,
        theirs.prefix,
    )
    assert {row["prefix"]: row["n"] for row in counts} == {theirs.prefix: 2}
    assert await receive(theirs, "test.flush") == {"type": "queued"}


async def test_flush_drops_messages_claimed_but_not_yet_received(layer: PostgresChannelLayer) -> None:
    await layer.send("test.claimed", {"type": "one"})
    await layer.send("test.claimed", {"type": "two"})
    receiving = asyncio.create_task(layer.receive("test.claimed"))
    assert await asyncio.wait_for(receiving, 10) == {"type": "one"}
    await layer.flush()
    assert await nothing_arrives(layer, "test.claimed")


async def test_a_group_larger_than_capacity_reaches_every_member_in_a_process(
    make_layer: LayerFactory, sql: Sql
) -> None:
    layer, sender = make_layer(capacity=100), make_layer()  # sender: another process
    members = [await layer.new_channel() for _ in range(200)]
    for channel in members:
        await layer.group_add("crowd", channel)
    await sender.group_send("crowd", {"type": "to all 200"})
    (row,) = await sql("SELECT count(*) AS n FROM channel_layer_pg_message WHERE prefix = $1", layer.prefix)
    assert row["n"] == 1  # one row for the whole process, fanned out when received
    got = await asyncio.wait_for(asyncio.gather(*(layer.receive(c) for c in members)), 10)
    assert got == [{"type": "to all 200"}] * 200


async def test_a_member_not_receiving_keeps_its_group_messages_in_order_behind_direct_ones(
    make_layer: LayerFactory,
) -> None:
    layer = make_layer()
    active, idle = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("room", active)
    await layer.group_add("room", idle)
    await layer.send(idle, {"type": "direct", "n": 0})
    for n in range(1, 4):
        await layer.group_send("room", {"type": "group", "n": n})
        assert (await receive(layer, active))["n"] == n
    assert [(await receive(layer, idle))["n"] for _ in range(4)] == [0, 1, 2, 3]
    assert await nothing_arrives(layer, idle)


async def test_the_bare_non_local_part_of_another_process_cannot_be_received(
    make_layer: LayerFactory,
) -> None:
    owner, other = make_layer(), make_layer()
    member = await owner.new_channel()
    await owner.group_add("room", member)
    await owner.group_send("room", {"type": "for the owner"})
    with pytest.raises(ValueError, match="another layer instance"):
        await other.receive(f"specific.{owner.client_prefix}!")
    assert await receive(owner, member) == {"type": "for the owner"}


@pytest.mark.parametrize("local", [True, False], ids=["process-local member", "normal channel member"])
async def test_a_group_send_wakes_a_waiting_receiver_elsewhere_without_waiting_for_the_poll(
    make_layer: LayerFactory, local: bool
) -> None:
    # With the readers' poll an hour away, only the NOTIFY (its topic named in SQL) can do it.
    faults = SignalWhenWaiting(poll_interval=3600.0)
    receiver, sender = make_layer(fault_hooks=faults), make_layer()
    channel = await receiver.new_channel() if local else "test.group-woken"
    await receiver.group_add("room", channel)
    receiving = asyncio.create_task(receiver.receive(channel))
    assert await asyncio.to_thread(faults.waiting.wait, TIMEOUT)
    await sender.group_send("room", {"type": "woken"})
    assert await asyncio.wait_for(receiving, TIMEOUT) == {"type": "woken"}


async def test_a_group_send_delivered_in_memory_costs_no_claim(make_layer: LayerFactory) -> None:
    # A member of this layer gets the message in memory; the table is unchanged, so another
    # receive of this process, which the table was found empty for, need not look there again.
    both_found_empty, claimed_after = asyncio.Event(), asyncio.Event()
    found_empty: set[str] = set()

    class WatchedClaims(FaultHooks):
        async def before_statement(self, name: str, parameters: Mapping[str, Any]) -> None:
            if name in CLAIMS and both_found_empty.is_set():
                claimed_after.set()

        async def after_statement(self, name: str, parameters: Mapping[str, Any], result: Any) -> None:
            if name in CLAIMS and not result:
                found_empty.update(parameters["channels"])
                if found_empty >= {member, bystander}:
                    both_found_empty.set()

    layer = make_layer(fault_hooks=WatchedClaims())
    member, bystander = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("test.memory", member)
    receiving = asyncio.create_task(layer.receive(member))
    waiting = asyncio.create_task(layer.receive(bystander))
    try:
        await asyncio.wait_for(both_found_empty.wait(), TIMEOUT)
        await layer.group_send("test.memory", {"type": "in memory"})
        assert await asyncio.wait_for(receiving, TIMEOUT) == {"type": "in memory"}
        # Proving absence needs a bound: a claim would follow the delivery at once.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(claimed_after.wait(), 0.5)
    finally:
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
