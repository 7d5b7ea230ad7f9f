"""Alembic environment for channel_layer_pg's own tables.

The URL comes from (first found): the caller's Config (``python -m channel_layer_pg migrate``),
``alembic -x url=...``, or the CHANNEL_LAYER_PG_URL environment variable. The version table is
our own, so an application's Alembic history in the same database is left alone.

A schema (``migrate(url, schema=...)``, ``alembic -x schema=...``) puts the tables and the
version table in that schema, created if missing: each schema has a history of its own.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import create_async_engine

from channel_layer_pg.config import URL_ENV_VAR
from channel_layer_pg.database_url import asyncpg_url
from channel_layer_pg.store.schema import VERSION_TABLE, metadata

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> tuple[URL, dict[str, Any]]:
    """The asyncpg URL, and the connect args its libpq parameters (sslmode...) ask for."""
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    url = url or os.environ.get(URL_ENV_VAR)
    if not url:
        raise SystemExit(f"no database URL: pass -x url=postgresql://... or set {URL_ENV_VAR}")
    return asyncpg_url(url)


def _schema() -> str | None:
    schema = config.attributes.get("schema") or context.get_x_argument(as_dictionary=True).get("schema")
    return str(schema) if schema else None


def _configure(**options: object) -> None:
    context.configure(
        target_metadata=metadata, version_table=VERSION_TABLE, version_table_schema=_schema(), **options
    )


def _quoted(schema: str) -> str:
    return '"' + schema.replace('"', '""') + '"'


def run_migrations_offline() -> None:
    _configure(url=_url()[0], literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        schema = _schema()
        if schema is not None:
            context.execute(f"CREATE SCHEMA IF NOT EXISTS {_quoted(schema)}")
            context.execute(f"SET search_path TO {_quoted(schema)}")
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
    schema = _schema()
    if schema is not None:
        # The migrations name tables unqualified (some in raw SQL), so search_path alone
        # points them at the schema. The connection is this migration's own, closed after.
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {_quoted(schema)}"))
        connection.execute(text(f"SET search_path TO {_quoted(schema)}"))
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    # asyncpg waits 60 s for a connection by default; a migration should fail sooner.
    url, connect_args = _url()
    engine = create_async_engine(url, poolclass=pool.NullPool, connect_args={"timeout": 10, **connect_args})
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(_run_online())
