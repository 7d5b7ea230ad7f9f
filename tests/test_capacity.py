"""Capacity: send raises ChannelFull; group_send skips full members and says how many."""

from __future__ import annotations

import asyncio
import logging
import re

import pytest

from channel_layer_pg import ChannelFull
from tests.helpers import LayerFactory, Sql, receive


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


async def test_a_group_send_counts_once_against_a_process_shared_capacity(make_layer: LayerFactory) -> None:
    layer, sender = make_layer(capacity=3), make_layer(capacity=3)  # sender: another process
    channels = [await layer.new_channel() for _ in range(5)]
    for channel in channels:
        await layer.group_add("locals", channel)
    await sender.group_send("locals", {"type": "broadcast"})  # one row for the process
    await sender.send(channels[0], {"type": "second"})
    await sender.send(channels[1], {"type": "third"})
    with pytest.raises(ChannelFull, match="share one capacity of 3"):
        await sender.send(channels[2], {"type": "fourth"})


async def test_a_group_message_a_layer_sends_its_own_channels_counts_once_until_all_took_it(
    make_layer: LayerFactory,
) -> None:
    layer = make_layer(capacity=3)
    channels = [await layer.new_channel() for _ in range(5)]
    for channel in channels:
        await layer.group_add("locals", channel)
    await layer.group_send("locals", {"type": "broadcast"})  # five copies in memory, one message
    await layer.send(channels[0], {"type": "second"})
    await layer.send(channels[1], {"type": "third"})
    with pytest.raises(ChannelFull, match="share one capacity of 3"):
        await layer.send(channels[2], {"type": "fourth"})
    for channel in channels[:4]:
        assert await receive(layer, channel) == {"type": "broadcast"}
    with pytest.raises(ChannelFull):  # one copy is still held
        await layer.send(channels[2], {"type": "fourth"})
    assert await receive(layer, channels[4]) == {"type": "broadcast"}
    await layer.send(channels[2], {"type": "room again"})


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
