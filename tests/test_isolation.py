"""The schema option: each application's tables in a schema of its own, its role confined there.

A prefix only names messages; PostgreSQL's privileges are what keep a role out of another
schema's tables, read or written, through the layer or around it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from channel_layer_pg import (
    PermissionDeniedError,
    PostgresChannelLayer,
    SchemaMissingError,
    SchemaOutdatedError,
    migrate,
)
from channel_layer_pg.database_url import asyncpg_url
from tests.conftest import connect
from tests.helpers import TIMEOUT, LayerFactory, nothing_arrives, receive

TABLES = "channel_layer_pg_message, channel_layer_pg_group_member"


@asynccontextmanager
async def schema_of_its_own(database_url: str) -> AsyncIterator[tuple[str, str]]:
    """A schema migrated for one application, and a role that may use only it: (schema, url).

    The role gets the layer's run-time privileges on the schema's tables and nothing on any
    other schema's; both are dropped afterwards.
    """
    token = uuid.uuid4().hex[:8]
    schema, role = f"clpg_schema_{token}", f"clpg_tenant_{token}"
    await asyncio.to_thread(migrate, database_url, schema=schema)
    admin = await connect(database_url)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN')
        await admin.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
        qualified = ", ".join(f'"{schema}".{table}' for table in TABLES.split(", "))
        await admin.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON {qualified} TO "{role}"')
        yield (
            schema,
            make_url(database_url).set(username=role, password=None).render_as_string(hide_password=False),
        )
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
        await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE "{role}"')
    finally:
        await admin.close()


@pytest.fixture
async def tenant_a(database_url: str) -> AsyncIterator[tuple[str, str]]:
    async with schema_of_its_own(database_url) as tenant:
        yield tenant


@pytest.fixture
async def tenant_b(database_url: str) -> AsyncIterator[tuple[str, str]]:
    async with schema_of_its_own(database_url) as tenant:
        yield tenant


async def test_a_layer_sends_and_receives_in_its_schema_with_only_its_privileges(
    make_layer: LayerFactory, tenant_a: tuple[str, str]
) -> None:
    schema, url = tenant_a
    layer = make_layer(url=url, schema=schema)
    await layer.check()
    local = await layer.new_channel()
    await layer.group_add("room", local)
    await layer.group_send("room", {"type": "group"})
    assert await receive(layer, local) == {"type": "group"}
    waiting = asyncio.create_task(layer.receive("test.work"))
    await layer.send("test.work", {"type": "direct"})
    assert await asyncio.wait_for(waiting, TIMEOUT) == {"type": "direct"}
    await layer.delete_expired()
    await layer.flush()


async def test_messages_stay_in_their_schema(
    make_layer: LayerFactory, database_url: str, tenant_a: tuple[str, str], tenant_b: tuple[str, str]
) -> None:
    # Same prefix in both: the schema alone keeps them apart.
    a = make_layer(url=tenant_a[1], schema=tenant_a[0])
    b = make_layer(url=tenant_b[1], schema=tenant_b[0])
    await a.send("test.shared", {"type": "for a"})
    admin = await connect(database_url)
    try:
        count = "SELECT count(*) FROM {}.channel_layer_pg_message WHERE prefix = $1"
        assert await admin.fetchval(count.format(tenant_a[0]), a.prefix) == 1
        assert await admin.fetchval(count.format(tenant_b[0]), a.prefix) == 0
        assert await admin.fetchval(count.format("public"), a.prefix) == 0
    finally:
        await admin.close()
    assert await nothing_arrives(b, "test.shared")
    assert await receive(a, "test.shared") == {"type": "for a"}


async def test_a_layer_cannot_use_another_schema(
    make_layer: LayerFactory, tenant_a: tuple[str, str], tenant_b: tuple[str, str]
) -> None:
    b = make_layer(url=tenant_b[1], schema=tenant_b[0])
    await b.send("test.private", {"type": "b's own"})
    intruder = make_layer(url=tenant_a[1], schema=tenant_b[0])
    with pytest.raises(PermissionDeniedError, match="permission denied"):
        await intruder.send("test.private", {"type": "forged"})
    with pytest.raises(PermissionDeniedError, match="permission denied"):
        await asyncio.wait_for(intruder.receive("test.private"), TIMEOUT)
    with pytest.raises(PermissionDeniedError, match="permission denied"):
        await intruder.flush()
    assert await receive(b, "test.private") == {"type": "b's own"}
    assert await nothing_arrives(b, "test.private")


async def test_a_confined_role_cannot_read_write_or_delete_another_schema_in_sql(
    make_layer: LayerFactory, tenant_a: tuple[str, str], tenant_b: tuple[str, str]
) -> None:
    b = make_layer(url=tenant_b[1], schema=tenant_b[0])
    await b.send("test.private", {"type": "b's own"})
    conn = await connect(tenant_a[1])
    other = f"{tenant_b[0]}.channel_layer_pg_message"
    try:
        for statement in (
            f"SELECT payload FROM {other}",
            f"DELETE FROM {other}",
            f"UPDATE {other} SET payload = ''::bytea",
            f"INSERT INTO {other} (prefix, queue, channel, expires_at, payload) "
            "VALUES ('x', 'test.private', 'test.private', now() + interval '1 minute', ''::bytea)",
            f"SELECT * FROM {tenant_b[0]}.channel_layer_pg_group_member",
        ):
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                await conn.execute(statement)
    finally:
        await conn.close()
    assert await receive(b, "test.private") == {"type": "b's own"}


async def test_a_transactional_send_writes_to_the_layers_schema(
    make_layer: LayerFactory, tenant_a: tuple[str, str]
) -> None:
    schema, url = tenant_a
    layer = make_layer(url=url, schema=schema)
    engine = create_async_engine(asyncpg_url(url)[0])
    try:
        async with engine.connect() as conn, conn.begin():
            await layer.send("test.orders", {"type": "committed"}, connection=conn)
    finally:
        await engine.dispose()
    assert await receive(layer, "test.orders") == {"type": "committed"}


async def test_migrating_a_schema_keeps_its_own_history(database_url: str, tenant_a: tuple[str, str]) -> None:
    admin = await connect(database_url)
    try:
        version = "SELECT version_num FROM {}.channel_layer_pg_alembic_version"
        head = await admin.fetchval(version.format("public"))
        assert await admin.fetchval(version.format(tenant_a[0])) == head
    finally:
        await admin.close()
    # A second run finds the schema at head and changes nothing.
    await asyncio.to_thread(migrate, database_url, schema=tenant_a[0])


@pytest.mark.parametrize(
    ("value", "error"),
    [(5, TypeError), (b"tenant", TypeError), ("", ValueError), ("x" * 64, ValueError)],
)
def test_schema_must_be_a_postgresql_identifier(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="schema"):
        PostgresChannelLayer(url="postgresql://localhost/db", schema=value)


async def test_a_schema_not_migrated_is_named_with_the_command_that_creates_it(
    make_layer: LayerFactory,
) -> None:
    layer = make_layer(schema="clpg_never_migrated")
    named = r"schema 'clpg_never_migrated' .* --schema clpg_never_migrated"
    with pytest.raises(SchemaMissingError, match=named):
        await layer.check()


async def test_ping_and_stats_read_the_schemas_own_revision(
    make_layer: LayerFactory, database_url: str
) -> None:
    # The search_path's tables are at head; this schema's are not, and that is what counts.
    schema = f"clpg_old_{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(migrate, database_url, "0002", schema=schema)
    try:
        layer = make_layer(schema=schema)
        with pytest.raises(SchemaOutdatedError, match="0002"):
            await layer.ping()
        assert (await layer.stats()).schema_revision == "0002"
        await layer.close()
    finally:
        admin = await connect(database_url)
        try:
            await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        finally:
            await admin.close()
