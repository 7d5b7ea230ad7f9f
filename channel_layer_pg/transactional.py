"""Transactional send: messages written in the application's own transaction (``connection=``).

The message row and its NOTIFY go through the application's connection, inside its open
transaction. PostgreSQL makes both visible at commit and discards both on rollback (or on
the rollback of a savepoint around them), so a receiver is woken exactly when the message
exists for it. The layer never commits or rolls back that transaction.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy.engine import Connection, Engine, Result
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.sql.base import Executable

from .config import LayerConfig
from .errors import LayerClosedError, SchemaMissingError
from .store import statements
from .store.driver_errors import MIGRATE_HINT, schema_missing, translate
from .store.schema import message, regclass_name, schema_translation

if TYPE_CHECKING:
    from .store.backend import LoopBackend

# What ``connection=`` accepts; an AsyncSession's transaction is on its current connection.
ApplicationConnection = AsyncConnection | AsyncSession

# Connection.info follows the DBAPI connection through the pool, so a pooled connection is
# checked against a layer once, not on every send. It holds the client_prefix of each layer
# instance the connection was found to share a database with.
_CHECKED_KEY = "channel_layer_pg.same_database_as"


class DatabaseIdentity(NamedTuple):
    system: int
    database: str
    message_table: int | None


async def layer_identity(backend: LoopBackend, schema: str | None) -> DatabaseIdentity:
    """The identity of the layer's own database, read on one of its pooled connections."""
    table = {"table": regclass_name(message.name, schema)}
    (row,) = await backend.fetch(statements.DATABASE_IDENTITY, table)
    return DatabaseIdentity(row["system"], row["database"], row["message_table"])


class TransactionalWriter:
    """Runs the layer's write statements on an application's connection, in its transaction."""

    def __init__(self, conn: AsyncConnection, config: LayerConfig) -> None:
        self._conn = conn
        self._config = config

    @classmethod
    async def join(
        cls,
        connection: object,
        config: LayerConfig,
        *,
        layer_token: str,
        layer_closed: bool,
        layer_identity: Callable[[], Awaitable[DatabaseIdentity]],
    ) -> TransactionalWriter:
        """Check that ``connection`` can carry the layer's messages; raise a clear error if not."""
        if layer_closed:
            raise LayerClosedError("this channel layer was closed; create a new one")
        conn = await _async_connection(connection)
        if conn.dialect.name != "postgresql":
            raise ValueError(f"connection= must be a PostgreSQL connection, not {conn.dialect.name}")
        if not conn.in_transaction():
            raise ValueError(
                "connection= is not in a transaction: begin one first (async with engine.begin() "
                "as conn, or async with conn.begin()); the message is sent when it commits"
            )
        raw = await conn.get_raw_connection()
        if getattr(raw.dbapi_connection, "autocommit", False):
            raise ValueError(
                "connection= is in AUTOCOMMIT mode: each statement commits on its own, so the "
                "message would go out at once whatever became of the rest of the transaction; "
                "use a connection without isolation_level='AUTOCOMMIT'"
            )
        checked: set[str] = conn.info.setdefault(_CHECKED_KEY, set())
        if layer_token not in checked:
            await _check_same_database(conn, config, await layer_identity())
            checked.add(layer_token)
        return cls(conn, config)

    async def send(self, payload: bytes, queue: str, channel: str, capacity: int) -> bool:
        """Store ``payload`` for ``channel`` unless its queue is full; whether it was stored."""
        parameters = statements.send_parameters(
            self._config.prefix, self._config.expiry, payload, queue, channel, capacity
        )
        result = await self._execute(statements.SEND, parameters)
        # A full queue makes SEND insert nothing and return 0: no statement fails, so the
        # application's transaction stays usable after ChannelFull.
        return bool(result.scalar_one())

    async def group_send(self, payload: bytes, group: str) -> Any:
        """statements.GROUP_SEND's one row; every member, the layer's own included, is stored.

        The layer's own process-local members get their copy from the table, after the
        commit, like everyone else: delivered in memory now, they would see a message that
        a rollback takes back.
        """
        parameters = statements.group_send_parameters(self._config, payload, group, None)
        return (await self._execute(statements.GROUP_SEND, parameters)).mappings().one()

    async def _execute(self, statement: Executable, parameters: dict[str, Any]) -> Result[Any]:
        # Not shielded, unlike the layer's own statements: the connection and its transaction
        # are the application's. Cancelled here, the application decides their fate, and a
        # rollback takes the message with it.
        try:
            return await self._conn.execute(
                statement,
                parameters,
                execution_options={"schema_translate_map": schema_translation(self._config.schema)},
            )
        except DBAPIError as exc:
            # Only a missing table is the layer's to explain: the connection, and what its
            # failures mean to the transaction, are the application's. The tables were visible
            # when this connection was checked; a search_path set since (SET LOCAL per
            # tenant, say) can hide them.
            if isinstance(translate(self._config, exc), SchemaMissingError):
                raise _not_visible() from exc
            raise


async def _async_connection(connection: object) -> AsyncConnection:
    if isinstance(connection, AsyncConnection):
        return connection
    if isinstance(connection, AsyncSession):
        # The session's transaction lives on this connection (it begins one if need be).
        return await connection.connection()
    if isinstance(connection, (Connection, Session)):
        wanted = "AsyncSession" if isinstance(connection, Session) else "AsyncConnection"
        raise TypeError(
            f"connection= needs an async connection: got a sync {type(connection).__name__}; "
            f"pass a sqlalchemy.ext.asyncio.{wanted} (the layer's calls are async)"
        )
    if isinstance(connection, (Engine, AsyncEngine)):
        raise TypeError(
            "connection= needs a connection inside a transaction, not an engine: "
            "async with engine.begin() as conn: ... connection=conn"
        )
    if type(connection).__module__.startswith("django."):
        raise TypeError(
            "connection= cannot take Django's database connection: it is a synchronous psycopg "
            "connection the layer cannot write through. Send from transaction.on_commit instead "
            "(see 'Transactional send' in the README)"
        )
    raise TypeError(
        f"connection= must be a SQLAlchemy AsyncConnection or AsyncSession, not {type(connection).__name__}"
    )


async def _check_same_database(conn: AsyncConnection, config: LayerConfig, layer: DatabaseIdentity) -> None:
    if layer.message_table is None:
        raise schema_missing(config)
    table = {"table": regclass_name(message.name, config.schema)}
    row = (await conn.execute(statements.DATABASE_IDENTITY, table)).one()
    theirs = DatabaseIdentity(row.system, row.database, row.message_table)
    if (theirs.system, theirs.database) != (layer.system, layer.database):
        raise ValueError(
            f"connection= is to database {theirs.database!r} on the PostgreSQL server with system "
            f"identifier {theirs.system}, but the layer's database is {layer.database!r} on "
            f"{layer.system}: a transactional send must write to the layer's own database"
        )
    if theirs.message_table is None:
        raise _not_visible()
    if theirs.message_table != layer.message_table:
        raise ValueError(
            "connection= finds another channel_layer_pg_message table than the layer does "
            "(a different search_path?): a transactional send must write to the layer's own tables"
        )


def _not_visible() -> SchemaMissingError:
    return SchemaMissingError(
        "the channel layer's tables are not visible on connection=: check its search_path, "
        f"or create them with: {MIGRATE_HINT}"
    )
