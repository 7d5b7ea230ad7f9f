"""ShardedChannelLayer: channels, groups and process-local channels over several servers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from itertools import count
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from channel_layer_pg import (
    ChannelFull,
    DatabaseUnreachableError,
    LayerClosedError,
    ShardedChannelLayer,
    migrate,
)
from channel_layer_pg.cli import main
from channel_layer_pg.database_url import asyncpg_url
from channel_layer_pg.embedded import EmbeddedPostgres, embedded_server
from channel_layer_pg.faults import FaultHooks
from channel_layer_pg.metrics import scrape
from channel_layer_pg.naming import liveness_lock_key
from tests.conftest import fetch
from tests.helpers import TIMEOUT, receive

SHARDS = ("a", "b", "c")

ShardedFactory = Callable[..., ShardedChannelLayer]


@pytest.fixture(scope="module")
def extra_servers() -> Iterator[list[EmbeddedPostgres]]:
    """Two servers besides the session's, for shards b and c; a test may stop and start them.

    Module-scoped: starting one takes seconds.
    """
    with ExitStack() as stack:
        servers = [stack.enter_context(embedded_server()) for _ in range(2)]
        for server in servers:
            migrate(server.url)
        yield servers


@pytest.fixture
def shard_urls(database_url: str, extra_servers: list[EmbeddedPostgres]) -> dict[str, str]:
    return dict(zip(SHARDS, [database_url, *(server.url for server in extra_servers)], strict=True))


@pytest.fixture
async def make_sharded(shard_urls: dict[str, str], prefix: str) -> AsyncIterator[ShardedFactory]:
    layers: list[ShardedChannelLayer] = []

    def make(*, names: tuple[str, ...] = SHARDS, **options: Any) -> ShardedChannelLayer:
        options.setdefault("prefix", prefix)
        shards = [{"name": name, "url": shard_urls[name]} for name in names]
        layer = ShardedChannelLayer(shards=shards, **options)
        layers.append(layer)
        return layer

    yield make
    for layer in layers:
        await layer.close()


def channel_on_each_shard(layer: ShardedChannelLayer, stem: str = "test.sharded") -> dict[str, str]:
    """A normal channel name per shard, found through the layer's own routing."""
    found: dict[str, str] = {}
    for n in count():
        name = f"{stem}{n}"
        found.setdefault(layer.shard_of(name), name)
        if len(found) == len(layer.shard_names):
            return found
    raise AssertionError("unreachable")


async def rows_on(url: str, prefix: str) -> list[str]:
    """The channels of the messages stored on the server at ``url`` under ``prefix``."""
    rows = await fetch(url, "SELECT channel FROM channel_layer_pg_message WHERE prefix = $1", prefix)
    return sorted(row["channel"] for row in rows)


async def members_on(url: str, prefix: str) -> list[str]:
    rows = await fetch(url, "SELECT channel FROM channel_layer_pg_group_member WHERE prefix = $1", prefix)
    return sorted(row["channel"] for row in rows)


async def test_each_channel_is_stored_on_its_own_shard_and_received_there(
    make_sharded: ShardedFactory, shard_urls: dict[str, str], prefix: str
) -> None:
    sender, receiver = make_sharded(), make_sharded()
    channels = channel_on_each_shard(sender)
    for shard, channel in channels.items():
        await sender.send(channel, {"type": "hello", "shard": shard})
    for shard, channel in channels.items():
        assert await rows_on(shard_urls[shard], prefix) == [channel]
    for shard, channel in channels.items():
        assert await receive(receiver, channel) == {"type": "hello", "shard": shard}


async def test_every_process_routes_a_channel_to_the_same_shard(make_sharded: ShardedFactory) -> None:
    first, second = make_sharded(), make_sharded()
    names = [f"test.route{n}" for n in range(200)]
    assert [first.shard_of(name) for name in names] == [second.shard_of(name) for name in names]
    assert set(first.shard_of(name) for name in names) == set(SHARDS)


async def test_process_local_channels_live_on_the_home_shard(make_sharded: ShardedFactory) -> None:
    owner, other = make_sharded(), make_sharded()
    channels = [await owner.new_channel(prefix) for prefix in ("specific", "chat", "x.y")]
    assert {owner.shard_of(channel) for channel in channels} == {owner.home_shard}
    assert {other.shard_of(channel) for channel in channels} == {owner.home_shard}
    for n, channel in enumerate(channels):
        await other.send(channel, {"type": "local", "n": n})
    for n, channel in enumerate(channels):
        assert await receive(owner, channel) == {"type": "local", "n": n}


async def test_home_shards_spread_over_the_shards(make_sharded: ShardedFactory) -> None:
    homes = {make_sharded().home_shard for _ in range(60)}
    assert homes == set(SHARDS)


async def test_a_process_local_channel_of_another_instance_cannot_be_received(
    make_sharded: ShardedFactory,
) -> None:
    owner, other = make_sharded(), make_sharded()
    channel = await owner.new_channel()
    with pytest.raises(ValueError, match="another layer instance"):
        await other.receive(channel)


async def test_group_send_reaches_members_on_every_shard(make_sharded: ShardedFactory) -> None:
    sender, receiver = make_sharded(), make_sharded()
    channels = list(channel_on_each_shard(receiver).values())
    local = await receiver.new_channel()
    for channel in [*channels, local]:
        await receiver.group_add("test-room", channel)
    await sender.group_send("test-room", {"type": "to all"})
    for channel in [*channels, local]:
        assert await receive(receiver, channel) == {"type": "to all"}


async def test_group_discard_removes_a_member_from_its_shard(make_sharded: ShardedFactory) -> None:
    layer = make_sharded()
    channels = channel_on_each_shard(layer)
    for channel in channels.values():
        await layer.group_add("test-room", channel)
    dropped = channels["b"]
    await layer.group_discard("test-room", dropped)
    await layer.group_send("test-room", {"type": "after discard"})
    for shard, channel in channels.items():
        if shard != "b":
            assert await receive(layer, channel) == {"type": "after discard"}
    await layer.send(dropped, {"type": "only this"})
    assert await receive(layer, dropped) == {"type": "only this"}


async def test_flush_empties_every_shard(
    make_sharded: ShardedFactory, shard_urls: dict[str, str], prefix: str
) -> None:
    layer = make_sharded()
    channels = channel_on_each_shard(layer)
    for channel in channels.values():
        await layer.send(channel, {"type": "flushed"})
        await layer.group_add("test-room", channel)
    await layer.flush()
    for url in shard_urls.values():
        assert await rows_on(url, prefix) == []
    await layer.group_send("test-room", {"type": "nobody"})
    for url in shard_urls.values():
        assert await rows_on(url, prefix) == []


async def test_stats_reports_every_shard(make_sharded: ShardedFactory) -> None:
    layer = make_sharded()
    channels = channel_on_each_shard(layer)
    await layer.send(channels["c"], {"type": "counted"})
    stats = await layer.stats()
    assert set(stats) == set(SHARDS)
    assert {shard: figures.messages for shard, figures in stats.items()} == {"a": 0, "b": 0, "c": 1}


async def test_capacity_applies_to_each_channel_on_every_shard(make_sharded: ShardedFactory) -> None:
    layer = make_sharded(capacity=2)
    channels = channel_on_each_shard(layer)
    for channel in channels.values():
        await layer.send(channel, {"type": "1"})
        await layer.send(channel, {"type": "2"})
        with pytest.raises(ChannelFull):
            await layer.send(channel, {"type": "3"})


async def test_assigned_capacity_reaches_every_shard(make_sharded: ShardedFactory) -> None:
    layer = make_sharded()
    layer.capacity = 1
    for channel in channel_on_each_shard(layer).values():
        await layer.send(channel, {"type": "1"})
        with pytest.raises(ChannelFull):
            await layer.send(channel, {"type": "2"})


async def test_a_stopped_shard_fails_only_its_channels_and_recovers_without_a_new_layer(
    make_sharded: ShardedFactory, extra_servers: list[EmbeddedPostgres]
) -> None:
    layer = make_sharded(connect_timeout=2)
    channels = channel_on_each_shard(layer)
    for channel in channels.values():
        await layer.group_add("test-room", channel)
        await layer.send(channel, {"type": "warm"})
        assert await receive(layer, channel) == {"type": "warm"}
    down = extra_servers[1]  # shard c
    await asyncio.to_thread(down.stop)
    try:
        with pytest.raises(DatabaseUnreachableError):
            await layer.send(channels["c"], {"type": "lost"})
        for shard in ("a", "b"):
            await layer.send(channels[shard], {"type": "still up"})
            assert await receive(layer, channels[shard]) == {"type": "still up"}
        with pytest.raises(DatabaseUnreachableError, match="group_send failed on shard 'c'"):
            await layer.group_send("test-room", {"type": "partial"})
        for shard in ("a", "b"):
            assert await receive(layer, channels[shard]) == {"type": "partial"}
        with pytest.raises(DatabaseUnreachableError, match="ping failed on shard 'c'"):
            await layer.ping()
    finally:
        await asyncio.to_thread(down.start)
    # The same layer reconnects: its back-off retries within connect_timeout.
    async with asyncio.timeout(TIMEOUT):
        while True:
            try:
                await layer.send(channels["c"], {"type": "back"})
                break
            except DatabaseUnreachableError:
                await asyncio.sleep(0.2)
    assert await receive(layer, channels["c"]) == {"type": "back"}


async def test_group_send_in_a_transaction_is_refused_with_a_reason(make_sharded: ShardedFactory) -> None:
    layer = make_sharded()
    with pytest.raises(ValueError, match="one transaction commits on one database only"):
        await layer.group_send("test-room", {"type": "x"}, connection=object())  # type: ignore[arg-type]


def test_adding_a_shard_moves_a_third_of_the_names_and_only_onto_the_new_shard() -> None:
    def layer(names: tuple[str, ...]) -> ShardedChannelLayer:
        # Routing needs no connection: none is opened before the first call.
        return ShardedChannelLayer(shards=[{"name": n, "url": f"postgresql://h{n}/db"} for n in names])

    two, three = layer(("a", "b")), layer(("a", "b", "c"))
    names = [f"chat.user{n}" for n in range(10_000)]
    moved = [
        (two.shard_of(name), three.shard_of(name))
        for name in names
        if two.shard_of(name) != three.shard_of(name)
    ]
    assert {new for _, new in moved} == {"c"}
    assert 0.28 < len(moved) / len(names) < 0.39


def test_shard_names_default_to_the_url_without_its_password() -> None:
    layer = ShardedChannelLayer(shards=["postgresql://u:secret@h1/db", "postgresql://u:secret@h2/db"])
    assert layer.shard_names == ("postgresql://u:***@h1/db", "postgresql://u:***@h2/db")


def test_a_database_option_outside_shards_is_refused() -> None:
    with pytest.raises(TypeError, match="not 'url'"):
        ShardedChannelLayer(shards=["postgresql://h1/db"], url="postgresql://h2/db")


def test_two_shards_with_one_name_are_refused() -> None:
    with pytest.raises(ValueError, match="same name 'x'"):
        ShardedChannelLayer(
            shards=[{"name": "x", "url": "postgresql://h1/db"}, {"name": "x", "url": "postgresql://h2/db"}]
        )


def test_an_unknown_key_in_a_shard_entry_is_refused() -> None:
    with pytest.raises(TypeError, match="'capacity'"):
        ShardedChannelLayer(shards=[{"url": "postgresql://h1/db", "capacity": 5}])


async def test_the_migrate_command_migrates_every_url_given(
    empty_database_url: str, extra_servers: list[EmbeddedPostgres], capsys: pytest.CaptureFixture[str]
) -> None:
    urls = [empty_database_url, extra_servers[0].url]
    argv = ["migrate", *(arg for url in urls for arg in ("--url", url))]
    assert await asyncio.to_thread(main, argv) == 0
    out = capsys.readouterr().out
    assert [line.startswith("migrated ") for line in out.splitlines()] == [True, True]
    layer = ShardedChannelLayer(shards=urls)
    try:
        await layer.check()
    finally:
        await layer.close()


async def test_the_stats_command_reports_every_url_given(
    make_sharded: ShardedFactory, shard_urls: dict[str, str], prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    layer = make_sharded()
    await layer.send(channel_on_each_shard(layer)["b"], {"type": "counted"})
    argv = [
        "stats",
        "--prefix",
        prefix,
        "--json",
        *(arg for url in shard_urls.values() for arg in ("--url", url)),
    ]
    assert await asyncio.to_thread(main, argv) == 0
    documents = json.loads(capsys.readouterr().out)
    assert [document["messages"] for document in documents] == [0, 1, 0]


async def test_a_transactional_send_goes_through_only_on_the_channel_s_shard(
    make_sharded: ShardedFactory, shard_urls: dict[str, str]
) -> None:
    layer = make_sharded()
    channels = channel_on_each_shard(layer)
    engine = create_async_engine(asyncpg_url(shard_urls["b"])[0])
    try:
        async with engine.begin() as conn:
            await layer.send(channels["b"], {"type": "committed"}, connection=conn)
        assert await receive(layer, channels["b"]) == {"type": "committed"}
        with pytest.raises(ValueError, match="must write to the layer's own database") as raised:
            async with engine.begin() as conn:
                await layer.send(channels["c"], {"type": "wrong shard"}, connection=conn)
        assert f"channel {channels['c']!r} lives on shard 'c'" in raised.value.__notes__
    finally:
        await engine.dispose()


async def test_calls_on_a_closed_sharded_layer_raise_layer_closed(make_sharded: ShardedFactory) -> None:
    layer = make_sharded()
    channel = channel_on_each_shard(layer)["b"]
    await layer.close()
    with pytest.raises(LayerClosedError, match="was closed"):
        await layer.group_send("test-room", {"type": "x"})
    with pytest.raises(LayerClosedError, match="was closed"):
        await layer.send(channel, {"type": "x"})
    await layer.group_discard("test-room", channel)


async def test_a_process_s_liveness_and_memberships_live_on_its_home_shard(
    make_sharded: ShardedFactory, shard_urls: dict[str, str], prefix: str
) -> None:
    owner = make_sharded()
    local = await owner.new_channel()
    await owner.group_add("test-room", local)
    home = shard_urls[owner.home_shard]
    lock = (
        "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND ((classid::int8 << 32) | objid::int8) = $1"
    )
    assert (await fetch(home, lock, liveness_lock_key(owner.client_prefix)))[0]["n"] == 1
    assert {shard: await members_on(url, prefix) for shard, url in shard_urls.items()} == {
        shard: [local] if shard == owner.home_shard else [] for shard in SHARDS
    }
    # Closed without group_discard, as a process that dies: the cleanup of another process,
    # running on every shard, finds the lock gone on the home shard and removes the membership.
    await owner.close()
    cleaner = make_sharded(fault_hooks=FaultHooks(cleanup_interval=1.0))
    await cleaner.group_send("test-room", {"type": "starts the cleanup on every shard"})
    async with asyncio.timeout(TIMEOUT * 2):
        # Polling the server for an observable state, bounded: no event exists for it.
        while await members_on(home, prefix):  # noqa: ASYNC110
            await asyncio.sleep(0.1)


async def test_delete_expired_removes_expired_messages_on_every_shard(
    make_sharded: ShardedFactory, shard_urls: dict[str, str], prefix: str
) -> None:
    layer = make_sharded(expiry=0.5)
    for channel in channel_on_each_shard(layer).values():
        await layer.send(channel, {"type": "expires"})
    removed = 0
    async with asyncio.timeout(TIMEOUT):
        # Each message expires half a second after its send; nothing signals that moment.
        while [url for url in shard_urls.values() if await rows_on(url, prefix)]:
            removed += await layer.delete_expired()
            await asyncio.sleep(0.1)
    # Expired rows of every prefix count (other tests' too, on a shared server).
    assert removed >= len(SHARDS)


async def test_the_metrics_of_a_sharded_layer_carry_each_shard_s_figures(
    make_sharded: ShardedFactory,
) -> None:
    parser = pytest.importorskip("prometheus_client.parser")
    layer = make_sharded()
    channels = channel_on_each_shard(layer)
    await layer.send(channels["b"], {"type": "counted"})
    await layer.send(channels["c"], {"type": "counted"})
    await layer.send(channels["c"], {"type": "counted"})
    families = {family.name: family for family in parser.text_string_to_metric_families(await scrape(layer))}
    messages = {
        sample.labels["shard"]: sample.value for sample in families["channel_layer_pg_messages"].samples
    }
    assert messages == {"a": 0, "b": 1, "c": 2}
    assert all(
        sample.labels["prefix"] == layer.prefix for family in families.values() for sample in family.samples
    )
