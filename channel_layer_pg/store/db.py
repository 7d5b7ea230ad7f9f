"""Engines, and the runner that sends the layer's statements on the pool's connections."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.base import Executable

from ..config import LayerConfig
from ..errors import DatabaseReadOnlyError, DatabaseUnreachableError
from ..tasks import start_task
from . import health, statements, stats
from .backoff import Backoff
from .driver_errors import retryable, translated_errors, unreachable
from .pool import Held, HeldConnections
from .schema import schema_translation

T = TypeVar("T")

# Where the statements the runner is given are defined, for naming them in logs.
_STATEMENT_MODULES = (statements, stats, health)

pool_logger = logging.getLogger("channel_layer_pg.pool")
statements_logger = logging.getLogger("channel_layer_pg.statements")

# Waits between attempts to open a connection for a statement, 1.75 s in all: long enough
# to ride out a quick server restart, short enough that a caller hears of a real outage
# promptly.
_RECONNECT_FIRST, _RECONNECT_MOST, _RECONNECT_FOR = 0.05, 1.0, 1.75


# asyncpg keeps every statement prepared for the life of the connection, and PostgreSQL may keep
# one plan with it. A plan made while the message table held a page of rows (after a VACUUM of
# an empty queue table) scanned the whole table: a send cost 0.33 ms at 500 queued rows and
# 1.6 ms at 4,000. With sequential scans off every statement has an index path (and
# store.sql.unexpired keeps the expiry indexes out of reach). A startup parameter, not a
# SET: a transaction pooler must refuse it (a SET would stay with its server connection, for
# other clients), and does, until listen_url says the pooler is there.
PLAN_SETTINGS = {"enable_seqscan": "off"}


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
        connect_args=_connect_args(config, config.connect_args),
        # The layer pools connections itself (pool.HeldConnections): a checkout from
        # SQLAlchemy's async pool costs about as much as the statement it is for
        # (`benchmarks/bench.py pool-checkout`).
        poolclass=NullPool,
    )
    return engine, True


def create_listen_engine(config: LayerConfig) -> AsyncEngine | None:
    """An engine on ``listen_url`` for the LISTEN connection, or None to use the layer's own.

    NullPool: the listener takes one connection out for good and reopens it only after a
    loss, so a pool would only keep connections nobody uses.
    """
    if config.listen_url is None:
        return None
    # Connected as the database URL says (TLS, timeout, application_name), with what
    # listen_url's own query says on top.
    connect_args = {**config.connect_args, **config.listen_connect_args}
    return create_async_engine(
        config.listen_url, connect_args=_connect_args(config, connect_args, listen=True), poolclass=NullPool
    )


def _connect_args(config: LayerConfig, given: Mapping[str, Any], *, listen: bool = False) -> dict[str, Any]:
    connect_args = {"timeout": config.connect_timeout, **given}
    server_settings = {
        # Named, so pg_stat_activity shows which sessions are the layer's. PgBouncer accepts
        # this one startup parameter and sets it on whichever server connection it lends.
        "application_name": "channel_layer_pg",
        **connect_args.get("server_settings", {}),
    }
    if not config.behind_pooler and not listen:
        server_settings.update(PLAN_SETTINGS)
    if config.synchronous_commit is not None and not listen:
        # A commit that waits for its WAL flush costs a disk sync per message; see the README
        # on what synchronous_commit=off risks (the last fraction of a second of messages if
        # the server crashes) and gains.
        server_settings["synchronous_commit"] = config.synchronous_commit
    connect_args["server_settings"] = server_settings
    if config.behind_pooler:
        # A transaction pooler lends each transaction whichever server connection is free, so
        # a statement prepared under a name on one is missing, or its name taken by another
        # client's, on the next. Without a cache asyncpg prepares unnamed statements and sends
        # each one's Parse again with its Bind and Execute, before one Sync: the pooler keeps
        # that exchange on one server connection. (For the LISTEN connection it matters only
        # if listen_url points at the pooler too, which the listener then reports.)
        connect_args["statement_cache_size"] = 0
        # SQLAlchemy's own cache of asyncpg prepared statements, used for the queries it runs
        # when it first connects: nothing worth keeping when statements are unnamed.
        connect_args["prepared_statement_cache_size"] = 0
    return connect_args


class StatementRunner:
    """Runs the layer's Core statements on the engine's pooled asyncpg connections.

    SQLAlchemy compiles each statement once for the engine's dialect; every call then sends
    the compiled SQL with positional arguments straight to the asyncpg connection it checked
    out of the engine's pool. Measured here, that halves the cost of a statement (0.21 ms to
    0.10 ms for SELECT 1) against Connection.execute, whose per-call result machinery the
    layer does not need: its parameters and rows are plain asyncpg types.
    """

    def __init__(self, engine: AsyncEngine, config: LayerConfig, *, owns_engine: bool) -> None:
        self._engine = engine
        self._config = config
        self._faults = config.fault_hooks
        self._compiled: dict[Executable, _Compiled] = {}
        self._running: set[asyncio.Task[None]] = set()
        given_pool_size = getattr(engine.pool, "size", lambda: 0)()
        self._most_connections = max(given_pool_size, config.pool_size) + config.max_overflow + 1
        # Whether a connection was ever opened: an outage after that is ridden out.
        self.has_connected = False
        if owns_engine:
            self._connections = HeldConnections(
                engine,
                keep=config.pool_size,
                most=config.pool_size + config.max_overflow,
                idle_timeout=config.pool_idle_timeout,
            )
        else:
            # An application's engine: its pool is the application's to size and share, so
            # every connection goes back to it after each statement.
            self._connections = HeldConnections(engine, keep=0, most=sys.maxsize, idle_timeout=None)

    async def fetch(
        self, statement: Executable, parameters: Mapping[str, Any], *, in_own_task: bool = False
    ) -> list[Any]:
        """The rows ``statement`` returns (asyncpg Records).

        ``in_own_task``: the caller already runs this in a task that nothing cancels (the
        readers' claims), so the runner need not shield it in another; a task per statement
        is a fair part of a claim's cost.
        """
        compiled, arguments = self._bind(statement, parameters)
        if self._faults is not None:
            await self._faults.before_statement(compiled.name, parameters)
        rows: list[Any]
        if in_own_task:
            rows = await self._run(compiled, lambda driver: driver.fetch(compiled.sql, *arguments))
        else:
            rows = await self._shielded(compiled, lambda driver: driver.fetch(compiled.sql, *arguments))
        if self._faults is not None:
            await self._faults.after_statement(compiled.name, parameters, rows)
        return rows

    async def execute(self, statement: Executable, parameters: Mapping[str, Any]) -> int:
        """How many rows ``statement`` changed."""
        compiled, arguments = self._bind(statement, parameters)
        if self._faults is not None:
            await self._faults.before_statement(compiled.name, parameters)
        status = await self._shielded(compiled, lambda driver: driver.execute(compiled.sql, *arguments))
        if self._faults is not None:
            await self._faults.after_statement(compiled.name, parameters, status)
        count = status.rsplit(" ", 1)[-1]
        return int(count) if count.isdigit() else 0

    def _bind(self, statement: Executable, parameters: Mapping[str, Any]) -> tuple[_Compiled, list[Any]]:
        compiled = self._compiled.get(statement)
        if compiled is None:
            compiled = self._compiled[statement] = _Compiled.of(statement, self._engine, self._config.schema)
        return compiled, [
            parameters[key] if key in parameters else compiled.defaults[key] for key in compiled.order
        ]

    async def _shielded(self, compiled: _Compiled, work: Callable[[Any], Awaitable[T]]) -> T:
        # Shielded: a statement cancelled halfway leaves its connection mid-protocol, and the
        # pool would have to throw it away. A cancelled caller stops waiting; the statement
        # still completes (a send still lands: it was already on its way to the server).
        # Like asyncio.shield, less one turn of the event loop per statement (about 10 us):
        # the task hands its outcome over itself rather than through a done callback.
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[T] = loop.create_future()
        # Held until done: a cancelled caller no longer holds the task, and the loop holds
        # tasks only weakly.
        task = start_task(loop, self._run_into(outcome, compiled, work))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return await outcome

    async def _run_into(
        self, outcome: asyncio.Future[T], compiled: _Compiled, work: Callable[[Any], Awaitable[T]]
    ) -> None:
        try:
            result = await self._run(compiled, work)
        except BaseException as exc:
            # Done already: the caller was cancelled and is not listening any more.
            if not outcome.done():
                if isinstance(exc, asyncio.CancelledError):
                    outcome.cancel()
                else:
                    outcome.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            if not outcome.done():
                outcome.set_result(result)

    async def _run(self, compiled: _Compiled, work: Callable[[Any], Awaitable[T]]) -> T:
        backoff: Backoff | None = None  # made at the first failure: most statements meet none
        # After a restart every idle connection is dead; replacing each must not use up the
        # waits meant for a server that is really down.
        dead_allowed = self._most_connections
        while True:
            try:
                with translated_errors(self._config):
                    held = await self._connections.acquire()
                self.has_connected = True
            except DatabaseUnreachableError as exc:
                if backoff is None:
                    backoff = Backoff(_RECONNECT_FIRST, _RECONNECT_MOST, give_up_after=_RECONNECT_FOR)
                if backoff.exhausted or not retryable(exc):
                    raise
                delay = backoff.next()
                # Nothing was sent: the server may be restarting, so try again shortly.
                pool_logger.warning("%s; retrying in %.2f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            if held.driver.is_closed() and dead_allowed > 0:
                # Dropped while idle (a restart, pg_terminate_backend): nothing was sent on
                # it, so another connection is tried at once.
                dead_allowed -= 1
                await self._connections.discard(held)
                continue
            try:
                with translated_errors(self._config):
                    started = time.perf_counter()
                    result = await work(held.driver)
                    took = time.perf_counter() - started
            except asyncpg.exceptions.InternalClientError as exc:
                # asyncpg refuses to start a statement on a connection whose protocol is in a
                # bad state (seen after pg_terminate_backend): nothing was sent, so the
                # statement is tried once more on another connection.
                await self._connections.discard(held)
                if dead_allowed <= 0:
                    raise unreachable(self._config, exc) from exc
                dead_allowed -= 1
                continue
            except DatabaseUnreachableError:
                # Lost mid-statement: it may or may not have committed, so it is never
                # repeated (a message must not be stored twice); the caller hears of it.
                await self._connections.discard(held)
                raise
            except asyncio.CancelledError:
                # Only when the loop itself goes away (statements are shielded): the protocol
                # may be mid-message, so the connection is not trusted again.
                await self._connections.discard(held)
                raise
            except DatabaseReadOnlyError:
                # A session keeps the read-only state it began with (default_transaction_read_only
                # changed since, or a name that now points at the promoted primary), so the next
                # statement gets a new session, which sees the server as it is now.
                await self._connections.discard(held)
                raise
            except Exception:
                # The server answered with an error (the statement failed as a whole): the
                # connection is fine for the next one.
                await self._release_or_discard(held)
                raise
            await self._connections.release(held)
            _warn_if_slow(compiled.name, took, self._config.slow_statement_threshold)
            return result

    async def _release_or_discard(self, held: Held) -> None:
        if held.driver.is_closed() or held.driver.is_in_transaction():
            await self._connections.discard(held)
        else:
            await self._connections.release(held)

    def abandon(self) -> None:
        """The loop was closed under the layer: drop the idle connections without it."""
        self._connections.abandon()

    async def close(self) -> None:
        """Return the connections held between statements, before the engine is disposed."""
        await self._connections.close(timeout=self._config.close_timeout)


def _warn_if_slow(name: str, seconds: float, threshold: float) -> None:
    if seconds >= threshold:
        statements_logger.warning("slow statement: %s took %.2f s", name, seconds)


class _Compiled:
    __slots__ = ("defaults", "name", "order", "sql")

    def __init__(self, sql: str, order: list[str], defaults: dict[str, Any], name: str) -> None:
        self.sql, self.order, self.defaults, self.name = sql, order, defaults, name

    @classmethod
    def of(cls, statement: Executable, engine: AsyncEngine, schema: str | None) -> _Compiled:
        # The schema is written into the SQL, not left to search_path: a transaction pooler
        # would not pass search_path on, and a statement compiled once serves every call.
        compiled = statement.compile(  # type: ignore[attr-defined]
            dialect=engine.dialect,
            schema_translate_map=schema_translation(schema),
            render_schema_translate=schema is not None,
        )
        return cls(
            str(compiled), list(compiled.positiontup or ()), dict(compiled.params), _name_of(statement)
        )


def _name_of(statement: Executable) -> str:
    """The constant that holds ``statement`` (statements.SEND, ...), to name it in logs."""
    for module in _STATEMENT_MODULES:
        for name, value in vars(module).items():
            if value is statement and not name.startswith("_"):
                return f"{module.__name__.rsplit('.', 1)[-1]}.{name}"
    return type(statement).__name__
