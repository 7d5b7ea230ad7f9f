"""The one translation of driver failures (asyncpg's, and SQLAlchemy's around them) into the
layer's errors, each saying what happened and what to do."""

from __future__ import annotations

import asyncio
import socket
import ssl

import asyncpg
from sqlalchemy.exc import DBAPIError

from ..config import LayerConfig
from ..errors import (
    ChannelLayerError,
    DatabaseError,
    DatabaseFullError,
    DatabaseReadOnlyError,
    DatabaseUnreachableError,
    PermissionDeniedError,
    SchemaMissingError,
    StatementRejectedError,
    StatementTimeoutError,
    TransactionConflictError,
)

MIGRATE_HINT = (
    "python -m channel_layer_pg migrate --url URL  (or: alembic upgrade head; with the Django app "
    "channel_layer_pg.contrib.django installed: manage.py migrate)"
)

_UNDEFINED_TABLE = "42P01"
_INSUFFICIENT_PRIVILEGE = "42501"
_PROTOCOL_VIOLATION = "08P01"
# max_connections reached, or the role's or database's CONNECTION LIMIT.
_TOO_MANY_CONNECTIONS = "53300"
# Besides connection exceptions (class 08): the server shutting down, crashing or still
# starting. too_many_connections is here too: like a restart, it passes, so it is waited out.
_CONNECTION_LOST_STATES = {"57P01", "57P02", "57P03", _TOO_MANY_CONNECTIONS}
# Authentication failures, an unknown database or role: the server answered but refused us.
_CONNECT_REFUSALS = {"28P01", "28000", "3D000"}
# A named prepared statement missing, or its name taken: what a transaction pooler does to
# statements prepared on one server connection and run on another.
_LOST_PREPARED_STATEMENTS = {"26000", "42P05"}

# The server rolled one statement back for a state that may pass (a lock released, a failover
# finished, disk freed): which error says so, and what the operator can do about it.
_REJECTIONS: dict[str, tuple[type[StatementRejectedError], str]] = {
    "57014": (
        StatementTimeoutError,
        "the server cancelled the statement (statement_timeout, or pg_cancel_backend); if a lock "
        "held it up (a migration, VACUUM FULL, LOCK TABLE), pg_locks names the holder, otherwise "
        "raise statement_timeout for the layer's role",
    ),
    "55P03": (
        StatementTimeoutError,
        "a lock the statement needed was not granted within lock_timeout; pg_locks names the "
        "holder, or raise lock_timeout for the layer's role",
    ),
    "25006": (
        DatabaseReadOnlyError,
        "the server accepts no writes: point the URL at the primary (this may be a hot standby, "
        "or a failover in progress), or unset default_transaction_read_only for the layer's role "
        "and database",
    ),
    "53100": (DatabaseFullError, "the server's disk is full: free space on it, then the layer writes again"),
    "53200": (DatabaseFullError, "the server ran out of memory: lower its load or raise its memory"),
    "40001": (
        TransactionConflictError,
        "a serialization failure (the layer's role or database has default_transaction_isolation "
        "above read committed; the layer needs no more than read committed): try again",
    ),
    "40P01": (TransactionConflictError, "a deadlock with another session's transaction: try again"),
}

# What a user behind a transaction pooler has to do, named by every error that suggests one.
_POOLER_HINT = (
    "if the URL points at a pooler in transaction mode (PgBouncer's pool_mode = transaction), "
    "set listen_url to a direct PostgreSQL URL: the layer then leaves synchronous_commit and "
    "enable_seqscan to the server and prepares no named statements (in session mode, "
    "ignore_startup_parameters = synchronous_commit,enable_seqscan will do)"
)


class Refused(DatabaseUnreachableError):
    """The server answered and said no (bad password, unknown database): waiting won't help."""


class translated_errors:  # lower case like contextlib.suppress: read as "with translated_errors(...)"
    """Re-raise driver failures as the layer's own errors (see ``translate``).

    A class rather than a @contextmanager generator: it wraps every statement, and entering
    and leaving a generator-based context costs several times more.
    """

    __slots__ = ("_config",)

    def __init__(self, config: LayerConfig) -> None:
        self._config = config

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None or not isinstance(exc, Exception):
            return
        translated = translate(self._config, exc)
        if translated is not exc:
            raise translated from exc


def translate(config: LayerConfig, exc: Exception) -> Exception:
    """The layer's own error for ``exc``, or ``exc`` itself if it is none of the layer's business.

    ``config`` names the server in the message: the layer's, or listen_url's for the LISTEN
    connection (``LayerConfig.for_listening``).
    """
    # SQLAlchemy wraps asyncpg's error in its own DBAPI error (which carries the sqlstate),
    # with asyncpg's, or the OSError under it, as that one's cause.
    driver: BaseException | None = exc.orig if isinstance(exc, DBAPIError) else exc
    underneath = driver.__cause__ if isinstance(exc, DBAPIError) and driver is not None else exc
    sqlstate = _sqlstate(driver)
    if sqlstate == _UNDEFINED_TABLE:
        return schema_missing(config)
    if sqlstate in _CONNECT_REFUSALS:
        return Refused(
            f"PostgreSQL at {config.host_and_port} refused the connection ({config.safe_url}): {driver}"
        )
    if sqlstate == _PROTOCOL_VIOLATION and "startup parameter" in str(driver):
        return Refused(
            f"{config.host_and_port} refused the connection ({config.safe_url}): {driver}; {_POOLER_HINT}"
        )
    if sqlstate in _REJECTIONS:
        kind, advice = _REJECTIONS[sqlstate]
        where = f"PostgreSQL at {config.host_and_port} ({config.safe_url})"
        return kind(f"{where}: {_first_line(driver)}; {advice}")
    if sqlstate in _LOST_PREPARED_STATEMENTS:
        return _pooled_statement_lost(config, driver or exc)
    if sqlstate in _CONNECTION_LOST_STATES or sqlstate.startswith("08"):
        return unreachable(config, driver or exc)
    if isinstance(underneath, ssl.SSLCertVerificationError):
        # Waiting will not make a certificate verify: a setting to fix, so not retried.
        return Refused(
            f"PostgreSQL at {config.host_and_port} ({config.safe_url}): the server's TLS certificate "
            f"did not verify ({underneath}): check sslrootcert, sslmode and the host name"
        )
    if isinstance(
        underneath,
        (
            OSError,
            asyncio.TimeoutError,
            asyncpg.exceptions.InterfaceError,
            # No host of the URL matched target_session_attrs: a failover in progress, retried.
            asyncpg.exceptions.TargetServerAttributeNotMatched,
        ),
    ):
        return unreachable(config, underneath)
    if sqlstate == _INSUFFICIENT_PRIVILEGE:
        return PermissionDeniedError(
            f"PostgreSQL at {config.host_and_port} ({config.safe_url}): {_first_line(driver)}; the "
            f"layer's role needs SELECT, INSERT, UPDATE and DELETE on the layer's two tables "
            f"(and USAGE on their schema): see docs/operations.md, Privileges"
        )
    if sqlstate:
        # Any other refusal by the server: still the layer's error, so callers catch one family.
        return DatabaseError(
            f"PostgreSQL at {config.host_and_port} ({config.safe_url}) refused a layer statement: "
            f"{_first_line(driver)} (SQLSTATE {sqlstate})"
        )
    return exc


def server_full(exc: BaseException) -> bool:
    """Whether ``exc`` (SQLAlchemy's or asyncpg's) is PostgreSQL refusing for want of slots."""
    seen: BaseException | None = exc
    while seen is not None:
        for candidate in (seen, getattr(seen, "orig", None)):
            if _sqlstate(candidate) == _TOO_MANY_CONNECTIONS:
                return True
        seen = seen.__cause__
    return False


def retryable(exc: DatabaseUnreachableError) -> bool:
    """Whether trying again may help: an outage may pass, a refusal will not."""
    return not isinstance(exc, Refused)


def listen_failed(config: LayerConfig, exc: Exception) -> ChannelLayerError:
    """What a failure of the LISTEN connection is to its readers: the connection was lost, or
    the server refused LISTEN for a state that may pass (a hot standby in recovery)."""
    translated = translate(config, exc)
    if isinstance(translated, (DatabaseUnreachableError, StatementRejectedError)):
        return translated
    return DatabaseUnreachableError(
        f"the listen connection to PostgreSQL at {config.host_and_port} failed: {exc}"
    )


def schema_missing(config: LayerConfig) -> SchemaMissingError:
    if config.schema is not None:
        return SchemaMissingError(
            f"the channel layer's tables do not exist in schema {config.schema!r} of {config.safe_url}; "
            f"create them with: python -m channel_layer_pg migrate --url URL --schema {config.schema}"
        )
    return SchemaMissingError(
        f"the channel layer's tables do not exist in {config.safe_url}; create them with: {MIGRATE_HINT}"
    )


def unreachable(config: LayerConfig, exc: BaseException) -> DatabaseUnreachableError:
    if isinstance(exc, asyncio.TimeoutError):
        reason = f"no answer within {config.connect_timeout:g} s"
    elif isinstance(exc, socket.gaierror):
        reason = f"host name lookup failed ({exc.strerror})"
    else:
        reason = str(exc) or type(exc).__name__
    return DatabaseUnreachableError(
        f"cannot reach PostgreSQL at {config.host_and_port} ({config.safe_url}): {reason}"
    )


def _first_line(exc: BaseException | None) -> str:
    text = str(exc) if exc is not None else ""
    return text.splitlines()[0] if text else type(exc).__name__


def _pooled_statement_lost(config: LayerConfig, exc: BaseException) -> DatabaseUnreachableError:
    first_line = _first_line(exc)
    if config.behind_pooler and config.engine is not None:
        # With listen_url set, only an engine the application gave prepares named statements.
        advice = (
            "the engine passed as engine= prepares named statements, which a transaction pooler "
            "loses between transactions: create it with "
            "connect_args={'statement_cache_size': 0, 'prepared_statement_cache_size': 0}"
        )
    else:
        advice = _POOLER_HINT
    return Refused(f"PostgreSQL at {config.host_and_port} ({config.safe_url}): {first_line}; {advice}")


def _sqlstate(exc: object) -> str:
    # asyncpg's server errors carry it, and so do SQLAlchemy's wrappers of them.
    return getattr(exc, "sqlstate", None) or ""
