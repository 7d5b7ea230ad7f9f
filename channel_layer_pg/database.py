"""Engines and connections, and turning driver failures into errors a user can act on."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from .config import LayerConfig
from .errors import DatabaseUnreachableError, SchemaMissingError

_UNDEFINED_TABLE = "42P01"
# Authentication failures, an unknown database or role: the server answered but refused us.
_CONNECT_REFUSALS = {"28P01", "28000", "3D000"}

MIGRATE_HINT = "python -m channel_layer_pg migrate --url URL  (or: alembic upgrade head)"


def create_engine(config: LayerConfig, *, use_given_engine: bool) -> tuple[AsyncEngine, bool]:
    """An autocommit engine for the layer, and whether the layer owns (and so disposes) it.

    Every statement the layer runs is one atomic statement, so autocommit saves the BEGIN and
    COMMIT round trips a transaction would cost. An engine the application gave is shared,
    never disposed; it serves only the application's loop, since a pool cannot cross loops.
    """
    if config.engine is not None and use_given_engine:
        return config.engine.execution_options(isolation_level="AUTOCOMMIT"), False
    url = config.url if config.url is not None else config.engine.url
    engine = create_async_engine(
        url,
        isolation_level="AUTOCOMMIT",
        connect_args={"timeout": config.connect_timeout, **config.connect_args},
        pool_size=config.pool_size,
        max_overflow=config.max_overflow,
    )
    return engine, True


@asynccontextmanager
async def translated_errors(config: LayerConfig) -> AsyncIterator[None]:
    """Re-raise connection failures and a missing schema as the layer's own errors."""
    try:
        yield
    except DBAPIError as exc:
        raise _translate(config, exc) from exc
    except (OSError, asyncio.TimeoutError) as exc:
        raise _unreachable(config, exc) from exc


@asynccontextmanager
async def connection(engine: AsyncEngine, config: LayerConfig) -> AsyncIterator[AsyncConnection]:
    async with translated_errors(config):
        async with engine.connect() as conn:
            yield conn


def _translate(config: LayerConfig, exc: DBAPIError) -> Exception:
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate == _UNDEFINED_TABLE:
        return SchemaMissingError(
            f"the channel layer's tables do not exist in {config.safe_url}; create them with: {MIGRATE_HINT}"
        )
    if sqlstate in _CONNECT_REFUSALS:
        return DatabaseUnreachableError(
            f"PostgreSQL at {config.host_and_port} refused the connection ({config.safe_url}): {exc.orig}"
        )
    cause = exc.orig.__cause__ if exc.orig is not None else None
    if isinstance(exc, (OperationalError, InterfaceError)) and isinstance(
        cause, (OSError, asyncio.TimeoutError)
    ):
        return _unreachable(config, cause)
    return exc


def _unreachable(config: LayerConfig, exc: BaseException) -> DatabaseUnreachableError:
    if isinstance(exc, asyncio.TimeoutError):
        reason = f"no answer within {config.connect_timeout:g} s"
    elif isinstance(exc, socket.gaierror):
        reason = f"host name lookup failed ({exc.strerror})"
    else:
        reason = str(exc) or type(exc).__name__
    return DatabaseUnreachableError(
        f"cannot reach PostgreSQL at {config.host_and_port} ({config.safe_url}): {reason}"
    )
