"""Running the Alembic migrations from code and from the command line, installed or not."""

from __future__ import annotations

import asyncio
import functools
import threading
from pathlib import Path

from sqlalchemy.engine import URL

from ..config import URL_ENV_VAR
from ..database_url import asyncpg_url, parse_url

_PACKAGE = Path(__file__).resolve().parent.parent


def migrations_directory() -> Path:
    """The Alembic environment: inside the wheel, or ``migrations/`` of a source checkout."""
    for candidate in (_PACKAGE / "_migrations", _PACKAGE.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError(f"the channel_layer_pg migrations are missing from {_PACKAGE}")


def alembic_config(url: str | URL, *, schema: str | None = None) -> object:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_directory()))
    # Kept as an attribute, not a main option: configparser would mangle '%' in passwords.
    # As written: env.py turns its libpq parameters (sslmode, sslrootcert...) into connect args.
    config.attributes["url"] = parse_url(url)
    if schema is not None:
        config.attributes["schema"] = schema
    return config


@functools.cache
def migration_revisions() -> frozenset[str]:
    """Every revision of the layer's migrations this release ships."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory(str(migrations_directory()))
    return frozenset(script.revision for script in scripts.walk_revisions())


@functools.cache
def migration_head() -> str:
    """The revision the tables must be at for this release's statements."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(migrations_directory())).get_current_head()
    if head is None:  # pragma: no cover - the package always ships its migrations
        raise FileNotFoundError(f"no migrations in {migrations_directory()}")
    return head


def migrate(url: str | URL, revision: str = "head", *, schema: str | None = None) -> None:
    """Bring the layer's tables at ``url`` to ``revision`` (``head`` by default).

    ``schema``: the tables (and their version table) go in this PostgreSQL schema, created if
    missing; a layer given the same ``schema`` option uses them. Safe to call from inside a
    running event loop: Alembic runs in a thread of its own then.
    """
    from alembic import command

    config = alembic_config(url, schema=schema)

    def upgrade() -> None:
        command.upgrade(config, revision)  # type: ignore[arg-type]

    _outside_event_loop(upgrade)


def current_revision(url: str | URL, *, schema: str | None = None) -> str | None:
    """The revision the layer's tables at ``url`` (in ``schema``) are at; None if never migrated."""
    from alembic.migration import MigrationContext
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    from .schema import VERSION_TABLE

    database_url, connect_args = asyncpg_url(url)

    def read(connection: Connection) -> str | None:
        context = MigrationContext.configure(
            connection, opts={"version_table": VERSION_TABLE, "version_table_schema": schema}
        )
        return context.get_current_revision()

    async def connect_and_read() -> str | None:
        engine = create_async_engine(
            database_url, poolclass=NullPool, connect_args={"timeout": 10, **connect_args}
        )
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(read)
        finally:
            await engine.dispose()

    found: list[str | None] = []
    _outside_event_loop(lambda: found.append(asyncio.run(connect_and_read())))
    return found[0]


def downgrade(url: str | URL, revision: str = "base", *, schema: str | None = None) -> None:
    from alembic import command

    config = alembic_config(url, schema=schema)
    _outside_event_loop(lambda: command.downgrade(config, revision))  # type: ignore[arg-type]


def _outside_event_loop(work: object) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        work()  # type: ignore[operator]
        return
    failure: list[BaseException] = []

    def run() -> None:
        try:
            work()  # type: ignore[operator]
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="channel_layer_pg migrate")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


__all__ = [
    "URL_ENV_VAR",
    "alembic_config",
    "current_revision",
    "downgrade",
    "migrate",
    "migration_head",
    "migration_revisions",
    "migrations_directory",
]
