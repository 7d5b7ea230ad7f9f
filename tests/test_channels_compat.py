"""The layer is a Channels BaseChannelLayer: its helpers, Channels' own checks, and consumers."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channel_layer_pg import PostgresChannelLayer
from tests.helpers import TIMEOUT, LayerFactory, channel_layers_setting

pytest.importorskip("django")
pytest.importorskip("channels")

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import BaseChannelLayer, InMemoryChannelLayer
from channels.testing import WebsocketCommunicator

URL = "postgresql://nobody@127.0.0.1:1/none"  # never connected to: these checks read no table
NAME_CHARACTERS = "abzAZ09-_.!é٣\n "  # valid ones, a non-ASCII letter and digit, and invalid ones


def offline_layer(**options: Any) -> PostgresChannelLayer:
    return PostgresChannelLayer(url=URL, **options)


def outcome(check: Any, *args: Any, **kwargs: Any) -> object:
    """What ``check`` returned, or the type of exception it raised."""
    try:
        return check(*args, **kwargs)
    except Exception as exc:
        return type(exc)


# -- the interface --------------------------------------------------------------------------


def test_the_layer_is_a_channels_base_channel_layer() -> None:
    assert issubclass(PostgresChannelLayer, BaseChannelLayer)
    assert isinstance(offline_layer(), BaseChannelLayer)


def test_the_layer_defines_every_helper_rather_than_inheriting_channels_own() -> None:
    # Its behaviour must not change with the installed Channels version, nor without Channels.
    inherited = {
        name
        for name in vars(BaseChannelLayer)
        if not name.startswith("__")
        and all(name not in vars(cls) for cls in PostgresChannelLayer.__mro__ if cls is not BaseChannelLayer)
    }
    assert inherited == set()


def test_get_capacity_follows_channel_capacity_patterns_in_order() -> None:
    layer = offline_layer(
        capacity=7, channel_capacity={"http.request": 200, re.compile(r"^websocket\.send!"): 20, "*": 9}
    )
    channels = InMemoryChannelLayer(
        capacity=7, channel_capacity={"http.request": 200, re.compile(r"^websocket\.send!"): 20, "*": 9}
    )
    # Channels' base class stores the option as given; InMemoryChannelLayer does not compile it.
    channels.channel_capacity = channels.compile_capacities(channels.channel_capacity)
    for channel in ("http.request", "websocket.send!abc", "websocket.send", "other"):
        assert layer.get_capacity(channel) == channels.get_capacity(channel)
    assert offline_layer(capacity=7).get_capacity("other") == 7
    assert [(pattern.pattern, limit) for pattern, limit in layer.channel_capacity] == [
        (pattern.pattern, limit) for pattern, limit in channels.channel_capacity
    ]


def test_compile_capacities_compiles_globs_and_keeps_regexes() -> None:
    regex = re.compile(r"^chat\.")
    compiled = offline_layer().compile_capacities({"room.*": 3, regex: 5})
    assert compiled[1] == (regex, 5)
    assert compiled[0][1] == 3 and compiled[0][0].match("room.x") and not compiled[0][0].match("roomx")


def test_compile_capacities_refuses_what_the_option_refuses() -> None:
    with pytest.raises(ValueError, match="channel_capacity"):
        offline_layer().compile_capacities({re.compile(r"\bchat"): 3})
    with pytest.raises(TypeError, match="channel_capacity"):
        offline_layer().compile_capacities({"chat.*": "3"})


def test_the_name_attributes_are_channels_values() -> None:
    layer = offline_layer()
    assert layer.MAX_NAME_LENGTH == BaseChannelLayer.MAX_NAME_LENGTH == 100
    assert layer.invalid_name_error == BaseChannelLayer.invalid_name_error
    assert layer.extensions == ["groups", "flush"]


def test_non_local_name_is_the_part_up_to_the_bang() -> None:
    layer, channels = offline_layer(), InMemoryChannelLayer()
    for name in ("chat", "specific.abc!def", "specific.abc!", "a!b!c"):
        assert layer.non_local_name(name) == channels.non_local_name(name)
    assert layer.non_local_name("specific.abc!def") == "specific.abc!"


@settings(max_examples=300)
@given(
    name=st.one_of(
        st.text(NAME_CHARACTERS, max_size=8),
        st.text(NAME_CHARACTERS, min_size=95, max_size=105),
        st.text("ab.!", min_size=97, max_size=102),  # valid but for their length, at the limit
        st.none(),
        st.integers(),
        st.binary(max_size=4),
    ),
    receive=st.booleans(),
)
def test_names_are_accepted_and_refused_as_channels_does(name: object, receive: bool) -> None:
    layer, channels = offline_layer(), InMemoryChannelLayer()
    ours = [
        outcome(layer.require_valid_channel_name, name, receive=receive),
        outcome(layer.require_valid_group_name, name),
        outcome(layer.match_type_and_length, name),
    ]
    theirs = [
        outcome(channels.require_valid_channel_name, name, receive=receive),
        outcome(channels.require_valid_group_name, name),
        outcome(channels.match_type_and_length, name),
    ]
    if isinstance(name, str) and name.endswith("\n"):
        # Channels' "$" matches before a final newline, so it lets "chat\n" through; not here.
        assert ours[:2] == [TypeError, TypeError]
        assert ours[2] == theirs[2]
    else:
        assert ours == theirs


def test_valid_channel_names_wants_a_non_empty_list_of_valid_names() -> None:
    layer = offline_layer()
    assert layer.valid_channel_names(["a", "b.c!d"]) is True
    with pytest.raises(TypeError, match="Specific channel names in receive"):
        layer.valid_channel_names(["a", "b.c!d"], receive=True)
    for names in ([], ("a",), "a"):
        with pytest.raises(TypeError, match="non-empty list"):
            layer.valid_channel_names(names)


def test_the_deprecated_name_checks_warn_as_channels_does() -> None:
    layer = offline_layer()
    with pytest.warns(DeprecationWarning, match="require_valid_channel_name"):
        assert layer.valid_channel_name("a.b!c", receive=True) is True
    with pytest.warns(DeprecationWarning, match="require_valid_group_name"):
        assert layer.valid_group_name("room") is True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(TypeError):
            layer.valid_group_name("a room")


# -- Channels' in-memory layer checks, run on both layers -----------------------------------


@pytest.fixture(params=["in-memory", "postgres"])
def both(request: pytest.FixtureRequest, make_layer: LayerFactory) -> Any:
    """Channels' InMemoryChannelLayer, then ours: each check must hold for both alike."""
    if request.param == "in-memory":
        return InMemoryChannelLayer(capacity=3)
    return make_layer(capacity=3)


async def within(awaitable: Any) -> Any:
    return await asyncio.wait_for(awaitable, TIMEOUT)


async def test_send_then_receive_in_order(both: Any) -> None:
    for number in (1, 2, 3):
        await both.send("test-channel-3", {"type": f"message.{number}"})
    for number in (1, 2, 3):
        assert (await within(both.receive("test-channel-3")))["type"] == f"message.{number}"


async def test_a_send_past_capacity_raises_channel_full(both: Any) -> None:
    from channels.exceptions import ChannelFull as ChannelsChannelFull

    for _ in range(3):
        await both.send("test-channel-1", {"type": "test.message"})
    with pytest.raises(ChannelsChannelFull):
        await both.send("test-channel-1", {"type": "test.message"})


async def test_process_local_send_receive(both: Any) -> None:
    channel = await both.new_channel()
    await both.send(channel, {"type": "test.message", "text": "Local only please"})
    assert await within(both.receive(channel)) == {"type": "test.message", "text": "Local only please"}


async def test_groups_reach_members_and_not_discarded_ones(both: Any) -> None:
    for channel in ("test-gr-chan-1", "test-gr-chan-2", "test-gr-chan-3"):
        await both.group_add("test-group", channel)
    await both.group_discard("test-group", "test-gr-chan-2")
    await both.group_send("test-group", {"type": "message.1"})
    assert (await within(both.receive("test-gr-chan-1")))["type"] == "message.1"
    assert (await within(both.receive("test-gr-chan-3")))["type"] == "message.1"
    # Each channel is first in, first out: the marker comes first only if the group's did not.
    await both.send("test-gr-chan-2", {"type": "marker"})
    assert (await within(both.receive("test-gr-chan-2")))["type"] == "marker"


async def test_group_send_ignores_full_members(both: Any) -> None:
    await both.group_add("test-group", "test-gr-chan-1")
    for number in range(5):
        await both.group_send("test-group", {"type": f"message.{number}"})
    received = [(await within(both.receive("test-gr-chan-1")))["type"] for _ in range(3)]
    assert received == ["message.0", "message.1", "message.2"]


# -- a Channels consumer configured through Django settings ---------------------------------


class GroupChat(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    """Joins the room named by its path on connect; what it receives goes to the whole room."""

    async def connect(self) -> None:
        self.room = self.scope["path"].rsplit("/", 1)[-1]
        await self.channel_layer.group_add(self.room, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.room, self.channel_name)

    async def receive_json(self, content: dict[str, Any], **kwargs: Any) -> None:
        await self.channel_layer.group_send(self.room, {"type": "chat.message", "text": content["text"]})

    async def chat_message(self, event: dict[str, Any]) -> None:
        await self.send_json({"text": event["text"]})


@pytest.fixture
async def channel_layers(database_url: str, prefix: str) -> AsyncIterator[None]:
    config = {"url": database_url, "prefix": prefix, "capacity": 50}
    async with channel_layers_setting(
        {"default": {"BACKEND": "channel_layer_pg.PostgresChannelLayer", "CONFIG": config}}
    ):
        yield


async def test_get_channel_layer_returns_this_layer_as_configured(channel_layers: None) -> None:
    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    assert isinstance(layer, PostgresChannelLayer)
    assert isinstance(layer, BaseChannelLayer)
    assert layer.get_capacity("any.channel") == 50
    assert get_channel_layer() is layer


async def test_a_group_chat_consumer_reaches_every_connection(channel_layers: None) -> None:
    room = f"room-{uuid.uuid4().hex[:8]}"
    alice = WebsocketCommunicator(GroupChat.as_asgi(), f"/ws/{room}")
    bob = WebsocketCommunicator(GroupChat.as_asgi(), f"/ws/{room}")
    assert (await alice.connect(TIMEOUT))[0] and (await bob.connect(TIMEOUT))[0]
    await alice.send_json_to({"text": "hello"})
    assert await bob.receive_json_from(TIMEOUT) == {"text": "hello"}
    assert await alice.receive_json_from(TIMEOUT) == {"text": "hello"}
    await bob.send_json_to({"text": "hi Alice"})
    assert await alice.receive_json_from(TIMEOUT) == {"text": "hi Alice"}
    assert await bob.receive_json_from(TIMEOUT) == {"text": "hi Alice"}
    await alice.disconnect(timeout=TIMEOUT)
    await bob.disconnect(timeout=TIMEOUT)


def test_without_channels_the_layer_has_the_same_helpers_on_its_own() -> None:
    # A process where importing Channels fails, as where it is not installed.
    script = """
import sys
sys.modules["channels"] = None
from channel_layer_pg import PostgresChannelLayer
layer = PostgresChannelLayer(url="postgresql://nobody@127.0.0.1:1/none", channel_capacity={"a.*": 3})
bases = [cls.__qualname__ for cls in PostgresChannelLayer.__mro__]
assert bases == ["PostgresChannelLayer", "ChannelsInterface", "object"], bases
assert layer.get_capacity("a.b") == 3 and layer.get_capacity("b") == 100
assert layer.require_valid_channel_name("a.b!c") and layer.non_local_name("a.b!c") == "a.b!"
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT * 3)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "ok", "")
