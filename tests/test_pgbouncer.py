"""The layer's main behaviours through a real PgBouncer in transaction pooling mode.

Statements go through PgBouncer, whose two server connections (DEFAULT_POOL_SIZE) the
layer's client connections share; LISTEN goes straight to PostgreSQL through listen_url.
Without a ``pgbouncer`` binary these tests skip, saying so; CI installs Debian's package and
sets CHANNEL_LAYER_PG_REQUIRE_PGBOUNCER=1, which turns that skip into a failure.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from sqlalchemy.ext.asyncio import create_async_engine

from channel_layer_pg import ChannelFull, DatabaseUnreachableError, PostgresChannelLayer
from channel_layer_pg.database_url import asyncpg_url
from channel_layer_pg.naming import topic_for
from tests.helpers import TIMEOUT, LayerFactory, SignalWhenWaiting, Sql, nothing_arrives, receive
from tests.pgbouncer import DEFAULT_POOL_SIZE, PgBouncer, find_pgbouncer, running_pgbouncer

REQUIRED = os.environ.get("CHANNEL_LAYER_PG_REQUIRE_PGBOUNCER") == "1"


def _require_pgbouncer() -> None:
    if find_pgbouncer() is not None:
        return
    reason = "no pgbouncer binary: install Debian's package (apt-get install pgbouncer) to run these tests"
    if REQUIRED:
        pytest.fail(f"{reason}; CHANNEL_LAYER_PG_REQUIRE_PGBOUNCER=1 requires them")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def pgbouncer(database_url: str) -> Iterator[PgBouncer]:
    _require_pgbouncer()
    with running_pgbouncer(database_url) as bouncer:
        yield bouncer


@pytest.fixture
def bounced(make_layer: LayerFactory, pgbouncer: PgBouncer, database_url: str) -> LayerFactory:
    """Layers whose statements go through PgBouncer and whose LISTEN goes straight to PostgreSQL."""

    def make(**options: Any) -> PostgresChannelLayer:
        return make_layer(url=pgbouncer.url, listen_url=database_url, **options)

    return make


async def send_each(layer: PostgresChannelLayer, channels: list[str]) -> None:
    """Send each channel its own name, all at once; a failure lists what failed, compactly."""
    sent = await asyncio.gather(
        *(layer.send(channel, {"type": "x", "to": channel}) for channel in channels), return_exceptions=True
    )
    assert [repr(result) for result in sent if result is not None] == []


async def received_by(receiving: list[asyncio.Task[dict[str, Any]]], timeout: float) -> list[Any]:
    """What each receive got: the name of the channel it was sent to, or its error."""
    got = await asyncio.wait_for(asyncio.gather(*receiving, return_exceptions=True), timeout)
    return [message["to"] if isinstance(message, dict) else repr(message) for message in got]


# -- the main behaviours, through PgBouncer ---------------------------------------------------


async def test_a_message_sent_through_pgbouncer_is_received(bounced: LayerFactory) -> None:
    layer = bounced()
    await layer.send("test.bounced", {"type": "hello", "n": 1})
    assert await receive(layer, "test.bounced") == {"type": "hello", "n": 1}


async def test_a_waiting_receive_is_woken_through_listen_url(bounced: LayerFactory) -> None:
    layer = bounced()
    receiving = asyncio.create_task(layer.receive("test.woken"))
    # Sent from another layer instance: only the NOTIFY can wake the first one this quickly,
    # well inside the reader's 5 s poll.
    await bounced().send("test.woken", {"type": "wake"})
    assert await asyncio.wait_for(receiving, 2.0) == {"type": "wake"}


async def test_process_local_channels_work_through_pgbouncer(bounced: LayerFactory) -> None:
    layer = bounced()
    first, second = await layer.new_channel(), await layer.new_channel()
    await bounced().send(second, {"type": "to second"})
    await layer.send(first, {"type": "to first"})
    assert await receive(layer, first) == {"type": "to first"}
    assert await receive(layer, second) == {"type": "to second"}


async def test_group_send_reaches_members_and_not_discarded_ones_through_pgbouncer(
    bounced: LayerFactory,
) -> None:
    layer = bounced()
    staying, leaving = await layer.new_channel(), "test.leaving"
    await layer.group_add("room", staying)
    await layer.group_add("room", leaving)
    await layer.group_discard("room", leaving)
    await layer.group_send("room", {"type": "chat"})
    assert await receive(layer, staying) == {"type": "chat"}
    assert await nothing_arrives(layer, leaving)


async def test_flush_empties_the_layer_through_pgbouncer(bounced: LayerFactory) -> None:
    layer = bounced()
    await layer.send("test.flushed", {"type": "gone"})
    await layer.group_add("room", "test.flushed")
    await layer.flush()
    await layer.group_send("room", {"type": "nobody hears"})
    assert await nothing_arrives(layer, "test.flushed")


async def test_send_raises_channel_full_at_capacity_through_pgbouncer(bounced: LayerFactory) -> None:
    layer = bounced(capacity=2)
    await layer.send("test.full", {"type": "1"})
    await layer.send("test.full", {"type": "2"})
    with pytest.raises(ChannelFull):
        await layer.send("test.full", {"type": "3"})


async def test_an_expired_message_is_not_delivered_through_pgbouncer(bounced: LayerFactory, sql: Sql) -> None:
    layer = bounced()
    await layer.send("test.stale", {"type": "stale"})
    await sql(
        "UPDATE channel_layer_pg_message SET expires_at = now() - interval '1 second' WHERE prefix = $1",
        layer.prefix,
    )
    assert await nothing_arrives(layer, "test.stale")


async def test_200_concurrent_sends_and_receives_share_pgbouncers_few_server_connections(
    bounced: LayerFactory, pgbouncer: PgBouncer
) -> None:
    # A pool far larger than PgBouncer's: many client connections take turns on two server
    # connections, which is where a statement relying on its session would break.
    layer = bounced(pool_size=20, max_overflow=0, capacity=1000)
    local = [await layer.new_channel() for _ in range(100)]
    normal = [f"test.many-{n}" for n in range(100)]
    receiving = [asyncio.create_task(layer.receive(channel)) for channel in local + normal]
    await send_each(layer, local + normal)
    assert await received_by(receiving, TIMEOUT * 2) == local + normal
    clients = [row for row in pgbouncer.show("CLIENTS") if row["application_name"] == "channel_layer_pg"]
    servers = [row for row in pgbouncer.show("SERVERS") if row["database"] != "pgbouncer"]
    assert len(clients) > DEFAULT_POOL_SIZE >= len(servers)


async def test_sync_calls_from_worker_threads_go_through_pgbouncer(bounced: LayerFactory) -> None:
    layer = bounced()
    channel = await layer.new_channel()
    await layer.group_add("room", channel)

    def view(n: int) -> None:
        # Served by the layer's I/O thread, whose own pool must be made for PgBouncer too.
        async_to_sync(layer.group_send)("room", {"type": "from.view", "n": n})

    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=4) as pool:
        await asyncio.wait_for(
            asyncio.gather(*(loop.run_in_executor(pool, view, n) for n in range(20))), TIMEOUT
        )
    got = sorted([(await receive(layer, channel))["n"] for _ in range(20)])
    assert got == list(range(20))


async def test_an_application_engine_made_for_pgbouncer_works_with_listen_url(
    make_layer: LayerFactory, pgbouncer: PgBouncer, database_url: str
) -> None:
    engine = create_async_engine(
        asyncpg_url(pgbouncer.url)[0],
        connect_args={"statement_cache_size": 0, "prepared_statement_cache_size": 0},
    )
    try:
        layer = make_layer(url=None, engine=engine, listen_url=database_url, capacity=1000)
        channels = [f"test.engine-{n}" for n in range(50)]
        receiving = [asyncio.create_task(layer.receive(channel)) for channel in channels]
        await send_each(layer, channels)
        assert await received_by(receiving, TIMEOUT) == channels
        await layer.close()
    finally:
        await engine.dispose()


# -- where the traffic goes ---------------------------------------------------------------


async def test_the_layers_statements_go_through_pgbouncer(
    bounced: LayerFactory, pgbouncer: PgBouncer
) -> None:
    def transactions() -> int:
        (row,) = [row for row in pgbouncer.show("STATS") if row["database"] == pgbouncer.database]
        return int(row["total_xact_count"])

    layer = bounced()
    before = transactions()
    for n in range(10):
        await layer.send("test.counted", {"type": "x", "n": n})
    assert [(await receive(layer, "test.counted"))["n"] for _ in range(10)] == list(range(10))
    # Ten sends, and at least one claim; PgBouncer counts each autocommitted statement.
    assert transactions() - before >= 11


async def test_the_listen_connection_goes_straight_to_postgresql(
    bounced: LayerFactory, pgbouncer: PgBouncer, sql: Sql
) -> None:
    # A receive that finds nothing waits, and LISTENs; one that finds its message never needs to.
    faults = SignalWhenWaiting()
    layer = bounced(fault_hooks=faults)
    receiving = asyncio.create_task(layer.receive("test.listened"))
    assert await asyncio.to_thread(faults.waiting.wait, TIMEOUT)
    await layer.send("test.listened", {"type": "x"})
    assert await asyncio.wait_for(receiving, TIMEOUT) == {"type": "x"}
    topic = topic_for(layer.prefix, "test.listened")
    listening = await sql("SELECT pid FROM pg_stat_activity WHERE query LIKE $1", f"LISTEN %{topic}%")
    through_pgbouncer = {row["remote_pid"] for row in pgbouncer.show("SERVERS")}
    assert len(listening) == 1
    assert listening[0]["pid"] not in through_pgbouncer


# -- misconfigurations, each a clear error ---------------------------------------------------


async def test_without_listen_url_pgbouncer_refuses_the_layer_with_an_error_naming_listen_url(
    make_layer: LayerFactory, pgbouncer: PgBouncer
) -> None:
    # PgBouncer refuses the startup parameters the layer sends by default (synchronous_commit,
    # enable_seqscan).
    layer = make_layer(url=pgbouncer.url)
    with pytest.raises(DatabaseUnreachableError, match="set listen_url to a direct PostgreSQL URL"):
        await layer.check()


# What the layer sets at connection time unless listen_url says a transaction pooler is there.
IGNORED_PARAMETERS = "synchronous_commit,enable_seqscan"


@pytest.fixture
def lenient_pgbouncer(database_url: str) -> Iterator[PgBouncer]:
    """A PgBouncer that ignores the layer's startup parameters, as some deployments configure it."""
    _require_pgbouncer()
    settings = {"ignore_startup_parameters": IGNORED_PARAMETERS}
    with running_pgbouncer(database_url, settings=settings) as bouncer:
        yield bouncer


async def test_without_listen_url_receives_through_pgbouncer_fail_naming_listen_url(
    make_layer: LayerFactory, lenient_pgbouncer: PgBouncer
) -> None:
    # Past the startup parameter, LISTEN through PgBouncer hears nothing (or a named statement
    # goes missing first): either way the receive says what to set rather than hang.
    layer = make_layer(url=lenient_pgbouncer.url, connect_timeout=2)
    with pytest.raises(DatabaseUnreachableError, match="set listen_url to a direct PostgreSQL URL"):
        await asyncio.wait_for(layer.receive("test.unheard"), TIMEOUT)


async def test_in_session_mode_the_layer_works_through_pgbouncer_without_listen_url(
    make_layer: LayerFactory, database_url: str
) -> None:
    # Configured as the README says: PgBouncer told to ignore the layer's startup parameters.
    _require_pgbouncer()
    settings = {"pool_mode": "session", "ignore_startup_parameters": IGNORED_PARAMETERS}
    with running_pgbouncer(database_url, settings=settings, pool_size=20) as bouncer:
        layer = make_layer(url=bouncer.url)
        await layer.check()
        await layer.send("test.session-mode", {"type": "through a session pooler"})
        assert await receive(layer, "test.session-mode") == {"type": "through a session pooler"}
        await layer.close()


@pytest.fixture
def forgetful_pgbouncer(database_url: str) -> Iterator[PgBouncer]:
    """A lenient PgBouncer that also discards its server connections' statements after every
    transaction, so that a named statement used a second time is always missing."""
    _require_pgbouncer()
    settings = {"ignore_startup_parameters": IGNORED_PARAMETERS, "server_reset_query_always": "1"}
    with running_pgbouncer(database_url, settings=settings) as bouncer:
        yield bouncer


async def test_with_listen_url_nothing_relies_on_what_a_transaction_left_in_its_session(
    make_layer: LayerFactory, forgetful_pgbouncer: PgBouncer, database_url: str
) -> None:
    layer = make_layer(url=forgetful_pgbouncer.url, listen_url=database_url, pool_size=10, capacity=1000)
    channels = [f"test.reset-{n}" for n in range(50)]
    for _ in range(2):  # every statement a second time, after PgBouncer's DISCARD ALL
        member = await layer.new_channel()
        await layer.group_add("room", member)
        receiving = [asyncio.create_task(layer.receive(channel)) for channel in channels]
        await send_each(layer, channels)
        await layer.group_send("room", {"type": "chat"})
        assert await received_by(receiving, TIMEOUT) == channels
        assert await receive(layer, member) == {"type": "chat"}
        await layer.group_discard("room", member)
        await layer.flush()


async def test_without_listen_url_a_lost_named_statement_is_an_error_naming_listen_url(
    make_layer: LayerFactory, forgetful_pgbouncer: PgBouncer
) -> None:
    layer = make_layer(url=forgetful_pgbouncer.url)
    await layer.send("test.named", {"type": "prepared and run"})
    with pytest.raises(DatabaseUnreachableError, match=r"does not exist; .*set listen_url to a direct"):
        await layer.send("test.named", {"type": "run again: gone"})


async def test_an_application_engine_with_named_statements_is_an_error_saying_how_to_make_it(
    make_layer: LayerFactory, forgetful_pgbouncer: PgBouncer, database_url: str
) -> None:
    engine = create_async_engine(asyncpg_url(forgetful_pgbouncer.url)[0])
    try:
        layer = make_layer(url=None, engine=engine, listen_url=database_url)
        await layer.send("test.named", {"type": "prepared and run"})
        with pytest.raises(
            DatabaseUnreachableError, match=r"create it with connect_args=\{'statement_cache_size': 0"
        ):
            await layer.send("test.named", {"type": "run again: gone"})
        await layer.close()
    finally:
        await engine.dispose()


async def test_a_listen_url_through_pgbouncer_fails_receives_with_a_clear_error(
    make_layer: LayerFactory, pgbouncer: PgBouncer
) -> None:
    layer = make_layer(url=pgbouncer.url, listen_url=pgbouncer.url, connect_timeout=2)
    with pytest.raises(DatabaseUnreachableError, match="listen_url must reach the same PostgreSQL server"):
        await asyncio.wait_for(layer.receive("test.unheard"), TIMEOUT)


async def test_a_listen_url_to_another_database_fails_receives_with_a_clear_error(
    make_layer: LayerFactory, database_url: str, empty_database_url: str
) -> None:
    layer = make_layer(url=database_url, listen_url=empty_database_url, connect_timeout=2)
    with pytest.raises(DatabaseUnreachableError, match="did not reach the LISTEN connection"):
        await asyncio.wait_for(layer.receive("test.unheard"), TIMEOUT)


async def test_receives_queued_behind_a_failing_check_fail_with_it_at_once(
    make_layer: LayerFactory, database_url: str, empty_database_url: str
) -> None:
    layer = make_layer(url=database_url, listen_url=empty_database_url, connect_timeout=2)
    receives = [layer.receive(f"test.unheard-{n}") for n in range(20)]
    # One check's wait (2 s) for all twenty, not twenty waits one after another.
    results = await asyncio.wait_for(asyncio.gather(*receives, return_exceptions=True), 2 * 2 + 2)
    assert all(isinstance(result, DatabaseUnreachableError) for result in results)
