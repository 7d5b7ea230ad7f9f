"""Everything the layer holds on one event loop: an engine, a listener, readers, cleanup.

asyncpg connections belong to the loop that opened them, so a backend is used only on the
loop it was made for: a loop the layer serves directly, or the layer's own I/O thread
(loops.py decides which).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.base import Executable

from ..config import LayerConfig
from ..local import Claimed, ClaimedBuffer
from ..naming import is_process_local, liveness_lock_key, topic_for
from . import statements
from .claims import QueueReader
from .db import StatementRunner, create_engine, create_listen_engine
from .listener import Listener
from .liveness import DeadProcesses
from .sendbatch import PendingSend, SendBatcher

cleanup_logger = logging.getLogger("channel_layer_pg.cleanup")
claims_logger = logging.getLogger("channel_layer_pg.claims")

CLEANUP_INTERVAL = 30.0


class LoopBackend:
    """The layer's connections, listener, readers and cleanup on one event loop.

    ``current_config()`` is the layer's options as they are now: expiry, group_expiry and
    capacity may be assigned on a running layer, and each send on every loop must use the
    values of that moment. The options that shape connections never change.
    """

    def __init__(
        self,
        current_config: Callable[[], LayerConfig],
        buffer: ClaimedBuffer,
        on_buffered: Callable[[str], None],
        *,
        process_id: str,
        use_given_engine: bool,
    ) -> None:
        self._current_config = current_config
        config = current_config()
        self._buffer = buffer
        self._on_buffered = on_buffered
        self.engine: AsyncEngine
        self.engine, self._owns_engine = create_engine(config, use_given_engine=use_given_engine)
        self._statements = StatementRunner(self.engine, config, owns_engine=self._owns_engine)
        # Half the pool for sends, so receives always find connections to claim with.
        self._sends = SendBatcher(self._send_one, self._send_many, slots=max(1, config.pool_size // 2))
        # LISTEN through a transaction pooler would hear nothing: with listen_url set, the
        # listener connects there, directly to PostgreSQL.
        hooks = config.fault_hooks
        self._cleanup_interval = (hooks and hooks.cleanup_interval) or CLEANUP_INTERVAL
        self._listen_engine = create_listen_engine(config)
        self._listener = Listener(
            self._listen_engine or self.engine,
            config,
            self._notify,
            liveness_lock_key(process_id),
            self._cleanup_interval,
        )
        self._readers: dict[str, QueueReader] = {}
        self._cleanup_task: asyncio.Task[None] | None = None
        self._dead = DeadProcesses()

    @property
    def _config(self) -> LayerConfig:
        # Read at each use, never kept: see the class docstring.
        return self._current_config()

    async def fetch(self, statement: Executable, parameters: dict[str, Any]) -> list[Any]:
        return await self._statements.fetch(statement, parameters)

    async def execute(self, statement: Executable, parameters: dict[str, Any]) -> int:
        return await self._statements.execute(statement, parameters)

    async def _notify(self, topic: str) -> None:
        await self.execute(statements.NOTIFY, {"topic": topic})

    async def group_send(self, payload: bytes, group: str, own_suffix: str | None) -> Any:
        """statements.GROUP_SEND's one row: the caller's own members, and who else was reached."""
        self._ensure_cleanup()
        parameters = statements.group_send_parameters(self._config, payload, group, own_suffix)
        (row,) = await self.fetch(statements.GROUP_SEND, parameters)
        return row

    async def group_add(self, statement: Executable, parameters: dict[str, Any]) -> None:
        """Run statements.GROUP_ADD (or _FOREVER) with ``parameters``."""
        self._ensure_cleanup()
        await self.execute(statement, parameters)

    async def send(self, payload: bytes, queue: str, channel: str, capacity: int) -> bool:
        """Store ``payload`` for ``channel`` unless its queue is full; whether it was stored."""
        self._ensure_cleanup()
        return await self._sends.send(PendingSend(queue, channel, capacity, payload))

    async def _send_one(self, item: PendingSend) -> bool:
        parameters = statements.send_parameters(
            self._config.prefix, self._config.expiry, item.payload, item.queue, item.channel, item.capacity
        )
        (row,) = await self.fetch(statements.SEND, parameters)
        return bool(row["inserted"])

    async def _send_many(self, items: Sequence[PendingSend]) -> set[int]:
        prefix = self._config.prefix
        queues = sorted({item.queue for item in items})
        rows = await self.fetch(
            statements.SEND_MANY,
            {
                "prefix": prefix,
                "expiry": self._config.expiry,
                "queues": [item.queue for item in items],
                "channels": [item.channel for item in items],
                "capacities": [item.capacity for item in items],
                "payloads": [item.payload for item in items],
                "topic_queues": queues,
                "topics": [topic_for(prefix, queue) for queue in queues],
            },
        )
        return {row["ord"] for row in rows}

    async def receive(self, queue: str, channel: str) -> Claimed:
        self._ensure_cleanup()
        return await self._reader(queue).receive(channel)

    async def hold_liveness(self) -> None:
        """Hold this process's liveness lock from now until release() (see Listener.hold).

        The layer asks this of its I/O thread's backend only, which lives as long as the layer:
        a loop served directly may end while the layer and its channels live on. It starts no
        cleanup: that runs on the loops that send and receive.
        """
        await self._listener.hold()

    def _reader(self, queue: str) -> QueueReader:
        reader = self._readers.get(queue)
        if reader is None:
            reader = QueueReader(
                queue,
                topic_for(self._config.prefix, queue),
                self._listener,
                self._claim,
                self._buffer,
                self._on_buffered,
                self._forget,
                # Receives claim in their own task before any reader LISTENs, so a layer that
                # has run a statement has reached its database as much as one that listened.
                lambda: self._statements.has_connected or self._listener.has_connected,
                self._config.fault_hooks,
            )
            self._readers[queue] = reader
        return reader

    async def stop_receiving(self, exc: BaseException) -> None:
        """First half of closing: end sends, cleanup and receives; wait for claims in flight.

        A claim that ends now hands its rows to the buffer (its waiters have failed), where
        the layer finds those that other processes could still receive and puts them back.
        """
        await self._sends.drain()
        if self._cleanup_task is not None:
            self._cleanup_task.cancel()
            await asyncio.gather(self._cleanup_task, return_exceptions=True)
        readers, self._readers = list(self._readers.values()), {}
        in_flight = await asyncio.gather(*(reader.close(exc) for reader in readers))
        claims = [claim for claims in in_flight for claim in claims]
        if self._config.fault_hooks is not None:
            await self._config.fault_hooks.receives_closed(len(claims))
        if claims:
            _, unfinished = await asyncio.wait(claims, timeout=self._config.close_timeout)
            if unfinished:
                claims_logger.warning(
                    "%d claims were still running %g s into close(); whatever they claim is lost",
                    len(unfinished),
                    self._config.close_timeout,
                )

    async def release(self) -> None:
        """Second half of closing: the listener, the pooled connections, the engines."""
        await self._listener.close()
        await self._statements.close()
        if self._listen_engine is not None:
            await self._listen_engine.dispose()
        if self._owns_engine:
            await self.engine.dispose()

    def abandon(self, loop: asyncio.AbstractEventLoop) -> None:
        """``loop`` was closed under the layer (no asyncio.run ending, no close()): let go quietly.

        Its connections are dropped without it, and the tasks left pending on it (the cleanup,
        readers) are ones asyncio would report as "destroyed but pending" when collected: the
        loop's exception handler is told to pass over those of this package. Nothing runs on a
        closed loop again, so the handler serves only such reports.
        """
        self._listener.abandon()
        self._statements.abandon()
        previous = loop.get_exception_handler()

        def handler(closed: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            task = context.get("task")
            if isinstance(task, asyncio.Task) and _is_ours(task):
                return
            if previous is not None:
                previous(closed, context)
            else:
                closed.default_exception_handler(context)

        loop.set_exception_handler(handler)

    async def put_back(self, rows: Sequence[Claimed]) -> None:
        """Return claimed messages of normal channels that no receive took to the table.

        Receivers in other processes may still want them. Bounded by close_timeout: a lock held
        on the table (a migration, VACUUM FULL) must not hold up close() for its duration.
        """
        channels = [row.channel for row in rows]  # a normal channel is a queue of its own
        queues = sorted(set(channels))
        prefix, grace = self._config.prefix, self._config.close_timeout
        parameters = {
            "prefix": prefix,
            "ids": [row.id for row in rows],
            "channels": channels,
            "expires": [row.expires_at for row in rows],
            "payloads": [row.payload for row in rows],
            "topic_queues": queues,
            "topics": [topic_for(prefix, queue) for queue in queues],
        }
        try:
            # Unshielded, so the timeout cancels the statement itself: asyncpg asks the server
            # to cancel it, and it inserts nothing (or, finishing first, all of it). Never twice.
            await asyncio.wait_for(
                self._statements.fetch(statements.RESTORE, parameters, in_own_task=True), grace
            )
        except TimeoutError:
            reason = f"it took over {grace:g} s (a lock held on channel_layer_pg_message?)"
        except Exception as exc:
            reason = str(exc)
        else:
            claims_logger.info("put %d claimed messages no receive took back in the table", len(rows))
            return
        claims_logger.warning(
            "%d claimed messages no receive took are lost: putting them back failed: %s", len(rows), reason
        )

    async def _claim(self, queue: str, channels: Sequence[str], limit: int) -> list[Claimed]:
        # A normal channel is a queue of its own, with no group rows to share out.
        statement = statements.CLAIM if is_process_local(queue) else statements.CLAIM_CHANNEL
        # Readers run every claim in a shielded task of its own (claims.Claim).
        rows = await self._statements.fetch(
            statement,
            {"prefix": self._config.prefix, "queue": queue, "channels": channels, "limit": limit},
            in_own_task=True,
        )
        waiting = set(channels)
        claimed: list[Claimed] = []
        for row in rows:
            # A group message stored once for this process: a delivery per waiting recipient.
            recipients = row["recipients"]
            targets = [c for c in recipients if c in waiting] if recipients else [row["channel"]]
            claimed.extend(Claimed(row["id"], c, row["expires_at"], row["payload"]) for c in targets)
        return claimed

    def _forget(self, reader: QueueReader) -> None:
        if self._readers.get(reader.queue) is reader:
            del self._readers[reader.queue]

    def _ensure_cleanup(self) -> None:
        if self._cleanup_task is None or self._cleanup_task.done():
            self._cleanup_task = asyncio.get_running_loop().create_task(
                self._clean_periodically(), name="channel_layer_pg cleanup"
            )

    async def _clean_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._cleanup_interval)
            self._buffer.drop_expired()
            # Each on its own: a failure of one is no reason to skip the other.
            try:
                await self.delete_expired()
            except Exception as exc:
                cleanup_logger.warning("removing expired rows failed: %s", exc)
            try:
                await self._remove_dead()
            except Exception as exc:
                cleanup_logger.warning("removing dead processes' rows failed: %s", exc)

    async def _remove_dead(self) -> None:
        started = time.perf_counter()
        dead, memberships, messages = await self._dead.remove(
            self.fetch, self.execute, self._cleanup_interval
        )
        if dead:
            cleanup_logger.info(
                "cleanup removed %d group memberships and %d queued messages of %d dead processes in %.3f s",
                memberships,
                messages,
                dead,
                time.perf_counter() - started,
            )

    async def delete_expired(self) -> int:
        """Remove expired messages and lapsed memberships in bounded batches; rows removed."""
        started = time.perf_counter()
        removed = []
        for statement in (statements.DELETE_EXPIRED_MESSAGES, statements.DELETE_LAPSED_MEMBERS):
            removed.append(0)
            while True:
                count = await self.execute(statement, {})
                removed[-1] += count
                if count < statements.CLEANUP_BATCH:
                    break
        messages, memberships = removed
        # Quiet when there was nothing to do: every process cleans every 30 s.
        cleanup_logger.log(
            logging.INFO if messages or memberships else logging.DEBUG,
            "cleanup removed %d expired messages and %d lapsed group memberships in %.3f s",
            messages,
            memberships,
            time.perf_counter() - started,
        )
        return messages + memberships

    def end_lingering(self) -> None:
        """Let this loop's readers that nobody waits on unsubscribe now (see QueueReader.end_linger)."""
        for reader in self._readers.values():
            reader.end_linger()

    def wake_reader(self, queue: str, channels: Sequence[str] | None = None) -> None:
        """Make this loop's reader of ``queue``, if any, look at the shared buffer again
        (only at ``channels``, if given: see QueueReader.serve_buffered)."""
        reader = self._readers.get(queue)
        if reader is not None:
            reader.serve_buffered(channels)


# The package's directory: a task whose coroutine's code lives under it is the layer's.
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _is_ours(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` runs a coroutine of this package (the layer's own tasks)."""
    # By its code, not its frame: a coroutine collected before its task has no frame left.
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and os.path.abspath(code.co_filename).startswith(_PACKAGE_DIR)
