"""Bad names and bad messages raise clear errors and store nothing."""

from __future__ import annotations

import ast
import json
from typing import Any

import pytest

from channel_layer_pg import ChannelLayerError, MessageTooLarge, PostgresChannelLayer, UndecodableMessageError
from channel_layer_pg.messages import MAX_DEPTH
from tests.helpers import LayerFactory, Sql, nothing_arrives, receive

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


async def stored_rows(sql: Sql, prefix: str) -> int:
    (row,) = await sql("SELECT count(*) AS n FROM channel_layer_pg_message WHERE prefix = $1", prefix)
    return int(row["n"])


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


# Each: a message no serializer gives back as sent, and the error that says where and why.
MALFORMED = [
    pytest.param(
        {"type": "m", (1, 2): 3},
        TypeError,
        r"^message key \(1, 2\): keys must be str, not tuple$",
        id="tuple",
    ),
    pytest.param(
        {"type": "m", "a": [{(1, 2): 3}]},
        TypeError,
        r"^message\['a'\]\[0\] key \(1, 2\): keys must be str, not tuple$",
        id="nested-tuple",
    ),
    pytest.param({"type": "m", 1: "one"}, TypeError, r"^message key 1: keys must be str, not int$", id="int"),
    pytest.param(
        {"type": "m", "a": {"b": {None: 1}}},
        TypeError,
        r"^message\['a'\]\['b'\] key None: keys must be str, not NoneType$",
        id="nested-none",
    ),
    pytest.param(
        {"type": "m", "deep": nested(MAX_DEPTH + 1)},
        ValueError,
        rf"^message\['deep'\]\[0\]\[0\]\[0\]\.\.\.\[0\]\[0\]\[0\] is nested more than {MAX_DEPTH} levels",
        id="too-deep",
    ),
]


@pytest.mark.parametrize("serializer", ["msgpack", "json"])
@pytest.mark.parametrize(("message", "error", "match"), MALFORMED)
async def test_a_malformed_message_is_refused_naming_where_and_the_queue_is_intact(
    make_layer: LayerFactory, serializer: str, message: dict[str, Any], error: type[Exception], match: str
) -> None:
    layer = make_layer(serializer=serializer)
    await layer.send("test.shape", {"type": "before"})
    with pytest.raises(error, match=match):
        await layer.send("test.shape", message)
    await layer.send("test.shape", {"type": "after"})
    assert await receive(layer, "test.shape") == {"type": "before"}
    assert await receive(layer, "test.shape") == {"type": "after"}


@pytest.mark.parametrize(("message", "error", "match"), MALFORMED)
async def test_group_send_of_a_malformed_message_stores_it_for_no_member(
    layer: PostgresChannelLayer, sql: Sql, message: dict[str, Any], error: type[Exception], match: str
) -> None:
    local = await layer.new_channel()
    for channel in ("test.member-a", "test.member-b", local):
        await layer.group_add("room", channel)
    with pytest.raises(error, match=match):
        await layer.group_send("room", message)
    assert await stored_rows(sql, layer.prefix) == 0
    await layer.group_send("room", {"type": "good"})
    for channel in ("test.member-a", "test.member-b", local):
        assert await receive(layer, channel) == {"type": "good"}


async def test_nesting_up_to_the_limit_round_trips(layer: PostgresChannelLayer) -> None:
    message = {"type": "deep", "deep": nested(MAX_DEPTH)}
    await layer.send("test.deep", message)
    assert await receive(layer, "test.deep") == message


async def test_a_message_that_contains_itself_is_refused(layer: PostgresChannelLayer) -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="contains itself"):
        await layer.send("test.loop", {"type": "loop", "loop": loop})


async def test_a_long_list_of_plain_values_is_still_checked_inside(layer: PostgresChannelLayer) -> None:
    values: list[Any] = list(range(100))
    values[50] = {3: "three"}
    with pytest.raises(TypeError, match=r"^message\['values'\]\[50\] key 3: keys must be str"):
        await layer.send("test.list", {"type": "list", "values": values})


async def test_a_custom_serializer_is_held_to_str_keys_too(make_layer: LayerFactory) -> None:
    class Repr:
        def dumps(self, message: dict[str, Any]) -> bytes:
            return repr(message).encode()

        def loads(self, data: bytes) -> dict[str, Any]:
            return ast.literal_eval(data.decode())  # type: ignore[no-any-return]

    layer = make_layer(serializer=Repr())
    with pytest.raises(TypeError, match=r"^message key 1: keys must be str"):
        await layer.send("test.custom", {"type": "m", 1: 2})


# -- size ----------------------------------------------------------------------------------------


async def test_a_message_over_max_message_size_is_refused_by_send_and_group_send(
    layer: PostgresChannelLayer, sql: Sql
) -> None:
    await layer.group_add("room", "test.size")
    await layer.send("test.size", {"type": "before"})
    too_large = {"type": "blob", "data": b"x" * 2**20}  # over the default 1 MiB once serialized
    expected = r"^message is 1048\d\d\d bytes serialized, over max_message_size \(1048576 bytes\)"
    with pytest.raises(MessageTooLarge, match=expected):
        await layer.send("test.size", too_large)
    with pytest.raises(MessageTooLarge, match=expected):
        await layer.group_send("room", too_large)
    assert await stored_rows(sql, layer.prefix) == 1
    assert await receive(layer, "test.size") == {"type": "before"}


def test_message_too_large_is_a_value_error_and_a_layer_error() -> None:
    assert issubclass(MessageTooLarge, ValueError)
    assert issubclass(MessageTooLarge, ChannelLayerError)


async def test_max_message_size_sets_the_limit_and_none_lifts_it(make_layer: LayerFactory) -> None:
    small = make_layer(max_message_size=100)
    with pytest.raises(MessageTooLarge, match=r"over max_message_size \(100 bytes\)"):
        await small.send("test.limit", {"type": "x", "data": "y" * 100})
    unlimited = make_layer(max_message_size=None)
    message = {"type": "blob", "data": b"x" * (3 * 2**20)}
    await unlimited.send("test.limit", message)
    assert await receive(unlimited, "test.limit") == message


async def test_max_message_size_counts_the_message_before_encryption(
    make_layer: LayerFactory, sql: Sql
) -> None:
    layer = make_layer(max_message_size=1000, symmetric_encryption_keys=["secret"])
    message = {"type": "x", "data": b"y" * 950}  # under 1000 bytes serialized, over once encrypted
    await layer.send("test.encrypted", message)
    (row,) = await sql(
        "SELECT length(payload) AS n FROM channel_layer_pg_message WHERE prefix = $1", layer.prefix
    )
    assert row["n"] > 1000
    assert await receive(layer, "test.encrypted") == message


@pytest.mark.parametrize(("written_with", "read_with"), [("json", "msgpack"), ("msgpack", "json")])
async def test_a_message_the_serializer_cannot_read_is_a_layer_error_and_the_next_arrives(
    make_layer: LayerFactory, written_with: str, read_with: str
) -> None:
    # One process of the prefix configured with another serializer: its messages are refused
    # one by one with an error saying what to fix, and the reader's own still arrive.
    writer = make_layer(serializer=written_with)
    reader = make_layer(serializer=read_with)
    await writer.send("test.mixed", {"type": "from the other serializer"})
    await reader.send("test.mixed", {"type": "readable"})
    with pytest.raises(UndecodableMessageError, match="same serializer on every process") as caught:
        await receive(reader, "test.mixed")
    assert isinstance(caught.value, ValueError)
    assert caught.value.__cause__ is not None
    assert await receive(reader, "test.mixed") == {"type": "readable"}


async def test_a_serializer_that_loads_something_other_than_a_dict_is_a_layer_error(
    make_layer: LayerFactory,
) -> None:
    class ListLoader:
        name = "list-loader"

        def dumps(self, message: dict[str, Any]) -> bytes:
            return json.dumps(message).encode()

        def loads(self, data: bytes) -> Any:
            return [json.loads(data)]

    reader = make_layer(serializer=ListLoader())
    await reader.send("test.list", {"type": "x"})
    with pytest.raises(UndecodableMessageError, match="loaded as list, not a dict"):
        await receive(reader, "test.list")
