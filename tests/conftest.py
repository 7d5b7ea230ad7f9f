"""A real PostgreSQL for every test: CHANNEL_LAYER_PG_TEST_URL, or an embedded server.

The schema is migrated once per session. Each test gets its own layer prefix, so tests never
see each other's messages, and every layer a test makes is closed when it ends.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from channel_layer_pg import PostgresChannelLayer, migrate
from channel_layer_pg.embedded import EmbeddedPostgres, embedded_server

TEST_URL_VAR = "CHANNEL_LAYER_PG_TEST_URL"

LayerFactory = Callable[..., PostgresChannelLayer]


@pytest.fixture(scope="session")
def embedded() -> Iterator[EmbeddedPostgres | None]:
    """The embedded server the suite started, or None when CHANNEL_LAYER_PG_TEST_URL is set."""
    if os.environ.get(TEST_URL_VAR):
        yield None
        return
    with embedded_server() as server:
        yield server


@pytest.fixture(scope="session")
def database_url(embedded: EmbeddedPostgres | None) -> str:
    url = embedded.url if embedded is not None else os.environ[TEST_URL_VAR]
    migrate(url)
    return url


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def make_layer(database_url: str, prefix: str) -> AsyncIterator[LayerFactory]:
    """Make layers on the test database (same prefix unless given); all closed afterwards."""
    layers: list[PostgresChannelLayer] = []

    def make(**options: Any) -> PostgresChannelLayer:
        options.setdefault("url", database_url)
        options.setdefault("prefix", prefix)
        layer = PostgresChannelLayer(**options)
        layers.append(layer)
        return layer

    yield make
    for layer in layers:
        await layer.close()


@pytest.fixture
async def layer(make_layer: LayerFactory) -> PostgresChannelLayer:
    return make_layer()


@pytest.fixture
async def sql(database_url: str) -> AsyncIterator[Callable[..., Awaitable[list[asyncpg.Record]]]]:
    """Run raw SQL against the test database, to look at or age what the layer stored."""
    conn = await connect(database_url)

    async def run(query: str, *args: Any) -> list[asyncpg.Record]:
        return await conn.fetch(query, *args)

    yield run
    await conn.close()


@pytest.fixture
async def empty_database_url(database_url: str) -> AsyncIterator[str]:
    """A database on the same server that has no schema at all; dropped afterwards."""
    name = f"clpg_empty_{uuid.uuid4().hex[:8]}"
    admin = await connect(database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield make_url(database_url).set(database=name).render_as_string(hide_password=False)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


# What the layer needs at run time, and nothing more: no DDL, no ownership.
RUNTIME_GRANTS = (
    "GRANT SELECT, INSERT, UPDATE, DELETE ON channel_layer_pg_message, "
    "channel_layer_pg_group_member TO {role}"
)


@asynccontextmanager
async def runtime_role(database_url: str, *, attributes: str = "") -> AsyncIterator[str]:
    """The test database as a fresh role with only the layer's run-time privileges; dropped after.

    ``attributes`` are extra CREATE ROLE options, such as "CONNECTION LIMIT 3".
    """
    role = f"clpg_runtime_{uuid.uuid4().hex[:8]}"
    admin = await connect(database_url)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN {attributes}')
        await admin.execute(RUNTIME_GRANTS.format(role=f'"{role}"'))
        yield make_url(database_url).set(username=role, password=None).render_as_string(hide_password=False)
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE "{role}"')
    finally:
        await admin.close()


@pytest.fixture
async def runtime_role_url(database_url: str) -> AsyncIterator[str]:
    """The test database, as a fresh role that holds only the layer's run-time privileges."""
    async with runtime_role(database_url) as url:
        yield url


async def connect(url: str) -> asyncpg.Connection:
    """A plain asyncpg connection to a URL in any of the forms the tests use."""
    parsed = make_url(url)
    return await asyncpg.connect(
        user=parsed.username,
        password=parsed.password or None,
        host=parsed.query.get("host") or parsed.host,
        port=parsed.port,
        database=parsed.database,
    )
