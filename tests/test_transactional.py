"""Transactional send: a message written with the application's connection exists at commit only."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from channel_layer_pg import ChannelFull, LayerClosedError, PostgresChannelLayer, SchemaMissingError
from channel_layer_pg.database_url import asyncpg_url
from tests.helpers import TIMEOUT, LayerFactory, Sql, nothing_arrives, receive
from tests.test_processes import ROOT


@pytest.fixture
async def app_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """The application's own engine on the layer's database, as a web app would have it."""
    engine = create_async_engine(asyncpg_url(database_url)[0])
    yield engine
    await engine.dispose()


async def test_a_message_sent_in_a_transaction_arrives_when_it_commits(
    layer: PostgresChannelLayer, app_engine: AsyncEngine
) -> None:
    async with app_engine.connect() as conn:
        async with conn.begin():
            await layer.send("test.orders", {"type": "order.changed"}, connection=conn)
            assert await nothing_arrives(layer, "test.orders")
        assert await receive(layer, "test.orders") == {"type": "order.changed"}


async def test_a_rolled_back_transaction_delivers_nothing(
    layer: PostgresChannelLayer, app_engine: AsyncEngine
) -> None:
    async with app_engine.connect() as conn:
        transaction = await conn.begin()
        await layer.send("test.orders", {"type": "rolled back"}, connection=conn)
        await transaction.rollback()
    assert await nothing_arrives(layer, "test.orders")
    await layer.send("test.orders", {"type": "ordinary"})
    assert await receive(layer, "test.orders") == {"type": "ordinary"}


async def test_a_rolled_back_savepoint_drops_only_its_messages(
    layer: PostgresChannelLayer, app_engine: AsyncEngine
) -> None:
    async with app_engine.begin() as conn:
        await layer.send("test.orders", {"type": "before"}, connection=conn)
        savepoint = await conn.begin_nested()
        await layer.send("test.orders", {"type": "inside the savepoint"}, connection=conn)
        await savepoint.rollback()
        await layer.send("test.orders", {"type": "after"}, connection=conn)
    assert await receive(layer, "test.orders") == {"type": "before"}
    assert await receive(layer, "test.orders") == {"type": "after"}
    assert await nothing_arrives(layer, "test.orders")


async def test_an_async_session_sends_when_the_session_commits(
    layer: PostgresChannelLayer, app_engine: AsyncEngine
) -> None:
    async with AsyncSession(app_engine) as session:
        await layer.send("test.orders", {"type": "from a session"}, connection=session)
        assert await nothing_arrives(layer, "test.orders")
        await session.commit()
    assert await receive(layer, "test.orders") == {"type": "from a session"}


async def test_group_send_in_a_transaction_reaches_the_members_at_commit(
    layer: PostgresChannelLayer, app_engine: AsyncEngine
) -> None:
    local = await layer.new_channel()
    await layer.group_add("order-7", local)
    await layer.group_add("order-7", "test.audit")
    async with app_engine.begin() as conn:
        await layer.group_send("order-7", {"type": "order.changed"}, connection=conn)
        assert await nothing_arrives(layer, local)
    assert await receive(layer, local) == {"type": "order.changed"}
    assert await receive(layer, "test.audit") == {"type": "order.changed"}


async def test_a_rolled_back_group_send_delivers_nothing(
    layer: PostgresChannelLayer, app_engine: AsyncEngine
) -> None:
    await layer.group_add("order-7", "test.member")
    async with app_engine.connect() as conn:
        transaction = await conn.begin()
        await layer.group_send("order-7", {"type": "rolled back"}, connection=conn)
        await transaction.rollback()
    assert await nothing_arrives(layer, "test.member")


# -- order ---------------------------------------------------------------------------------------


async def test_messages_keep_their_place_among_sends_before_and_after_the_transaction(
    layer: PostgresChannelLayer, app_engine: AsyncEngine
) -> None:
    await layer.send("test.order", {"type": "ordinary", "n": 1})
    async with app_engine.begin() as conn:
        await layer.send("test.order", {"type": "transactional", "n": 2}, connection=conn)
        await layer.send("test.order", {"type": "transactional", "n": 3}, connection=conn)
    await layer.send("test.order", {"type": "ordinary", "n": 4})
    assert [(await receive(layer, "test.order"))["n"] for _ in range(4)] == [1, 2, 3, 4]


async def test_a_send_while_the_transaction_is_open_is_delivered_first_if_received_before_the_commit(
    layer: PostgresChannelLayer, app_engine: AsyncEngine
) -> None:
    async with app_engine.begin() as conn:
        await layer.send("test.order", {"type": "transactional"}, connection=conn)
        await layer.send("test.order", {"type": "ordinary"})
        # The transactional row is invisible until commit, so the ordinary one overtakes it.
        assert await receive(layer, "test.order") == {"type": "ordinary"}
    assert await receive(layer, "test.order") == {"type": "transactional"}


async def test_rows_still_waiting_at_the_commit_are_delivered_in_the_order_they_were_inserted(
    layer: PostgresChannelLayer, app_engine: AsyncEngine
) -> None:
    async with app_engine.begin() as conn:
        await layer.send("test.order", {"type": "transactional"}, connection=conn)
        await layer.send("test.order", {"type": "ordinary"})
    # Committed second but inserted first: its id is lower, and claims go by id.
    assert await receive(layer, "test.order") == {"type": "transactional"}
    assert await receive(layer, "test.order") == {"type": "ordinary"}


# -- another process -----------------------------------------------------------------------------


async def test_a_receiver_in_another_process_gets_the_message_only_after_commit(
    make_layer: LayerFactory, app_engine: AsyncEngine, database_url: str, prefix: str
) -> None:
    layer = make_layer()
    replies = await layer.new_channel()
    worker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.worker", database_url, prefix, "test.jobs", replies, cwd=ROOT
    )
    try:
        assert (await receive(layer, replies))["type"] == "ready"
        async with app_engine.connect() as conn:
            transaction = await conn.begin()
            await layer.send("test.jobs", {"type": "job", "n": 1}, connection=conn)
            await transaction.rollback()
            async with conn.begin():
                await layer.send("test.jobs", {"type": "job", "n": 2}, connection=conn)
                assert await nothing_arrives(layer, replies)
        # The worker answers jobs in order: had job 1 reached it, its answer would come first.
        assert await receive(layer, replies) == {"type": "done", "n": 2, "pid": worker.pid}
        await layer.send("test.jobs", {"type": "stop"})
        assert await asyncio.wait_for(worker.wait(), TIMEOUT) == 0
        assert await nothing_arrives(layer, replies)
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()


# -- capacity and expiry -------------------------------------------------------------------------


async def test_channel_full_in_a_transaction_leaves_the_transaction_usable(
    make_layer: LayerFactory, app_engine: AsyncEngine
) -> None:
    layer = make_layer(capacity=1)
    async with app_engine.begin() as conn:
        await layer.send("test.cap", {"type": "fits"}, connection=conn)
        # The transaction's own uncommitted message counts against the capacity.
        with pytest.raises(ChannelFull, match=r"test\.cap"):
            await layer.send("test.cap", {"type": "does not fit"}, connection=conn)
        assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
        await layer.send("test.other", {"type": "still sending"}, connection=conn)
    assert await receive(layer, "test.cap") == {"type": "fits"}
    assert await receive(layer, "test.other") == {"type": "still sending"}
    assert await nothing_arrives(layer, "test.cap")


async def test_expiry_counts_from_the_send_not_from_the_start_of_the_transaction(
    make_layer: LayerFactory, app_engine: AsyncEngine
) -> None:
    layer = make_layer(expiry=1)
    waiting = asyncio.create_task(layer.receive("test.ttl"))
    async with app_engine.begin() as conn:
        # Not waiting for an outcome: this makes the transaction older than the expiry.
        await conn.execute(text("SELECT pg_sleep(1.2)"))
        await layer.send("test.ttl", {"type": "sent late in a long transaction"}, connection=conn)
    assert await asyncio.wait_for(waiting, TIMEOUT) == {"type": "sent late in a long transaction"}


async def test_a_message_that_expires_before_its_transaction_commits_is_never_delivered(
    make_layer: LayerFactory, app_engine: AsyncEngine
) -> None:
    layer = make_layer(expiry=0.2)
    async with app_engine.begin() as conn:
        await layer.send("test.ttl", {"type": "stale at commit"}, connection=conn)
        await conn.execute(text("SELECT pg_sleep(0.3)"))
    assert await nothing_arrives(layer, "test.ttl")


async def test_serializable_transactions_sending_to_one_channel_conflict(
    layer: PostgresChannelLayer, app_engine: AsyncEngine
) -> None:
    serializable = app_engine.execution_options(isolation_level="SERIALIZABLE")
    async with serializable.connect() as first, serializable.connect() as second:
        one, two = await first.begin(), await second.begin()
        # Each reads the channel's rows (the capacity check) and adds one the other did not see.
        await layer.send("test.serializable", {"type": "x", "n": 1}, connection=first)
        await layer.send("test.serializable", {"type": "x", "n": 2}, connection=second)
        await one.commit()
        with pytest.raises(DBAPIError, match="could not serialize access"):
            await two.commit()
    assert (await receive(layer, "test.serializable"))["n"] == 1
    assert await nothing_arrives(layer, "test.serializable")


# -- drivers and roles ---------------------------------------------------------------------------


async def test_a_psycopg_async_connection_works_too(layer: PostgresChannelLayer, database_url: str) -> None:
    pytest.importorskip("psycopg")
    engine = create_async_engine(asyncpg_url(database_url)[0].set(drivername="postgresql+psycopg"))
    try:
        async with engine.begin() as conn:
            await layer.send("test.psycopg", {"type": "via psycopg"}, connection=conn)
            assert await nothing_arrives(layer, "test.psycopg")
    finally:
        await engine.dispose()
    assert await receive(layer, "test.psycopg") == {"type": "via psycopg"}


async def test_a_role_with_only_run_time_privileges_can_send_in_its_transaction(
    layer: PostgresChannelLayer, runtime_role_url: str
) -> None:
    engine = create_async_engine(asyncpg_url(runtime_role_url)[0])
    try:
        async with engine.begin() as conn:
            await layer.send("test.role", {"type": "least privilege"}, connection=conn)
    finally:
        await engine.dispose()
    assert await receive(layer, "test.role") == {"type": "least privilege"}


# -- misuse --------------------------------------------------------------------------------------


async def test_a_sync_connection_or_session_is_a_type_error_naming_the_async_one(
    layer: PostgresChannelLayer, app_engine: AsyncEngine
) -> None:
    async with app_engine.begin() as conn:
        with pytest.raises(TypeError, match=r"sync Connection.*AsyncConnection"):
            await layer.send("test.x", {"type": "x"}, connection=conn.sync_connection)  # type: ignore[arg-type]
    async with AsyncSession(app_engine) as session:
        with pytest.raises(TypeError, match=r"sync Session.*AsyncSession"):
            await layer.group_send("room", {"type": "x"}, connection=session.sync_session)  # type: ignore[arg-type]


async def test_an_engine_is_a_type_error(layer: PostgresChannelLayer, app_engine: AsyncEngine) -> None:
    with pytest.raises(TypeError, match=r"not an engine: async with engine\.begin\(\)"):
        await layer.send("test.x", {"type": "x"}, connection=app_engine)  # type: ignore[arg-type]


async def test_something_else_is_a_type_error(layer: PostgresChannelLayer) -> None:
    with pytest.raises(TypeError, match="AsyncConnection or AsyncSession, not str"):
        await layer.send("test.x", {"type": "x"}, connection="postgresql://")  # type: ignore[arg-type]


async def test_djangos_connection_is_a_type_error_pointing_to_on_commit(layer: PostgresChannelLayer) -> None:
    pytest.importorskip("django")
    from django.db import connection

    with pytest.raises(TypeError, match=r"Django's database connection.*on_commit"):
        await layer.send("test.x", {"type": "x"}, connection=connection)


async def test_a_connection_outside_a_transaction_is_a_value_error(
    layer: PostgresChannelLayer, app_engine: AsyncEngine
) -> None:
    async with app_engine.connect() as conn:
        with pytest.raises(ValueError, match="not in a transaction"):
            await layer.send("test.x", {"type": "x"}, connection=conn)
    assert await nothing_arrives(layer, "test.x")


async def test_an_autocommit_connection_is_a_value_error(
    layer: PostgresChannelLayer, app_engine: AsyncEngine
) -> None:
    async with app_engine.connect() as plain:
        conn = await plain.execution_options(isolation_level="AUTOCOMMIT")
        async with conn.begin():
            with pytest.raises(ValueError, match="AUTOCOMMIT"):
                await layer.send("test.x", {"type": "x"}, connection=conn)
    assert await nothing_arrives(layer, "test.x")


async def test_a_connection_to_another_database_is_a_value_error(
    layer: PostgresChannelLayer, empty_database_url: str, sql: Sql
) -> None:
    engine = create_async_engine(asyncpg_url(empty_database_url)[0])
    try:
        async with engine.begin() as conn:
            with pytest.raises(ValueError, match="must write to the layer's own database"):
                await layer.send("test.x", {"type": "x"}, connection=conn)
            # The check ran a query that cannot fail: the application's transaction goes on.
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
    finally:
        await engine.dispose()
    assert await sql("SELECT 1 FROM channel_layer_pg_message WHERE prefix = $1", layer.prefix) == []


async def test_a_layer_database_without_the_schema_is_schema_missing(
    make_layer: LayerFactory, empty_database_url: str
) -> None:
    layer = make_layer(url=empty_database_url)
    engine = create_async_engine(asyncpg_url(empty_database_url)[0])
    try:
        async with engine.begin() as conn:
            with pytest.raises(SchemaMissingError, match="channel_layer_pg migrate"):
                await layer.send("test.x", {"type": "x"}, connection=conn)
    finally:
        await engine.dispose()


async def test_a_search_path_that_hides_the_tables_is_schema_missing(
    layer: PostgresChannelLayer, app_engine: AsyncEngine
) -> None:
    async with app_engine.connect() as conn:
        async with conn.begin():
            await conn.execute(text("SET LOCAL search_path TO pg_catalog"))
            with pytest.raises(SchemaMissingError, match="search_path"):
                await layer.send("test.x", {"type": "x"}, connection=conn)
        async with conn.begin():
            await layer.send("test.x", {"type": "x"}, connection=conn)
        # Once the connection was found good, a search_path set later surfaces from the send.
        async with conn.begin():
            await conn.execute(text("SET LOCAL search_path TO pg_catalog"))
            with pytest.raises(SchemaMissingError, match="search_path"):
                await layer.send("test.x", {"type": "x"}, connection=conn)


async def test_a_search_path_that_finds_other_tables_is_a_value_error(
    layer: PostgresChannelLayer, app_engine: AsyncEngine, sql: Sql, prefix: str
) -> None:
    schema = f"other_{prefix}"
    await sql(f'CREATE SCHEMA "{schema}"')
    try:
        await sql(f'CREATE TABLE "{schema}".channel_layer_pg_message (LIKE public.channel_layer_pg_message)')
        async with app_engine.begin() as conn:
            await conn.execute(text(f'SET LOCAL search_path TO "{schema}", public'))
            with pytest.raises(ValueError, match="another channel_layer_pg_message table"):
                await layer.send("test.x", {"type": "x"}, connection=conn)
    finally:
        await sql(f'DROP SCHEMA "{schema}" CASCADE')


async def test_a_closed_layer_refuses_a_transactional_send(
    layer: PostgresChannelLayer, app_engine: AsyncEngine
) -> None:
    await layer.close()
    async with app_engine.begin() as conn:
        with pytest.raises(LayerClosedError):
            await layer.send("test.x", {"type": "x"}, connection=conn)
