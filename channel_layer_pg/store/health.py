"""Whether the database can serve the layer: what ``ping()`` checks and ``stats()`` shows.

Reaching the server is not enough. A hot standby (or a primary mid-failover, or a role or
database with default_transaction_read_only) answers every read and refuses every send, and
tables from an older release of the package lack what its statements use. So one statement
reads the tables (as the layer's role), whether this session may write, and whether the role
may read the migration version table; a second, if it may, reads the revision.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, MetaData, Table, Text, bindparam, delete, false, func, select
from sqlalchemy.sql.base import Executable

from ..config import LayerConfig
from ..errors import SchemaOutdatedError
from .driver_errors import MIGRATE_HINT
from .migrate import migration_head, migration_revisions
from .schema import VERSION_TABLE, group_member, message, regclass_name

Fetch = Callable[[Executable, dict[str, Any]], Awaitable[list[Any]]]

_version_table = bindparam("version_table", VERSION_TABLE, type_=Text)

_columns = (
    # Read no row, yet fail unless both tables exist and the role may read them.
    select(message.c.id).limit(0).scalar_subquery().label("message"),
    select(group_member.c.prefix).limit(0).scalar_subquery().label("group_member"),
    func.pg_is_in_recovery().label("in_recovery"),
    # On in recovery and under default_transaction_read_only; the layer autocommits, so each
    # statement's transaction starts with its session's default.
    (func.current_setting("transaction_read_only") == "on").label("read_only"),
    func.to_regclass(_version_table).is_not(None).label("versioned"),
    # A role with only the layer's run-time grants may not read the version table; naming it
    # in a statement would fail the whole statement, so this one only asks.
    func.coalesce(func.has_table_privilege(func.to_regclass(_version_table), "SELECT"), False).label(
        "version_readable"
    ),
)

# For stats(): describes a read-only server rather than failing on one.
HEALTH = select(*_columns)

# For ping(): fails exactly when a send would. PostgreSQL refuses any DELETE in a read-only
# transaction before it looks at a row, so this one, which matches none, fails with
# read_only_sql_transaction (DatabaseReadOnlyError) on a standby or a read-only session, and
# waits, as a send would, behind a lock that blocks writes to the message table.
_probe = delete(message).where(false()).returning(message.c.id).cte("write_probe")
PING_WRITABLE = select(*_columns, select(func.count()).select_from(_probe).scalar_subquery().label("probe"))

# A Table of its own MetaData (Alembic owns the real one): unlike a lightweight table(), a
# Table is moved to the schema option's schema when statements are compiled.
_version = Table(VERSION_TABLE, MetaData(), Column("version_num", Text, primary_key=True))
SCHEMA_REVISION = select(_version.c.version_num)


@dataclass(frozen=True)
class Health:
    in_recovery: bool  # a standby replaying WAL: read-only until promoted
    writable: bool  # this session's transactions may write
    versioned: bool  # the migration version table exists
    revision: str | None  # None if there is no version table or the role may not read it
    head: str  # the revision this version of the package needs

    @property
    def at_head(self) -> bool | None:
        """Whether the tables are at ``head``; None if the role may not read the revision."""
        if not self.versioned:
            return False
        return None if self.revision is None else self.revision == self.head


async def read(fetch: Fetch, *, probe_writes: bool = False, schema: str | None = None) -> Health:
    """The database's health as the layer's role sees it.

    Raises SchemaMissingError without the tables and, with ``probe_writes``, the error a send
    would meet (DatabaseReadOnlyError on a server that takes no writes).
    """
    # The version table is looked up by name, so it is qualified as the statements' tables are.
    version_table = {"version_table": regclass_name(VERSION_TABLE, schema)}
    (row,) = await fetch(PING_WRITABLE if probe_writes else HEALTH, version_table)
    revision = None
    if row["versioned"] and row["version_readable"]:
        # One row for a linear history such as the layer's.
        revisions = [r["version_num"] for r in await fetch(SCHEMA_REVISION, {})]
        revision = ",".join(revisions) if revisions else None
    return Health(
        in_recovery=bool(row["in_recovery"]),
        writable=not row["read_only"],
        versioned=bool(row["versioned"]),
        revision=revision,
        head=migration_head(),
    )


def raise_unless_current(config: LayerConfig, health: Health) -> None:
    """Raise SchemaOutdatedError unless the tables are at the head (or the role cannot tell)."""
    if not health.versioned:
        raise SchemaOutdatedError(
            f"the channel layer's tables in {config.safe_url} have no {VERSION_TABLE} table, so "
            f"their revision is unknown; bring them to {health.head} with: {MIGRATE_HINT}"
        )
    if health.at_head is False:
        if health.revision in migration_revisions():
            advice = f"bring them to {health.head} with: {MIGRATE_HINT}"
        else:
            advice = "a newer release of channel_layer_pg migrated them: upgrade the package"
        raise SchemaOutdatedError(
            f"the channel layer's tables in {config.safe_url} are at revision {health.revision}, "
            f"and this release of channel_layer_pg needs {health.head}; {advice}"
        )
