"""Bad names and bad messages raise clear errors and store nothing."""

from __future__ import annotations

import pytest

from channel_layer_pg import PostgresChannelLayer
from tests.helpers import LayerFactory, nothing_arrives, receive

INVALID_CHANNEL_NAMES = [
    "chat\n",  # passes re.match with "$"; the spec's regex must match the whole name
    "",
    "has space",
    "bad/char",
    "two!bangs!",
    "x" * 100,
    "caf\u00e9",
]


@pytest.mark.parametrize("name", INVALID_CHANNEL_NAMES)
async def test_send_rejects_an_invalid_channel_name(layer: PostgresChannelLayer, name: str) -> None:
    with pytest.raises(TypeError, match="channel name"):
        await layer.send(name, {"type": "x"})


@pytest.mark.parametrize("name", INVALID_CHANNEL_NAMES)
async def test_receive_rejects_an_invalid_channel_name(layer: PostgresChannelLayer, name: str) -> None:
    with pytest.raises(TypeError, match="channel name"):
        await layer.receive(name)


@pytest.mark.parametrize("name", [None, 42, b"bytes"])
async def test_a_channel_name_must_be_a_string(layer: PostgresChannelLayer, name: object) -> None:
    with pytest.raises(TypeError, match="must be a str"):
        await layer.send(name, {"type": "x"})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["group\n", "g!local", "x" * 100, ""])
async def test_group_calls_reject_an_invalid_group_name(layer: PostgresChannelLayer, name: str) -> None:
    with pytest.raises(TypeError, match="group name"):
        await layer.group_add(name, "test.channel")
    with pytest.raises(TypeError, match="group name"):
        await layer.group_discard(name, "test.channel")
    with pytest.raises(TypeError, match="group name"):
        await layer.group_send(name, {"type": "x"})


async def test_a_99_character_channel_name_works(layer: PostgresChannelLayer) -> None:
    name = "c" * 99
    await layer.send(name, {"type": "long"})
    assert await receive(layer, name) == {"type": "long"}


@pytest.mark.parametrize("message", [["a", "list"], "text", None, 42])
async def test_a_message_must_be_a_dict(layer: PostgresChannelLayer, message: object) -> None:
    with pytest.raises(TypeError, match="message must be a dict"):
        await layer.send("test.dict", message)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="message must be a dict"):
        await layer.group_send("test-group", message)  # type: ignore[arg-type]


async def test_an_unencodable_value_is_named_and_nothing_is_stored(layer: PostgresChannelLayer) -> None:
    await layer.send("test.encode", {"type": "before"})
    with pytest.raises(TypeError, match=r"message\['data'\]\[1\] = \{1\} \(set\) cannot be encoded"):
        await layer.send("test.encode", {"type": "bad", "data": [1, {1}]})
    with pytest.raises(TypeError, match=r"message\['n'\] = .* \(int\) cannot be encoded"):
        await layer.send("test.encode", {"type": "bad", "n": 2**64})
    assert await receive(layer, "test.encode") == {"type": "before"}
    assert await nothing_arrives(layer, "test.encode")


async def test_json_serializer_names_bytes_it_cannot_encode(make_layer: LayerFactory) -> None:
    layer = make_layer(serializer="json")
    with pytest.raises(TypeError, match=r"message\['raw'\] = b'x' \(bytes\) cannot be encoded with json"):
        await layer.send("test.json", {"type": "x", "raw": b"x"})
