"""The suite's fixtures, on the package's own pytest plugin (channel_layer_pg.testing).

The plugin gives a real, migrated PostgreSQL (CHANNEL_LAYER_PG_TEST_URL, Docker or an embedded
server), a prefix per test so tests never see each other's messages, and layers closed when the
test ends. The names here are the suite's: database_url, prefix, make_layer, layer.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from channel_layer_pg import PostgresChannelLayer, migrate
from channel_layer_pg.embedded import EmbeddedPostgres, embedded_server

LayerFactory = Callable[..., PostgresChannelLayer]

PLUGIN = "channel_layer_pg.testing.pytest_plugin"


def pytest_configure(config: pytest.Config) -> None:
    # pytest loads the plugin through the package's pytest11 entry point; a checkout run from
    # PYTHONPATH, or installed with metadata that lacks the entry point, loads it here.
    if not config.pluginmanager.has_plugin("channel_layer_pg"):
        config.pluginmanager.import_plugin(PLUGIN)


@pytest.fixture(scope="session")
def database_url(postgres_url: str) -> str:
    return postgres_url


@pytest.fixture
def prefix(channel_layer_prefix: str) -> str:
    return channel_layer_prefix


@pytest.fixture
def make_layer(channel_layer_factory: LayerFactory) -> LayerFactory:
    """Make layers on the test database (same prefix unless given); all closed afterwards."""
    return channel_layer_factory


@pytest.fixture
def layer(channel_layer: PostgresChannelLayer) -> PostgresChannelLayer:
    return channel_layer


@pytest.fixture
def embedded() -> Iterator[EmbeddedPostgres]:
    """An embedded server of this test's own, with the schema: one it may restart.

    The session's server may be another worker's too (pytest-xdist), or one named by
    CHANNEL_LAYER_PG_TEST_URL: never restart that one.
    """
    with embedded_server() as server:
        migrate(server.url)
        yield server


@pytest.fixture
async def sql(database_url: str) -> AsyncIterator[Callable[..., Awaitable[list[asyncpg.Record]]]]:
    """Run raw SQL against the test database, to look at or age what the layer stored."""
    conn = await connect(database_url)

    async def run(query: str, *args: Any) -> list[asyncpg.Record]:
        return await conn.fetch(query, *args)

    yield run
    await conn.close()


@asynccontextmanager
async def throwaway_database(database_url: str, stem: str) -> AsyncIterator[str]:
    """The URL of a new, empty database on the test server, named ``stem`` and a random tail;
    dropped afterwards."""
    name = f"{stem}_{uuid.uuid4().hex[:8]}"
    admin = await connect(database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield make_url(database_url).set(database=name).render_as_string(hide_password=False)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def empty_database_url(database_url: str) -> AsyncIterator[str]:
    """A database on the same server that has no schema at all; dropped afterwards."""
    async with throwaway_database(database_url, "clpg_empty") as url:
        yield url


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


async def fetch(url: str, statement: str, *args: Any) -> list[asyncpg.Record]:
    """Run ``statement`` once on its own connection to ``url``: to look at what a layer stored."""
    conn = await connect(url)
    try:
        return list(await conn.fetch(statement, *args))
    finally:
        await conn.close()


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
