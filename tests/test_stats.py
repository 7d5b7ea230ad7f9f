"""stats(): what the layer holds under its prefix, counted from the tables and pg_stat_activity."""

from __future__ import annotations

import asyncio
import json

import pytest

from channel_layer_pg import ChannelFull, LayerStats, PostgresChannelLayer
from channel_layer_pg.stats import GroupSize
from channel_layer_pg.store.migrate import migration_head
from channel_layer_pg.store.schema import VERSION_TABLE
from tests.helpers import TIMEOUT, LayerFactory, Sql


async def send_many(layer: PostgresChannelLayer, channel: str, count: int) -> None:
    for number in range(count):
        await layer.send(channel, {"type": "test", "n": number})


async def listeners_reach(layer: PostgresChannelLayer, count: int) -> LayerStats:
    """Stats once ``count`` listeners show: a listener connects in the background."""
    async with asyncio.timeout(TIMEOUT):
        # Polling the server for an observable state, bounded: no event exists for it.
        while (stats := await layer.stats()).listener_count != count:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    return stats


async def test_stats_count_queued_messages_per_channel_largest_first(layer: PostgresChannelLayer) -> None:
    await send_many(layer, "test.few", 1)
    await send_many(layer, "test.many", 3)
    await send_many(layer, "test.some", 2)
    stats = await layer.stats()
    assert [(backlog.name, backlog.messages) for backlog in stats.channels] == [
        ("test.many", 3),
        ("test.some", 2),
        ("test.few", 1),
    ]
    assert (stats.messages, stats.channel_count) == (6, 3)


async def test_a_group_message_stored_once_for_a_process_counts_for_each_recipient(
    make_layer: LayerFactory,
) -> None:
    # Another instance sends: a layer keeps what it sends to its own local channels in memory.
    receiver, sender = make_layer(), make_layer()
    first, second = await receiver.new_channel(), await receiver.new_channel()
    await receiver.group_add("room", first)
    await receiver.group_add("room", second)
    await sender.group_send("room", {"type": "to both"})
    stats = await sender.stats()
    assert sorted((backlog.name, backlog.messages) for backlog in stats.channels) == sorted(
        [(first, 1), (second, 1)]
    )
    assert stats.messages == 1  # one row, as capacity counts it


async def test_process_local_messages_are_counted_per_process(make_layer: LayerFactory) -> None:
    busy, quiet, sender = make_layer(), make_layer(), make_layer()
    await send_many(sender, await busy.new_channel(), 2)
    await send_many(sender, await busy.new_channel(), 1)
    await send_many(sender, await quiet.new_channel(), 1)
    stats = await sender.stats()
    assert [(backlog.name, backlog.messages) for backlog in stats.processes] == [
        (f"specific.{busy.client_prefix}!", 3),
        (f"specific.{quiet.client_prefix}!", 1),
    ]
    assert stats.process_count == 2


async def test_expired_messages_are_counted_apart_from_queued_ones(
    layer: PostgresChannelLayer, sql: Sql
) -> None:
    await send_many(layer, "test.stale", 2)
    await sql(
        "UPDATE channel_layer_pg_message SET expires_at = now() - interval '1 second' WHERE prefix = $1",
        layer.prefix,
    )
    await send_many(layer, "test.fresh", 1)
    stats = await layer.stats()
    assert (stats.messages, stats.expired_messages) == (1, 2)
    assert [backlog.name for backlog in stats.channels] == ["test.fresh"]


async def test_a_message_age_is_its_expiry_minus_the_time_it_has_left(
    make_layer: LayerFactory, sql: Sql
) -> None:
    layer = make_layer(expiry=60)
    await send_many(layer, "test.aged", 1)
    await sql(
        "UPDATE channel_layer_pg_message SET expires_at = now() + interval '45 seconds' WHERE prefix = $1",
        layer.prefix,
    )
    await send_many(layer, "test.aged", 1)
    stats = await layer.stats()
    assert stats.oldest_message_age is not None
    assert 15 <= stats.oldest_message_age < 15 + TIMEOUT
    (backlog,) = stats.channels
    assert backlog.oldest_age == pytest.approx(stats.oldest_message_age)


async def test_groups_are_listed_largest_first_with_lapsed_memberships_apart(
    layer: PostgresChannelLayer, sql: Sql
) -> None:
    for channel in ("test.a", "test.b", "test.c"):
        await layer.group_add("big", channel)
    await layer.group_add("small", "test.a")
    await layer.group_add("lapsed", "test.z")
    await sql(
        "UPDATE channel_layer_pg_group_member SET expires_at = now() - interval '1 second' "
        "WHERE prefix = $1 AND group_name = 'lapsed'",
        layer.prefix,
    )
    stats = await layer.stats()
    assert stats.groups == (GroupSize("big", 3), GroupSize("small", 1))
    assert (stats.group_count, stats.membership_count, stats.lapsed_memberships) == (2, 4, 1)


async def test_the_lists_hold_the_largest_entries_and_the_counts_hold_all(
    layer: PostgresChannelLayer,
) -> None:
    for number in range(4):
        await send_many(layer, f"test.c{number}", number + 1)
        await layer.group_add(f"g{number}", "test.member")
    stats = await layer.stats(limit=2)
    assert [backlog.name for backlog in stats.channels] == ["test.c3", "test.c2"]
    assert [group.name for group in stats.groups] == ["g0", "g1"]
    assert (stats.channel_count, stats.group_count, stats.messages) == (4, 4, 10)


async def test_stats_see_only_their_own_prefix(make_layer: LayerFactory, prefix: str) -> None:
    mine, other = make_layer(), make_layer(prefix=f"{prefix}-other")
    await send_many(other, "test.elsewhere", 1)
    await other.group_add("elsewhere", "test.elsewhere")
    stats = await mine.stats()
    assert (stats.messages, stats.channels, stats.group_count) == (0, (), 0)


async def test_an_empty_prefix_has_nothing_and_no_oldest_age(layer: PostgresChannelLayer, sql: Sql) -> None:
    stats = await layer.stats()
    (version,) = await sql(f"SELECT version_num FROM {VERSION_TABLE}")
    assert stats == LayerStats(
        prefix=layer.prefix,
        limit=10,
        expiry=60.0,
        messages=0,
        expired_messages=0,
        oldest_message_age=None,
        channel_count=0,
        channels=(),
        process_count=0,
        processes=(),
        group_count=0,
        membership_count=0,
        lapsed_memberships=0,
        groups=(),
        listener_count=0,
        listeners=(),
        writable=True,
        in_recovery=False,
        schema_revision=version["version_num"],
        schema_head=migration_head(),
        held_in_process=0,
        sends_refused=0,
        deliveries_skipped=0,
    )


async def test_listening_layers_of_the_prefix_are_listed_with_their_server_process(
    make_layer: LayerFactory, sql: Sql, prefix: str
) -> None:
    receiver, observer = make_layer(), make_layer()
    elsewhere = make_layer(prefix=f"{prefix}-other")
    receiving = [
        asyncio.create_task(receiver.receive("test.waiting")),
        asyncio.create_task(elsewhere.receive("test.waiting")),
    ]
    try:
        stats = await listeners_reach(observer, 1)
        (session,) = stats.listeners
        (row,) = await sql("SELECT usename, query FROM pg_stat_activity WHERE pid = $1", session.pid)
        assert row["query"].startswith("LISTEN")
        assert session.user == row["usename"]
        assert session.client is not None and session.connected_for is not None
    finally:
        for task in receiving:
            task.cancel()
        await asyncio.gather(*receiving, return_exceptions=True)


async def test_another_roles_listeners_are_counted_with_their_details_hidden(
    make_layer: LayerFactory, runtime_role_url: str
) -> None:
    receiver, observer = make_layer(), make_layer(url=runtime_role_url)
    receiving = asyncio.create_task(receiver.receive("test.waiting"))
    try:
        stats = await listeners_reach(observer, 1)
        (session,) = stats.listeners
        assert (session.client, session.connected_for) == (None, None)
    finally:
        receiving.cancel()
        await asyncio.gather(receiving, return_exceptions=True)


async def test_to_dict_holds_plain_json_types(layer: PostgresChannelLayer) -> None:
    await send_many(layer, "test.json", 1)
    await layer.group_add("room", "test.json")
    data = (await layer.stats()).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["channels"][0]["name"] == "test.json"
    assert data["groups"] == [{"name": "room", "members": 1}]


async def test_format_shows_each_list_as_a_table(layer: PostgresChannelLayer) -> None:
    await send_many(layer, "test.shown", 2)
    await layer.group_add("room", "test.shown")
    text = (await layer.stats()).format()
    assert "messages: 2 queued" in text
    assert any(line.split()[:1] == ["2"] and line.endswith("test.shown") for line in text.splitlines())
    assert any(line.split() == ["1", "room"] for line in text.splitlines())


@pytest.mark.parametrize(
    ("limit", "error"), [(0, ValueError), (-1, ValueError), ("5", TypeError), (True, TypeError)]
)
async def test_a_limit_that_is_not_a_positive_int_is_refused(
    layer: PostgresChannelLayer, limit: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="limit"):
        await layer.stats(limit=limit)  # type: ignore[arg-type]


async def test_messages_held_in_the_layers_memory_are_counted_apart(layer: PostgresChannelLayer) -> None:
    own = await layer.new_channel()
    await layer.send(own, {"type": "stays in this process"})
    await layer.send("test.stored", {"type": "goes to the table"})
    stats = await layer.stats()
    assert (stats.messages, stats.held_in_process) == (1, 1)
    assert "messages held in this process's memory: 1" in stats.format()


async def test_capacity_drops_of_the_layer_are_counted(make_layer: LayerFactory) -> None:
    layer, other = make_layer(capacity=1), make_layer(capacity=1)
    await layer.send("test.full", {"type": "fills it"})
    for _ in range(2):
        with pytest.raises(ChannelFull):
            await layer.send("test.full", {"type": "refused"})
    for member in ("test.full", "test.free", "test.full-too"):
        await layer.group_add("room", member)
    await layer.send("test.full-too", {"type": "fills it"})
    await layer.group_send("room", {"type": "reaches test.free only"})
    stats = await layer.stats()
    assert (stats.sends_refused, stats.deliveries_skipped) == (2, 2)
    assert "2 sends refused with ChannelFull, 2 group_send deliveries skipped" in stats.format()
    # Each layer instance counts its own.
    assert ((await other.stats()).sends_refused, (await other.stats()).deliveries_skipped) == (0, 0)
