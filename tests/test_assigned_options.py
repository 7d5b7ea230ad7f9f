"""expiry, group_expiry and capacity assigned on a running layer apply to what follows, on every loop."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import async_to_sync

from channel_layer_pg import ChannelFull, PostgresChannelLayer
from tests.helpers import TIMEOUT, LayerFactory, Sql, nothing_arrives, receive


async def time_to_live(sql: Sql, prefix: str, channel: str) -> float:
    (row,) = await sql(
        "SELECT extract(epoch FROM expires_at - now()) AS ttl FROM channel_layer_pg_message "
        "WHERE prefix = $1 AND channel = $2",
        prefix,
        channel,
    )
    return float(row["ttl"])


async def until_expired(sql: Sql, prefix: str, channel: str) -> None:
    """Wait, at most TIMEOUT, until PostgreSQL's clock has passed ``channel``'s messages' expiry."""
    unexpired = (
        "SELECT count(*) AS n FROM channel_layer_pg_message "
        "WHERE prefix = $1 AND channel = $2 AND expires_at > now()"
    )
    async with asyncio.timeout(TIMEOUT):
        while (await sql(unexpired, prefix, channel))[0]["n"]:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def test_assigning_expiry_makes_later_messages_expire_after_that_long(
    layer: PostgresChannelLayer, sql: Sql
) -> None:
    await layer.send("test.sent-before", {"type": "before"})
    layer.expiry = 1
    assert layer.expiry == 1.0
    local = await layer.new_channel()
    # Held in this process, not the table: sent first, it expires no later than the row below.
    await layer.send(local, {"type": "in memory"})
    await layer.send("test.sent-after", {"type": "after"})
    assert 0 < await time_to_live(sql, layer.prefix, "test.sent-after") <= 1
    assert 55 < await time_to_live(sql, layer.prefix, "test.sent-before") <= 60
    await until_expired(sql, layer.prefix, "test.sent-after")
    assert await nothing_arrives(layer, "test.sent-after")
    assert await nothing_arrives(layer, local)
    assert await receive(layer, "test.sent-before") == {"type": "before"}


async def test_assigned_expiry_reaches_group_send_and_the_io_thread(
    layer: PostgresChannelLayer, sql: Sql
) -> None:
    # async_to_sync from a thread with no loop runs on a loop made for the call: the layer
    # serves it from its I/O thread, whose backend exists before the assignment.
    send_from_sync_code = async_to_sync(layer.send)
    await asyncio.to_thread(send_from_sync_code, "test.io-before", {"type": "before"})
    layer.expiry = 2
    await asyncio.to_thread(send_from_sync_code, "test.io-after", {"type": "after"})
    await layer.group_add("room", "test.member")
    await layer.group_send("room", {"type": "to the group"})
    assert 55 < await time_to_live(sql, layer.prefix, "test.io-before") <= 60
    assert 0 < await time_to_live(sql, layer.prefix, "test.io-after") <= 2
    assert 0 < await time_to_live(sql, layer.prefix, "test.member") <= 2


async def test_assigning_capacity_applies_to_later_sends_and_group_sends(layer: PostgresChannelLayer) -> None:
    layer.capacity = 1
    assert layer.capacity == 1
    await layer.send("test.small", {"type": "fits"})
    with pytest.raises(ChannelFull):
        await layer.send("test.small", {"type": "over"})
    await layer.group_add("room", "test.small")
    await layer.group_send("room", {"type": "skipped, the member is full"})
    assert await receive(layer, "test.small") == {"type": "fits"}
    assert await nothing_arrives(layer, "test.small")


async def test_assigning_group_expiry_applies_to_later_group_adds(
    layer: PostgresChannelLayer, sql: Sql
) -> None:
    layer.group_expiry = 30
    await layer.group_add("room", "test.lapsing")
    layer.group_expiry = 0
    assert layer.group_expiry == 0
    await layer.group_add("room", "test.forever")
    rows = await sql(
        "SELECT channel, expires_at = 'infinity' AS forever, "
        # Before PostgreSQL 16, infinity minus a timestamp is an error.
        "CASE WHEN expires_at <> 'infinity' THEN extract(epoch FROM expires_at - now()) END AS ttl "
        "FROM channel_layer_pg_group_member WHERE prefix = $1 ORDER BY channel",
        layer.prefix,
    )
    assert [row["channel"] for row in rows] == ["test.forever", "test.lapsing"]
    assert rows[0]["forever"]
    assert 25 < rows[1]["ttl"] <= 30


@pytest.mark.parametrize(
    ("option", "value", "error", "match"),
    [
        ("expiry", float("inf"), ValueError, "expiry must be a finite number of seconds > 0"),
        ("expiry", "3", TypeError, "expiry must be a number of seconds"),
        ("group_expiry", float("nan"), ValueError, "group_expiry must be a finite number of seconds >= 0"),
        ("capacity", 0, ValueError, "capacity must be at least 1"),
        ("capacity", 2.5, TypeError, "capacity must be an int"),
    ],
)
def test_an_assigned_value_is_checked_like_the_option_and_a_bad_one_changes_nothing(
    make_layer: LayerFactory, option: str, value: object, error: type[Exception], match: str
) -> None:
    layer = make_layer(expiry=30, group_expiry=600, capacity=7)
    with pytest.raises(error, match=match):
        setattr(layer, option, value)
    assert (layer.expiry, layer.group_expiry, layer.capacity) == (30, 600, 7)


def test_prefix_cannot_be_assigned(layer: PostgresChannelLayer) -> None:
    prefix = layer.prefix
    with pytest.raises(AttributeError, match="pass prefix= to the constructor"):
        layer.prefix = "other"  # type: ignore[misc]
    assert layer.prefix == prefix
