"""Arbitrary names, messages and call orders: every call works or fails cleanly.

A call may only succeed or raise TypeError, ValueError or ChannelFull; no PostgreSQL error
leaks out, and what the tables hold afterwards is consistent with what succeeded.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channel_layer_pg import ChannelFull, PostgresChannelLayer
from channel_layer_pg.naming import MAX_NAME_LENGTH, non_local_name, topic_for
from tests.conftest import connect

VALID_NAME = st.from_regex(r"[a-zA-Z0-9\-_.]{1,40}", fullmatch=True)
NAMES = st.one_of(
    VALID_NAME,
    VALID_NAME.map(lambda name: name + "!"),
    st.text(max_size=MAX_NAME_LENGTH + 5),
    st.none(),
    st.integers(),
)
VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),  # beyond 64 bits must be refused
        st.floats(allow_nan=False),
        st.text(max_size=20),
        st.binary(max_size=20),
        st.frozensets(st.integers(), max_size=2),  # not encodable
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
MESSAGES = st.one_of(st.dictionaries(st.text(max_size=8), VALUES, max_size=4), VALUES)
CALLS = st.lists(
    st.tuples(
        st.sampled_from(["send", "group_add", "group_discard", "group_send", "receive", "flush"]),
        NAMES,
        NAMES,
        MESSAGES,
    ),
    max_size=12,
)
ALLOWED = (TypeError, ValueError, ChannelFull)


async def call(layer: PostgresChannelLayer, operation: str, name: Any, group: Any, message: Any) -> None:
    if operation == "send":
        await layer.send(name, message)
    elif operation == "group_add":
        await layer.group_add(group, name)
    elif operation == "group_discard":
        await layer.group_discard(group, name)
    elif operation == "group_send":
        await layer.group_send(group, message)
    elif operation == "receive":
        if isinstance(name, str) and name.endswith("!"):
            name = await layer.new_channel()
        try:
            await asyncio.wait_for(layer.receive(name), 0.02)
        except TimeoutError:
            pass
    else:
        await layer.flush()


async def exercise(url: str, calls: list[tuple[str, Any, Any, Any]]) -> None:
    prefix = f"p{uuid.uuid4().hex[:10]}"
    async with PostgresChannelLayer(url=url, prefix=prefix, capacity=3) as layer:
        for operation, name, group, message in calls:
            try:
                await call(layer, operation, name, group, message)
            except ALLOWED:
                pass
        conn = await connect(url)
        try:
            rows = await conn.fetch(
                "SELECT queue, channel FROM channel_layer_pg_message WHERE prefix = $1", prefix
            )
            members = await conn.fetch(
                "SELECT group_name, channel FROM channel_layer_pg_group_member WHERE prefix = $1", prefix
            )
        finally:
            await conn.close()
        for row in rows:
            assert row["queue"] == non_local_name(row["channel"])
            assert len(row["channel"]) < MAX_NAME_LENGTH
        for member in members:
            assert len(member["group_name"]) < MAX_NAME_LENGTH
        await layer.flush()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(calls=CALLS)
def test_arbitrary_calls_work_or_fail_cleanly(
    database_url: str, calls: list[tuple[str, Any, Any, Any]]
) -> None:
    asyncio.run(exercise(database_url, calls))


@given(prefix=VALID_NAME, queue=st.one_of(VALID_NAME, VALID_NAME.map(lambda name: name + "!")))
def test_every_topic_is_a_short_plain_identifier(prefix: str, queue: str) -> None:
    topic = topic_for(prefix, queue)
    assert len(topic.encode()) <= 63
    assert topic.isascii() and topic.replace("_", "").isalnum() and topic.islower()
