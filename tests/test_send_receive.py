"""send and receive on normal channels: values, sizes, order, and waiting."""

from __future__ import annotations

import asyncio

import pytest

from channel_layer_pg import PostgresChannelLayer
from tests.helpers import TIMEOUT, LayerFactory, receive


async def test_every_spec_value_type_round_trips(layer: PostgresChannelLayer) -> None:
    message = {
        "type": "test.message",
        "bytes": b"\x00\xffbinary",
        "text": "unicode: \u00e9\u4e2d\U0001f600",
        "int": -(2**63),
        "big": 2**63 - 1,
        "float": 1.5,
        "list": [1, "two", None],
        "dict": {"nested": {"deeper": [True, False]}},
        "none": None,
    }
    await layer.send("test.types", message)
    assert await receive(layer, "test.types") == message


async def test_tuples_come_back_as_lists(layer: PostgresChannelLayer) -> None:
    await layer.send("test.tuple", {"type": "t", "pair": (1, (2, 3))})
    received = await receive(layer, "test.tuple")
    assert received["pair"] == [1, [2, 3]]


async def test_a_one_megabyte_message_round_trips(layer: PostgresChannelLayer) -> None:
    blob = bytes(range(256)) * 3900  # the spec's 1 MB, under the default max_message_size of 1 MiB
    await layer.send("test.large", {"type": "large", "blob": blob})
    received = await receive(layer, "test.large")
    assert received["blob"] == blob


async def test_messages_arrive_in_the_order_they_were_sent(layer: PostgresChannelLayer) -> None:
    for n in range(50):
        await layer.send("test.fifo", {"type": "n", "n": n})
    received = [(await receive(layer, "test.fifo"))["n"] for _ in range(50)]
    assert received == list(range(50))


async def test_receive_waits_for_a_message_sent_later(layer: PostgresChannelLayer) -> None:
    receiving = asyncio.create_task(layer.receive("test.later"))
    await asyncio.sleep(0)  # let the receive start waiting before anything is sent
    await layer.send("test.later", {"type": "late"})
    assert await asyncio.wait_for(receiving, TIMEOUT) == {"type": "late"}


async def test_two_layers_on_one_prefix_share_normal_channels(make_layer: LayerFactory) -> None:
    sender, receiver = make_layer(), make_layer()
    await sender.send("test.shared", {"type": "hello"})
    assert await receive(receiver, "test.shared") == {"type": "hello"}


async def test_layers_with_different_prefixes_do_not_see_each_other(
    make_layer: LayerFactory, prefix: str
) -> None:
    first, second = make_layer(prefix=f"{prefix}.first"), make_layer(prefix=f"{prefix}.second")
    await first.send("test.isolated", {"type": "for first"})
    await second.send("test.isolated", {"type": "for second"})
    assert await receive(second, "test.isolated") == {"type": "for second"}
    assert await receive(first, "test.isolated") == {"type": "for first"}


async def test_each_message_goes_to_exactly_one_of_several_receivers(
    make_layer: LayerFactory,
) -> None:
    sender = make_layer()
    receivers = [make_layer() for _ in range(3)]
    got: list[int] = []
    all_arrived = asyncio.Event()

    async def drain(layer: PostgresChannelLayer) -> None:
        while True:
            got.append((await layer.receive("test.work"))["n"])
            if len(got) == 100:
                all_arrived.set()

    tasks = [asyncio.create_task(drain(receiver)) for receiver in receivers for _ in range(2)]
    for n in range(100):
        await sender.send("test.work", {"type": "job", "n": n})

    await asyncio.wait_for(all_arrived.wait(), TIMEOUT)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert sorted(got) == list(range(100))


@pytest.mark.parametrize("serializer", ["msgpack", "json"])
async def test_both_builtin_serializers_round_trip(make_layer: LayerFactory, serializer: str) -> None:
    layer = make_layer(serializer=serializer)
    await layer.send("test.serializer", {"type": "s", "n": 1, "text": "x", "list": [1, 2]})
    received = await receive(layer, "test.serializer")
    assert received == {"type": "s", "n": 1, "text": "x", "list": [1, 2]}


async def test_concurrent_senders_each_keep_their_order(make_layer: LayerFactory) -> None:
    sender, receiver = make_layer(capacity=1000, pool_size=2), make_layer()

    async def send_in_order(who: int) -> None:
        for n in range(30):
            await sender.send("test.many-senders", {"type": "n", "who": who, "n": n})

    await asyncio.wait_for(asyncio.gather(*(send_in_order(who) for who in range(10))), TIMEOUT)
    got = [await receive(receiver, "test.many-senders") for _ in range(300)]
    for who in range(10):
        assert [m["n"] for m in got if m["who"] == who] == list(range(30))
