"""Alembic environment for channel_layer_pg's own tables.

The URL comes from (first found): the caller's Config (``python -m channel_layer_pg migrate``),
``alembic -x url=...``, or the CHANNEL_LAYER_PG_URL environment variable. The version table is
our own, so an application's Alembic history in the same database is left alone.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import pool
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


def _configure(**options: object) -> None:
    context.configure(target_metadata=metadata, version_table=VERSION_TABLE, **options)


def run_migrations_offline() -> None:
    _configure(url=_url()[0], literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
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
