"""PostgresChannelLayer: the channel layer specification on PostgreSQL."""

from __future__ import annotations

import asyncio
import secrets
import time
import weakref
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, ClassVar, TypeVar

from .channels_compat import ChannelsInterface
from .config import LayerConfig, build_config, with_option
from .droplog import DropLog
from .errors import ChannelFull, DatabaseUnreachableError, LayerClosedError
from .local import Claimed, ClaimedBuffer
from .loops import EventLoops
from .naming import (
    is_process_local,
    new_process_id,
    non_local_name,
    validate_channel_name,
    validate_group_name,
)
from .stats import LayerStats, check_limit, with_process_figures
from .store import health, statements
from .store.backend import LoopBackend
from .store.stats import collect as collect_stats
from .transactional import ApplicationConnection, TransactionalWriter, layer_identity

T = TypeVar("T")

Operation = Callable[[LoopBackend], Coroutine[Any, Any, T]]


class PostgresChannelLayer(ChannelsInterface):
    """A channel layer whose messages and groups live in PostgreSQL tables.

    Every option is keyword-only and documented in the README; an unknown one is a TypeError
    that names it. The database is given as ``url``, as Django's ``NAME``/``USER``/``PASSWORD``/
    ``HOST``/``PORT``/``OPTIONS`` keys, as ``engine`` (an AsyncEngine the application owns), or
    by the ``CHANNEL_LAYER_PG_URL`` environment variable.

    With Channels installed it is a ``channels.layers.BaseChannelLayer``, whose helpers
    (``get_capacity``, ``require_valid_channel_name``, ...) it provides either way
    (channels_compat.py).
    """

    # The spec lists extensions as a list; a ClassVar shared by every instance, never mutated.
    extensions: ClassVar[list[str]] = ["groups", "flush"]

    def __init__(self, **options: Any) -> None:
        # Replaced whole, never changed in place, when an option is assigned: every backend
        # reads it through the layer, so each send sees one consistent set of options.
        self._config = build_config(options)
        # Names this instance alone may receive on end their non-local part with this.
        # Also names its liveness lock (naming.liveness_lock_key), held while it lives.
        self.client_prefix = self._new_process_id()
        self._own_queue_suffix = f".{self.client_prefix}!"
        self._buffer = ClaimedBuffer()
        # Long-lived loops are served directly, each with its own connections; async_to_sync's
        # per-call loops through the layer's own I/O thread (see loops.py for the rule).
        # Backends and the loops reach the layer only weakly, so that a layer dropped without
        # close() is collected, and its I/O thread (holding the liveness lock) let go of then.
        self._loops = EventLoops(f"channel_layer_pg-{self.client_prefix}", _backend_maker(weakref.ref(self)))
        weakref.finalize(self, self._loops.let_go).atexit = False
        self._closed = False
        # Set once the liveness lock is held (see _hold_liveness).
        self._alive = False
        self._drops = DropLog(self._config.fault_hooks)

    def __repr__(self) -> str:
        return f"<PostgresChannelLayer {self._config.safe_url} prefix={self.prefix!r}>"

    # -- options a running layer may change -------------------------------------------------

    @property
    def prefix(self) -> str:
        """The ``prefix`` option; fixed for the layer's life."""
        return self._config.prefix

    @prefix.setter
    def prefix(self, value: str) -> None:
        raise AttributeError(
            "prefix cannot change on a running layer: its messages and groups are stored under it; "
            "pass prefix= to the constructor"
        )

    @property
    def expiry(self) -> float:
        """Seconds a message lives; assigning it (checked as the option is) applies to later sends."""
        return self._config.expiry.total_seconds()

    @expiry.setter
    def expiry(self, value: float) -> None:
        self._config = with_option(self._config, "expiry", value)

    @property
    def group_expiry(self) -> float:
        """Seconds a membership lives (0: for ever); assigning it applies to later group_add calls."""
        return self._config.group_expiry.total_seconds() if self._config.group_expiry else 0

    @group_expiry.setter
    def group_expiry(self, value: float) -> None:
        self._config = with_option(self._config, "group_expiry", value)

    @property
    def capacity(self) -> int:
        """Messages a channel may hold (channel_capacity aside); assigning it applies to later sends."""
        return self._config.capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        self._config = with_option(self._config, "capacity", value)

    @property
    def direct_loops(self) -> int:
        """How many event loops the layer serves directly now, each with connections of its own.

        The main thread's loop is served directly from its first call, any other loop after its
        first loops.DIRECT_AFTER_CALLS (100) calls; async_to_sync's per-call loops never are.
        Their calls, and those first ones, run on the layer's own I/O thread, not counted here.
        A loop stops counting when it ends (see loops.py).
        """
        return self._loops.direct_count

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
        """Seconds the check of the database took; raises unless it can serve the layer now.

        Cheap enough for a readiness probe: it reads no message. It fails with
        DatabaseUnreachableError if no answer came within ``timeout`` seconds (connecting
        included), SchemaMissingError if the layer's tables are missing, DatabaseReadOnlyError
        if the server accepts no writes (a hot standby, a failover in progress,
        default_transaction_read_only), and SchemaOutdatedError if the tables are not at the
        migration head this release needs (unchecked if the role may not read the version table).
        """
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
        if not timeout > 0:
            raise ValueError(f"timeout must be more than 0 seconds, not {timeout!r}")
        started = time.perf_counter()
        try:
            found = await asyncio.wait_for(
                self._call(
                    lambda backend: health.read(backend.fetch, probe_writes=True, schema=self._config.schema)
                ),
                timeout,
            )
        except TimeoutError:
            raise DatabaseUnreachableError(
                f"PostgreSQL at {self._config.host_and_port} did not answer within {timeout:g} s "
                f"({self._config.safe_url})"
            ) from None
        took = time.perf_counter() - started
        health.raise_unless_current(self._config, found)
        return took

    async def stats(self, *, limit: int = 10) -> LayerStats:
        """What the layer holds under its prefix: queued messages, groups, listeners.

        The lists (channels, processes, groups, listeners) hold the ``limit`` largest.
        """
        check_limit(limit)
        stats = await self._call(
            lambda backend: collect_stats(
                backend.fetch, prefix=self.prefix, expiry=self.expiry, limit=limit, schema=self._config.schema
            )
        )
        refused, skipped = self._drops.totals()
        return with_process_figures(
            stats, held_in_process=self._buffer.count(), sends_refused=refused, deliveries_skipped=skipped
        )

    # -- channels ---------------------------------------------------------------------------

    async def new_channel(self, prefix: str = "specific") -> str:
        """A new process-local channel name that only this layer instance may receive on.

        The first call connects: it takes the instance's liveness lock (_hold_liveness), so
        it raises DatabaseUnreachableError if the database cannot be reached.
        """
        name = f"{prefix}.{self.client_prefix}!{secrets.token_hex(6)}"
        try:
            validate_channel_name(name)
        except TypeError:
            raise TypeError(f"invalid new_channel prefix {prefix!r}") from None
        await self._hold_liveness()
        return name

    async def send(
        self, channel: str, message: dict[str, Any], *, connection: ApplicationConnection | None = None
    ) -> None:
        """Queue ``message`` on ``channel``; raises ChannelFull if it holds ``capacity`` already.

        With ``connection`` (an AsyncConnection or AsyncSession in a transaction on the layer's
        database) the message is written in that transaction: sent if it commits, never if not.
        """
        validate_channel_name(channel)
        payload = self._config.codec.encode(message, channel=channel)
        capacity = self._config.capacity_for(channel)
        queue = non_local_name(channel)
        if connection is None and self._owns(queue):
            stored = self._deliver_here([channel], payload) == 1
        elif connection is None:
            stored = await self._call(lambda backend: backend.send(payload, queue, channel, capacity))
        else:
            writer = await self._writer(connection)
            stored = await writer.send(payload, queue, channel, capacity)
        if not stored:
            self._drops.send_refused(channel, capacity)
            raise ChannelFull(f"channel {channel!r} is full: it holds {capacity} unexpired messages")

    async def receive(self, channel: str) -> dict[str, Any]:
        """The next message on ``channel``, waiting for one if need be.

        Cancelling a receive is the normal way Channels stops a consumer; a message that was
        already claimed for it goes to the next receive on the same channel.
        """
        validate_channel_name(channel)
        queue = non_local_name(channel)
        # Any name with "!" is process-local, "x.abc!" (empty local part) included.
        if is_process_local(channel):
            if not self._owns(queue):
                raise ValueError(
                    f"{channel!r} is a process-local channel of another layer instance; "
                    "only the instance whose new_channel() made it can receive on it"
                )
            await self._hold_liveness()  # names made from client_prefix by hand come here first
        row = await self._receive(queue, channel)
        return self._config.codec.decode(row.payload, channel=channel)

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
        if self._owns(non_local_name(channel)):
            # Other processes' cleanup removes the memberships of a process that holds no lock.
            await self._hold_liveness()
        await self._call(lambda backend: backend.group_add(statement, parameters))

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
        payload = self._config.codec.encode(message, group=group)
        if connection is None:
            suffix = self._own_queue_suffix
            row = await self._call(lambda backend: backend.group_send(payload, group, suffix))
        else:
            row = await (await self._writer(connection)).group_send(payload, group)
        here = row["here"] or ()
        reached = int(row["reached"]) + (self._deliver_here(here, payload) if here else 0)
        members = int(row["elsewhere"]) + len(here)
        if reached < members:
            self._drops.members_skipped(group, members - reached, members)

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
        await self._loops.close(LayerClosedError("the channel layer was closed"), self._buffer.take_shared)

    async def _hold_liveness(self) -> None:
        """Hold this instance's liveness lock from now until close(); at once if held already.

        From the first new_channel(), before the name is handed out: from then on other
        processes may write to its queue and put its channels in groups, and their cleanup
        removes the rows of a process that holds no lock (store/liveness.py). Held by the
        I/O thread, which lives as long as the layer (EventLoops.hold_liveness).
        """
        if self._alive or self._closed:
            return  # closed: receives and group_add refuse anyway
        await self._loops.hold_liveness()
        self._alive = True

    # -- routing to the backend of the calling event loop -----------------------------------

    def _new_process_id(self) -> str:
        """This instance's process id; a shard of ShardedChannelLayer is given one that routes to it."""
        return new_process_id()

    def _owns(self, queue: str) -> bool:
        """Whether ``queue`` holds process-local channels that this instance made."""
        return queue.endswith(self._own_queue_suffix)

    def _deliver_here(self, channels: Sequence[str], payload: bytes) -> int:
        """Hand a message to this instance's own process-local ``channels``; how many had room.

        Only this instance can ever receive on those channels, so the message has nowhere to
        go but this process: it skips the table, and with it two statements and a NOTIFY.
        Each channel takes it unless it holds its capacity of messages already.
        """
        if self._closed:
            raise LayerClosedError("this channel layer was closed; create a new one")
        expires_at = datetime.now(UTC) + self._config.expiry
        delivered = 0
        for channel in channels:
            row = Claimed(0, channel, expires_at, payload)
            delivered += self._buffer.offer(row, self._config.capacity_for(channel))
        if delivered:
            # One queue per new_channel() prefix ("specific.<id>!", "other.<id>!"): a group's
            # members here may span several, each with a reader of its own to wake.
            by_queue: dict[str, list[str]] = {}
            for channel in channels:
                by_queue.setdefault(non_local_name(channel), []).append(channel)
            for queue, its_channels in by_queue.items():
                self._wake_readers(queue, its_channels)
        return delivered

    def _wake_readers(self, queue: str, channels: Sequence[str] | None = None) -> None:
        """Rows of ``queue`` (for ``channels``, if known) were buffered: readers on every loop
        should look (thread-safe)."""
        self._loops.wake_readers(queue, channels)

    async def _writer(self, connection: ApplicationConnection) -> TransactionalWriter:
        return await TransactionalWriter.join(
            connection,
            self._config,
            layer_token=self.client_prefix,
            layer_closed=self._closed,
            layer_identity=lambda: self._call(lambda backend: layer_identity(backend, self._config.schema)),
        )

    async def _call(self, operation: Operation[T]) -> T:
        backend, io = self._loops.route()
        if io is None:
            return await operation(backend)
        return await io.run(operation(backend))

    async def _receive(self, queue: str, channel: str) -> Claimed:
        backend, io = self._loops.route()
        if io is None:
            return await backend.receive(queue, channel)

        def keep(row: Claimed) -> None:
            # Received on the I/O thread just as our caller was cancelled: first in line again.
            self._buffer.put_front(row)
            self._wake_readers(queue)

        return await io.run(backend.receive(queue, channel), on_orphaned=keep)


def _backend_maker(layer: weakref.ref[PostgresChannelLayer]) -> Callable[[bool], LoopBackend]:
    """EventLoops' maker of backends for ``layer``, holding it (and letting backends hold it) weakly.

    A backend outlives a collected layer only while it is let go of (EventLoops.let_go): it
    keeps the options of the moment it was made, and wakes no reader.
    """

    def new_backend(use_given_engine: bool) -> LoopBackend:
        made = layer()
        if made is None:
            raise LayerClosedError("this channel layer was collected")
        last_config, buffer, process_id = made._config, made._buffer, made.client_prefix

        def current_config() -> LayerConfig:
            alive = layer()
            return alive._config if alive is not None else last_config

        def wake_readers(queue: str) -> None:
            alive = layer()
            if alive is not None:
                alive._wake_readers(queue)

        return LoopBackend(
            current_config, buffer, wake_readers, process_id=process_id, use_given_engine=use_given_engine
        )

    return new_backend
