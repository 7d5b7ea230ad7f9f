"""PostgresChannelLayer: the channel layer specification on PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import secrets
from types import TracebackType
from typing import Any, ClassVar

from sqlalchemy import select

from . import statements
from .backend import LoopBackend
from .config import build_config
from .errors import ChannelFull, LayerClosedError
from .naming import non_local_name, validate_channel_name, validate_group_name
from .schema import message as message_table

logger = logging.getLogger("channel_layer_pg")


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
        self._backends: dict[asyncio.AbstractEventLoop, LoopBackend] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"<PostgresChannelLayer {self._config.safe_url} prefix={self.prefix!r}>"

    async def __aenter__(self) -> PostgresChannelLayer:
        await self.check()
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
        await self._backend().execute(select(message_table.c.id).limit(0), {})

    # -- channels ---------------------------------------------------------------------------

    async def new_channel(self, prefix: str = "specific") -> str:
        """A new process-local channel name that only this layer instance may receive on."""
        name = f"{prefix}.{self.client_prefix}!{secrets.token_hex(6)}"
        try:
            validate_channel_name(name)
        except TypeError:
            raise TypeError(f"invalid new_channel prefix {prefix!r}") from None
        return name

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        """Queue ``message`` on ``channel``; raises ChannelFull if it holds ``capacity`` already."""
        validate_channel_name(channel)
        payload = self._config.codec.encode(message)
        capacity = self._config.capacity_for(channel)
        stored = await self._backend().enqueue(payload, [(non_local_name(channel), channel, capacity)])
        if not stored:
            raise ChannelFull(f"channel {channel!r} is full: it holds {capacity} unexpired messages")

    async def receive(self, channel: str) -> dict[str, Any]:
        """The next message on ``channel``, waiting for one if need be.

        Cancelling a receive is the normal way Channels stops a consumer; a message that was
        already claimed for it goes to the next receive on the same channel.
        """
        validate_channel_name(channel)
        queue = non_local_name(channel)
        if queue != channel and not queue.endswith(f".{self.client_prefix}!"):
            raise ValueError(
                f"{channel!r} is a process-local channel of another layer instance; "
                "only the instance whose new_channel() made it can receive on it"
            )
        payload = await self._backend().receive(queue, channel)
        return self._config.codec.decode(payload)

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
        await self._backend().execute(
            statement, {"prefix": self.prefix, "group": group, "channel": channel, **extra}
        )

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``; removing a channel that is not there is fine."""
        validate_group_name(group)
        validate_channel_name(channel)
        await self._backend().execute(
            statements.GROUP_DISCARD, {"prefix": self.prefix, "group": group, "channel": channel}
        )

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Send ``message`` to every member of ``group``; full members are skipped, not raised."""
        validate_group_name(group)
        payload = self._config.codec.encode(message)
        backend = self._backend()
        members = [
            row.channel
            for row in await backend.execute(
                statements.GROUP_MEMBERS, {"prefix": self.prefix, "group": group}
            )
        ]
        if not members:
            return
        targets = [
            (non_local_name(channel), channel, self._config.capacity_for(channel)) for channel in members
        ]
        stored = await backend.enqueue(payload, targets)
        if stored < len(targets):
            logger.info(
                "group_send to %r skipped %d of %d members: their channels are full",
                group,
                len(targets) - stored,
                len(targets),
            )

    # -- flush and lifecycle ----------------------------------------------------------------

    async def flush(self) -> None:
        """Delete every message and group membership under this layer's prefix."""
        backend = self._backend()
        await backend.execute(statements.FLUSH_MESSAGES, {"prefix": self.prefix})
        await backend.execute(statements.FLUSH_GROUPS, {"prefix": self.prefix})
        for each in self._backends.values():
            each.clear_buffers()

    async def delete_expired(self) -> int:
        """Remove expired messages and lapsed memberships now; the layer also does so every 30 s."""
        return await self._backend().delete_expired()

    async def close(self) -> None:
        """Release connections and end pending receives with LayerClosedError; idempotent."""
        if self._closed:
            return
        self._closed = True
        error = LayerClosedError("the channel layer was closed")
        current = asyncio.get_running_loop()
        backends, self._backends = self._backends, {}
        for loop, backend in backends.items():
            if loop is current:
                await backend.close(error)
            elif loop.is_running():
                done = asyncio.run_coroutine_threadsafe(backend.close(error), loop)
                await asyncio.wrap_future(done)
            # A closed loop took its connections with it; there is nothing left to release.

    def _backend(self) -> LoopBackend:
        if self._closed:
            raise LayerClosedError("this channel layer was closed; create a new one")
        loop = asyncio.get_running_loop()
        backend = self._backends.get(loop)
        if backend is None:
            for old in [old for old in self._backends if old.is_closed()]:
                del self._backends[old]
            # The first loop gets the pool. Connections cannot move between loops, and a loop
            # that async_to_sync makes for one call may be closed before it could release a
            # pooled connection, so further loops open a connection per statement.
            backend = LoopBackend(self._config, pooled=not self._backends)
            self._backends[loop] = backend
        return backend
