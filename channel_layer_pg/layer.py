"""PostgresChannelLayer: the channel layer specification on PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import Callable, Coroutine
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, ClassVar, TypeVar

from .config import build_config
from .droplog import DropLog
from .errors import ChannelFull, DatabaseUnreachableError, LayerClosedError
from .local import Claimed, ClaimedBuffer
from .loops import IoThread
from .naming import is_process_local, non_local_name, validate_channel_name, validate_group_name
from .stats import LayerStats, with_held_in_process
from .store import statements
from .store.backend import LoopBackend
from .store.fanout import members_reached, targets_for
from .store.stats import collect as collect_stats
from .transactional import ApplicationConnection, TransactionalWriter, layer_identity

T = TypeVar("T")

Operation = Callable[[LoopBackend], Coroutine[Any, Any, T]]

logger = logging.getLogger("channel_layer_pg")


async def _on_loop(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, None]) -> None:
    """Run ``coroutine`` on ``loop`` (the caller's or another thread's) and wait for it."""
    if loop is asyncio.get_running_loop():
        await coroutine
    else:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, loop))


class PostgresChannelLayer:
    """A channel layer whose messages and groups live in PostgreSQL tables.

    Every option is keyword-only and documented in the README; an unknown one is a TypeError
    that names it. The database is given as ``url``, as Django's ``NAME``/``USER``/``PASSWORD``/
    ``HOST``/``PORT``/``OPTIONS`` keys, as ``engine`` (an AsyncEngine the application owns), or
    by the ``CHANNEL_LAYER_PG_URL`` environment variable.
    """

    # The spec lists extensions as a list; a ClassVar shared by every instance, never mutated.
    extensions: ClassVar[list[str]] = ["groups", "flush"]

    def __init__(self, **options: Any) -> None:
        self._config = build_config(options)
        self.prefix = self._config.prefix
        self.expiry = self._config.expiry.total_seconds()
        self.group_expiry = self._config.group_expiry.total_seconds() if self._config.group_expiry else 0
        self.capacity = self._config.capacity
        # Names this instance alone may receive on end their non-local part with this.
        self.client_prefix = secrets.token_hex(6)
        self._own_queue_suffix = f".{self.client_prefix}!"
        # The application's main loop is served directly; every other loop (async_to_sync's
        # per-call loops, loops in worker threads) through the layer's own I/O thread.
        self._home: tuple[asyncio.AbstractEventLoop, LoopBackend] | None = None
        self._buffer = ClaimedBuffer()
        self._io = IoThread(name=f"channel_layer_pg-{self.client_prefix}")
        self._io_backend: LoopBackend | None = None
        # async_to_sync calls arrive from several threads at once; one I/O backend serves them.
        self._io_backend_lock = threading.Lock()
        self._closed = False
        self._drops = DropLog(self._config.fault_hooks)

    def __repr__(self) -> str:
        return f"<PostgresChannelLayer {self._config.safe_url} prefix={self.prefix!r}>"

    async def __aenter__(self) -> PostgresChannelLayer:
        try:
            await self.check()
        except BaseException:
            # __aexit__ will not run: release what check() opened before failing.
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def check(self) -> None:
        """Fail now, with a clear error, if the database is unreachable or has no schema."""
        await self._call(lambda backend: backend.fetch(statements.PING, {}))

    async def ping(self, *, timeout: float = 5.0) -> float:
        """Seconds one round trip to the database took; raises if it is unreachable or has no schema.

        Cheap enough for a readiness probe: it reads no row. It fails with
        DatabaseUnreachableError if no answer came within ``timeout`` seconds (connecting
        included), and with SchemaMissingError if the layer's tables are missing.
        """
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
        if not timeout > 0:
            raise ValueError(f"timeout must be more than 0 seconds, not {timeout!r}")
        started = time.perf_counter()
        try:
            await asyncio.wait_for(self._call(lambda backend: backend.fetch(statements.PING, {})), timeout)
        except asyncio.TimeoutError:
            raise DatabaseUnreachableError(
                f"PostgreSQL at {self._config.host_and_port} did not answer within {timeout:g} s "
                f"({self._config.safe_url})"
            ) from None
        return time.perf_counter() - started

    async def stats(self, *, limit: int = 10) -> LayerStats:
        """What the layer holds under its prefix: queued messages, groups, listeners.

        The lists (channels, processes, groups, listeners) hold the ``limit`` largest.
        """
        if isinstance(limit, bool) or not isinstance(limit, int):
            raise TypeError(f"limit must be an int, not {type(limit).__name__}")
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        stats = await self._call(
            lambda backend: collect_stats(backend.fetch, prefix=self.prefix, expiry=self.expiry, limit=limit)
        )
        return with_held_in_process(stats, self._buffer.count())

    # -- channels ---------------------------------------------------------------------------

    async def new_channel(self, prefix: str = "specific") -> str:
        """A new process-local channel name that only this layer instance may receive on."""
        name = f"{prefix}.{self.client_prefix}!{secrets.token_hex(6)}"
        try:
            validate_channel_name(name)
        except TypeError:
            raise TypeError(f"invalid new_channel prefix {prefix!r}") from None
        return name

    async def send(
        self, channel: str, message: dict[str, Any], *, connection: ApplicationConnection | None = None
    ) -> None:
        """Queue ``message`` on ``channel``; raises ChannelFull if it holds ``capacity`` already.

        With ``connection`` (an AsyncConnection or AsyncSession in a transaction on the layer's
        database) the message is written in that transaction: sent if it commits, never if not.
        """
        validate_channel_name(channel)
        payload = self._config.codec.encode(message)
        capacity = self._config.capacity_for(channel)
        queue = non_local_name(channel)
        if connection is None and self._owns(queue):
            stored = self._deliver_here([self._local_row(channel, payload)], queue, capacity)
        elif connection is None:
            stored = await self._call(lambda backend: backend.send(payload, queue, channel, capacity))
        else:
            writer = await self._writer(connection)
            stored = await writer.send(payload, queue, channel, capacity)
        if not stored:
            self._drops.send_refused(channel, capacity)
            if queue != channel:
                raise ChannelFull(
                    f"channel {channel!r} is full: the process-local channels under {queue!r} share "
                    f"one capacity of {capacity} unexpired messages, and they hold that many"
                )
            raise ChannelFull(f"channel {channel!r} is full: it holds {capacity} unexpired messages")

    async def receive(self, channel: str) -> dict[str, Any]:
        """The next message on ``channel``, waiting for one if need be.

        Cancelling a receive is the normal way Channels stops a consumer; a message that was
        already claimed for it goes to the next receive on the same channel.
        """
        validate_channel_name(channel)
        queue = non_local_name(channel)
        # Any name with "!" is process-local, "x.abc!" (empty local part) included.
        if is_process_local(channel) and not queue.endswith(f".{self.client_prefix}!"):
            raise ValueError(
                f"{channel!r} is a process-local channel of another layer instance; "
                "only the instance whose new_channel() made it can receive on it"
            )
        row = await self._receive(queue, channel)
        return self._config.codec.decode(row.payload)

    # -- groups -----------------------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group``; adding again only renews the membership's expiry."""
        validate_group_name(group)
        validate_channel_name(channel)
        if self._config.group_expiry is None:
            statement, extra = statements.GROUP_ADD_FOREVER, {}
        else:
            statement = statements.GROUP_ADD
            extra = {"member_expires_at_interval": self._config.group_expiry}
        parameters = {"prefix": self.prefix, "group": group, "channel": channel, **extra}
        await self._call(lambda backend: backend.execute(statement, parameters))

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; removing a channel that is not there is fine.

        On a closed layer it does nothing: consumers discard their groups as they disconnect,
        which may be after the application's shutdown closed the layer, and the membership
        lapses with group_expiry anyway.
        """
        validate_group_name(group)
        validate_channel_name(channel)
        if self._closed:
            return
        parameters = {"prefix": self.prefix, "group": group, "channel": channel}
        await self._call(lambda backend: backend.execute(statements.GROUP_DISCARD, parameters))

    async def group_send(
        self, group: str, message: dict[str, Any], *, connection: ApplicationConnection | None = None
    ) -> None:
        """Send ``message`` to every member of ``group``; full members are skipped, not raised.

        ``connection`` makes it transactional, as for ``send``.
        """
        validate_group_name(group)
        payload = self._config.codec.encode(message)
        parameters = {"prefix": self.prefix, "group": group}

        async def fan_out(backend: LoopBackend) -> tuple[int, int]:
            rows = await backend.fetch(statements.GROUP_MEMBERS, parameters)
            targets = targets_for((row["channel"] for row in rows), self._config.capacity_for)
            reached = 0
            elsewhere = []
            for target in targets:
                if not self._owns(target.queue):
                    elsewhere.append(target)
                elif self._deliver_here(
                    [self._local_row(member, payload) for member in target.recipients],
                    target.queue,
                    target.capacity,
                ):
                    reached += target.members
            stored = await backend.enqueue(payload, elsewhere) if elsewhere else set()
            return reached + members_reached(elsewhere, stored), sum(target.members for target in targets)

        async def fan_out_at_once(backend: LoopBackend) -> tuple[int, int]:
            # One statement instead of two (members, then rows): possible when every channel
            # has the same capacity, so the database can check each target's room itself.
            (row,) = await backend.group_send(payload, group, self._own_queue_suffix)
            reached, members = int(row["reached"]), int(row["elsewhere"])
            here: dict[str, list[str]] = {}
            for channel in row["here"] or ():
                here.setdefault(non_local_name(channel), []).append(channel)
            for queue, channels in here.items():
                members += len(channels)
                rows = [self._local_row(channel, payload) for channel in channels]
                if self._deliver_here(rows, queue, self._config.capacity):
                    reached += len(channels)
            return reached, members

        if connection is None:
            stored, members = await self._call(fan_out if self._config.channel_capacity else fan_out_at_once)
        else:
            writer = await self._writer(connection)
            stored, members = await writer.group_send(payload, group)
        if stored < members:
            self._drops.members_skipped(group, members - stored, members)

    # -- flush and lifecycle ----------------------------------------------------------------

    async def flush(self) -> None:
        """Delete every message and group membership under this layer's prefix."""

        async def delete_all(backend: LoopBackend) -> None:
            await backend.execute(statements.FLUSH_MESSAGES, {"prefix": self.prefix})
            await backend.execute(statements.FLUSH_GROUPS, {"prefix": self.prefix})

        await self._call(delete_all)
        # Messages already claimed into the local buffer are part of the layer too.
        self._buffer.clear()

    async def delete_expired(self) -> int:
        """Remove expired messages and lapsed memberships now; the layer also does so every 30 s."""
        return await self._call(lambda backend: backend.delete_expired())

    async def close(self) -> None:
        """Release connections and end pending receives with LayerClosedError; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._drops.flush()
        error = LayerClosedError("the channel layer was closed")
        # A loop that is no longer running took its connections with it.
        backends = [(loop, backend) for loop, backend in self._backends() if loop.is_running()]
        self._home, self._io_backend = None, None
        for loop, backend in backends:
            await _on_loop(loop, backend.stop_receiving(error))
        # Only now, with no receive left on any loop: what their claims left in the buffer
        # for a normal channel goes back to the table, for other processes to receive.
        unreceived = self._buffer.take_shared()
        if unreceived and backends:
            loop, backend = backends[0]
            await _on_loop(loop, backend.put_back(unreceived))
        elif unreceived:
            logger.warning(
                "%d claimed messages no receive took are lost: no event loop of this layer is "
                "running to put them back in the table",
                len(unreceived),
            )
        for loop, backend in backends:
            await _on_loop(loop, backend.release())
        await self._io.stop()

    # -- routing to the backend of the calling event loop -----------------------------------

    def _backends(self) -> list[tuple[asyncio.AbstractEventLoop, LoopBackend]]:
        backends = [self._home] if self._home is not None else []
        io_loop = self._io.running_loop
        if self._io_backend is not None and io_loop is not None:
            backends.append((io_loop, self._io_backend))
        return backends

    def _route(self) -> tuple[LoopBackend, IoThread | None]:
        """The backend for the calling loop, and the I/O thread if the call must hop there."""
        if self._closed:
            raise LayerClosedError("this channel layer was closed; create a new one")
        loop = asyncio.get_running_loop()
        if self._home is not None and self._home[0] is loop:
            return self._home[1], None
        # The main thread's loop is the application's (an ASGI server, a test); async_to_sync
        # always runs its loops in other threads.
        if threading.current_thread() is threading.main_thread() and (
            self._home is None or self._home[0].is_closed()
        ):
            if self._home is not None:
                logger.warning(
                    "the event loop %r closed without closing the channel layer first; "
                    "its connections were abandoned",
                    self._home[0],
                )
            self._home = (loop, self._new_backend(use_given_engine=True))
            return self._home[1], None
        with self._io_backend_lock:
            if self._io_backend is None:
                self._io_backend = self._new_backend(use_given_engine=False)
            return self._io_backend, self._io

    def _new_backend(self, *, use_given_engine: bool) -> LoopBackend:
        return LoopBackend(self._config, self._buffer, self._wake_readers, use_given_engine=use_given_engine)

    def _owns(self, queue: str) -> bool:
        """Whether ``queue`` holds process-local channels that this instance made."""
        return queue.endswith(self._own_queue_suffix)

    def _local_row(self, channel: str, payload: bytes) -> Claimed:
        return Claimed(0, channel, datetime.now(timezone.utc) + self._config.expiry, payload)

    def _deliver_here(self, rows: list[Claimed], queue: str, capacity: int) -> bool:
        """Hand messages for this instance's own process-local channels to its receivers.

        Only this instance can ever receive on those channels, so the message has nowhere to
        go but this process: it skips the table, and with it two statements and a NOTIFY.
        Whether it was queued (False: the queue holds ``capacity`` messages already).
        """
        if self._closed:
            raise LayerClosedError("this channel layer was closed; create a new one")
        if not self._buffer.offer(rows, queue, capacity):
            return False
        self._wake_readers(queue)
        return True

    def _wake_readers(self, queue: str) -> None:
        """Rows of ``queue`` were buffered: readers on every loop should look (thread-safe)."""
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, backend in self._backends():
            if loop is current:
                backend.wake_reader(queue)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(backend.wake_reader, queue)

    async def _writer(self, connection: ApplicationConnection) -> TransactionalWriter:
        return await TransactionalWriter.join(
            connection,
            self._config,
            layer_token=self.client_prefix,
            layer_closed=self._closed,
            layer_identity=lambda: self._call(layer_identity),
        )

    async def _call(self, operation: Operation[T]) -> T:
        backend, io = self._route()
        if io is None:
            return await operation(backend)
        return await io.run(operation(backend))

    async def _receive(self, queue: str, channel: str) -> Claimed:
        backend, io = self._route()
        if io is None:
            return await backend.receive(queue, channel)

        def keep(row: Claimed) -> None:
            # Received on the I/O thread just as our caller was cancelled: first in line again.
            self._buffer.put_front(row)
            self._wake_readers(queue)

        return await io.run(backend.receive(queue, channel), on_orphaned=keep)
