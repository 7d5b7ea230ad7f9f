"""Capacity, per channel: send raises ChannelFull; group_send skips full members and says how many."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from channel_layer_pg import ChannelFull
from tests.helpers import TIMEOUT, LayerFactory, Sql, nothing_arrives, receive


async def test_send_raises_channel_full_at_capacity(make_layer: LayerFactory) -> None:
    layer = make_layer(capacity=2)
    await layer.send("test.cap", {"type": "1"})
    await layer.send("test.cap", {"type": "2"})
    with pytest.raises(ChannelFull, match=r"test\.cap"):
        await layer.send("test.cap", {"type": "3"})
    assert await receive(layer, "test.cap") == {"type": "1"}
    await layer.send("test.cap", {"type": "3 fits now"})


async def test_channel_full_is_the_channels_exception() -> None:
    channels_exceptions = pytest.importorskip("channels.exceptions")
    assert issubclass(ChannelFull, channels_exceptions.ChannelFull)


async def test_channel_capacity_globs_and_regexes_override_the_default(make_layer: LayerFactory) -> None:
    layer = make_layer(
        capacity=5,
        channel_capacity={"tiny.*": 1, re.compile(r"^roomy\."): 3},
    )
    await layer.send("tiny.one", {"type": "x"})
    with pytest.raises(ChannelFull):
        await layer.send("tiny.one", {"type": "x"})
    for _ in range(3):
        await layer.send("roomy.one", {"type": "x"})
    with pytest.raises(ChannelFull):
        await layer.send("roomy.one", {"type": "x"})


async def test_expired_messages_do_not_count_against_capacity(make_layer: LayerFactory, sql: Sql) -> None:
    layer = make_layer(capacity=1)
    await layer.send("test.aged", {"type": "old"})
    await sql(
        "UPDATE channel_layer_pg_message SET expires_at = now() - interval '1 second' WHERE prefix = $1",
        layer.prefix,
    )
    await layer.send("test.aged", {"type": "new"})
    assert await receive(layer, "test.aged") == {"type": "new"}


async def test_group_send_skips_full_members_and_logs_how_many(
    make_layer: LayerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    layer = make_layer(capacity=1)
    await layer.group_add("room", "test.full-member")
    await layer.group_add("room", "test.free-member")
    await layer.send("test.full-member", {"type": "already queued"})
    with caplog.at_level(logging.INFO, logger="channel_layer_pg"):
        await layer.group_send("room", {"type": "broadcast"})
    assert "skipped 1 of 2 members" in caplog.text
    assert await receive(layer, "test.free-member") == {"type": "broadcast"}
    assert await receive(layer, "test.full-member") == {"type": "already queued"}


async def test_each_process_local_channel_has_its_own_capacity_in_the_table(make_layer: LayerFactory) -> None:
    layer, sender = make_layer(capacity=3), make_layer(capacity=3)  # sender: another process
    channels = [await layer.new_channel() for _ in range(5)]
    for channel in channels:
        await layer.group_add("locals", channel)
    await sender.group_send("locals", {"type": "broadcast"})  # one row, counted for each member
    await sender.send(channels[0], {"type": "second"})
    await sender.send(channels[0], {"type": "third"})
    with pytest.raises(ChannelFull, match=re.escape(repr(channels[0]))):
        await sender.send(channels[0], {"type": "fourth"})
    for channel in channels[1:]:  # their neighbour's backlog takes none of their room
        await sender.send(channel, {"type": "second"})
        await sender.send(channel, {"type": "third"})
    assert [(await receive(layer, channels[0]))["type"] for _ in range(3)] == ["broadcast", "second", "third"]
    await sender.send(channels[0], {"type": "fits again"})


async def test_a_group_send_skips_only_the_full_process_local_members(make_layer: LayerFactory) -> None:
    layer, sender = make_layer(capacity=1), make_layer(capacity=1)
    full, free = await layer.new_channel(), await layer.new_channel()
    await layer.group_add("room", full)
    await layer.group_add("room", free)
    await sender.send(full, {"type": "already queued"})
    await sender.group_send("room", {"type": "broadcast"})
    assert await receive(layer, free) == {"type": "broadcast"}
    assert await receive(layer, full) == {"type": "already queued"}
    assert await nothing_arrives(layer, full)


async def test_a_layer_sending_to_its_own_channels_counts_each_channel_apart(
    make_layer: LayerFactory,
) -> None:
    layer = make_layer(capacity=2)
    channels = [await layer.new_channel() for _ in range(3)]
    for channel in channels:
        await layer.group_add("locals", channel)
    await layer.group_send("locals", {"type": "broadcast"})  # a copy per channel, in memory
    await layer.send(channels[0], {"type": "second"})
    with pytest.raises(ChannelFull, match=re.escape(repr(channels[0]))):
        await layer.send(channels[0], {"type": "third"})
    await layer.send(channels[1], {"type": "second"})
    assert await receive(layer, channels[0]) == {"type": "broadcast"}
    await layer.send(channels[0], {"type": "third"})


async def test_a_tight_loop_of_sends_to_many_waiting_local_receivers_never_hits_capacity(
    make_layer: LayerFactory,
) -> None:
    layer = make_layer(capacity=10)
    channels = [await layer.new_channel() for _ in range(300)]
    receives = [asyncio.create_task(layer.receive(channel)) for channel in channels]
    await asyncio.sleep(0)  # let every receive start waiting
    for n, channel in enumerate(channels):
        await layer.send(channel, {"type": "m", "n": n})
    done = await asyncio.wait_for(asyncio.gather(*receives), TIMEOUT)
    assert [message["n"] for message in done] == list(range(300))


@pytest.mark.parametrize("sent_from", ["this layer", "another layer"])
async def test_a_stalled_local_channel_does_not_starve_the_others(
    make_layer: LayerFactory, sent_from: str
) -> None:
    layer = make_layer(capacity=5)
    sender = layer if sent_from == "this layer" else make_layer(capacity=5)
    stalled = await layer.new_channel()
    others = [await layer.new_channel() for _ in range(3)]
    for channel in [stalled, *others]:
        await layer.group_add("room", channel)
    for n in range(5):
        await sender.send(stalled, {"type": "m", "n": n})
    with pytest.raises(ChannelFull):
        await sender.send(stalled, {"type": "m", "n": 5})
    for n in range(20):  # four times the capacity, to each of the channels still receiving
        await sender.send(others[n % 3], {"type": "m", "n": n})
        await sender.group_send("room", {"type": "g", "n": n})
        for channel in others:
            if channel == others[n % 3]:
                assert await receive(layer, channel) == {"type": "m", "n": n}
            assert await receive(layer, channel) == {"type": "g", "n": n}
    assert [(await receive(layer, stalled))["n"] for _ in range(5)] == list(range(5))


async def test_a_group_larger_than_capacity_keeps_reaching_its_members_in_process(
    make_layer: LayerFactory,
) -> None:
    layer = make_layer(capacity=100)
    members = [await layer.new_channel() for _ in range(120)]
    for channel in members:
        await layer.group_add("crowd", channel)
    for n in range(3):
        await layer.group_send("crowd", {"type": "n", "n": n})
    for channel in members:
        assert [(await receive(layer, channel))["n"] for _ in range(3)] == [0, 1, 2]


async def test_concurrent_sends_never_overfill_a_channel(make_layer: LayerFactory) -> None:
    layer = make_layer(capacity=10, pool_size=2)  # one send slot: the rest go in batches
    outcomes = await asyncio.gather(
        *(layer.send("test.crowded", {"type": "n", "n": n}) for n in range(40)), return_exceptions=True
    )
    assert sum(outcome is None for outcome in outcomes) == 10
    assert all(outcome is None or isinstance(outcome, ChannelFull) for outcome in outcomes)


async def test_a_batch_of_concurrent_sends_fills_each_local_channel_of_a_process_to_its_own_capacity(
    make_layer: LayerFactory,
) -> None:
    layer = make_layer(capacity=10)
    sender = make_layer(capacity=10, pool_size=2)  # one send slot: the rest go in batches
    channels = [await layer.new_channel() for _ in range(4)]
    sends = [(channel, n) for n in range(12) for channel in channels]
    outcomes = await asyncio.gather(
        *(sender.send(channel, {"type": "n", "n": n}) for channel, n in sends), return_exceptions=True
    )
    assert all(outcome is None or isinstance(outcome, ChannelFull) for outcome in outcomes)
    for channel in channels:
        accepted = [
            n for (to, n), outcome in zip(sends, outcomes, strict=True) if to == channel and outcome is None
        ]
        assert len(accepted) == 10
        assert [(await receive(layer, channel))["n"] for _ in range(10)] == accepted
