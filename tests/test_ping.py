"""ping(): a cheap readiness check that the database answers and has the layer's tables."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import async_to_sync

from channel_layer_pg import (
    DatabaseUnreachableError,
    LayerClosedError,
    PostgresChannelLayer,
    SchemaMissingError,
    SchemaOutdatedError,
    migrate,
)
from channel_layer_pg.store.migrate import migration_head
from tests.conftest import connect
from tests.helpers import TIMEOUT, LayerFactory


async def test_ping_returns_the_round_trip_in_seconds(layer: PostgresChannelLayer) -> None:
    seconds = await layer.ping()
    assert 0 < seconds < TIMEOUT


async def test_ping_works_from_sync_code(layer: PostgresChannelLayer) -> None:
    # async_to_sync runs the call on a fresh loop in a worker thread: the I/O thread serves it.
    seconds = await asyncio.to_thread(async_to_sync(layer.ping))
    assert 0 < seconds < TIMEOUT


async def test_ping_names_the_migrate_command_when_the_tables_are_missing(
    make_layer: LayerFactory, empty_database_url: str
) -> None:
    layer = make_layer(url=empty_database_url)
    with pytest.raises(SchemaMissingError, match="channel_layer_pg migrate"):
        await layer.ping()


async def test_ping_fails_when_only_the_group_table_is_missing(
    make_layer: LayerFactory, empty_database_url: str
) -> None:
    conn = await connect(empty_database_url)
    try:
        await conn.execute("CREATE TABLE channel_layer_pg_message (id bigint)")
    finally:
        await conn.close()
    with pytest.raises(SchemaMissingError):
        await make_layer(url=empty_database_url).ping()


async def test_ping_names_the_revision_the_tables_are_at_and_the_one_needed(
    make_layer: LayerFactory, empty_database_url: str
) -> None:
    migrate(empty_database_url, "0002")
    layer = make_layer(url=empty_database_url)
    with pytest.raises(SchemaOutdatedError, match=rf"at revision 0002.*needs {migration_head()}.*migrate"):
        await layer.ping()
    stats = await layer.stats()
    assert (stats.schema_revision, stats.schema_head) == ("0002", migration_head())
    assert "NOT at head" in stats.format()
    migrate(empty_database_url)
    await layer.ping()


async def test_ping_names_host_and_port_of_an_unreachable_database(make_layer: LayerFactory) -> None:
    # Port 1 on loopback: nothing listens there, so the connection is refused at once.
    layer = make_layer(url="postgresql://someone:hunter2@127.0.0.1:1/db")
    with pytest.raises(DatabaseUnreachableError, match=r"127\.0\.0\.1:1") as caught:
        await layer.ping()
    assert "hunter2" not in str(caught.value)


async def test_ping_gives_up_after_its_timeout(layer: PostgresChannelLayer, database_url: str) -> None:
    await layer.ping()  # connected: what follows times the statement, not the connecting
    blocker = await connect(database_url)
    try:
        async with blocker.transaction():
            # ACCESS EXCLUSIVE: even a read of no rows waits for it.
            await blocker.execute("LOCK TABLE channel_layer_pg_group_member")
            with pytest.raises(DatabaseUnreachableError, match=r"did not answer within 0\.2 s"):
                await layer.ping(timeout=0.2)
    finally:
        await blocker.close()
    assert await layer.ping() < TIMEOUT


async def test_ping_on_a_closed_layer_raises_layer_closed(make_layer: LayerFactory) -> None:
    layer = make_layer()
    await layer.close()
    with pytest.raises(LayerClosedError):
        await layer.ping()


@pytest.mark.parametrize(("timeout", "error"), [(0, ValueError), (-1.0, ValueError), ("1", TypeError)])
async def test_a_timeout_that_is_not_a_positive_number_is_refused(
    layer: PostgresChannelLayer, timeout: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="timeout"):
        await layer.ping(timeout=timeout)  # type: ignore[arg-type]
