"""ShardedChannelLayer: one channel layer over several PostgreSQL servers.

It composes one PostgresChannelLayer per shard, each with the same options and prefix, and
routes every call: a channel to the shard its name hashes to (ring.py), a group membership
to its channel's shard, a group_send to every shard at once. Each member's messages are
thereby written on the server its receivers claim from, and each shard's layer keeps its
own connections, listener, reconnects and cleanup, exactly as a layer alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, ClassVar, TypeVar

from ..channels_compat import ChannelsInterface
from ..config import LayerConfig
from ..errors import ChannelLayerError, LayerClosedError
from ..layer import PostgresChannelLayer
from ..naming import new_process_id, validate_channel_name, validate_group_name
from ..stats import LayerStats
from ..transactional import ApplicationConnection
from .config import CONNECTION_OPTIONS, parse_shards
from .ring import HashRing

T = TypeVar("T")


class _ShardLayer(PostgresChannelLayer):
    """A shard's layer whose process id is chosen by the sharded layer, to route to this shard."""

    def __init__(self, process_id: str, **options: Any) -> None:
        self._given_process_id = process_id
        super().__init__(**options)

    def _new_process_id(self) -> str:
        return self._given_process_id


class ShardedChannelLayer(ChannelsInterface):
    """A channel layer whose channels and groups are spread over several PostgreSQL databases.

    ``shards`` lists the databases: URLs, Django DATABASES aliases, or dicts with ``url`` (or
    the Django keys NAME/USER/PASSWORD/HOST/PORT/OPTIONS), optionally ``listen_url``, and
    optionally ``name``, the shard's identity on the hash ring (default: the URL without its
    password). Every other option is PostgresChannelLayer's and applies to every shard.
    Every process must be given the same shard names, or they disagree about where a channel
    lives (see docs/sharding.md).
    """

    extensions: ClassVar[list[str]] = ["groups", "flush"]

    def __init__(self, *, shards: object, **options: Any) -> None:
        given = [name for name in CONNECTION_OPTIONS if name in options]
        if given:
            raise TypeError(
                f"ShardedChannelLayer takes its databases in shards=, not {given[0]!r}: put each "
                "database's url (or Django keys, listen_url) in its own shards entry"
            )
        parsed = parse_shards(shards)
        self._ring = HashRing([shard.name for shard in parsed])
        # The process id decides the home shard, where this instance's process-local channels,
        # their LISTEN, liveness lock and memberships live: any process routes such a channel
        # by the id in its name (ring.routing_key), so it finds the same shard.
        self.client_prefix = new_process_id()
        self.home_shard = self._ring.shard_for_key(self.client_prefix)
        self._layers: dict[str, PostgresChannelLayer] = {}
        for shard in parsed:
            layer_options = {**options, **shard.options}
            if shard.name == self.home_shard:
                self._layers[shard.name] = _ShardLayer(self.client_prefix, **layer_options)
            else:
                self._layers[shard.name] = PostgresChannelLayer(**layer_options)
        self._home = self._layers[self.home_shard]
        self._closed = False

    def __repr__(self) -> str:
        shards = ", ".join(self._ring.names)
        return f"<ShardedChannelLayer shards=[{shards}] prefix={self.prefix!r}>"

    @property
    def _config(self) -> LayerConfig:  # type: ignore[override]
        # Channels' helpers (get_capacity, channel_capacity) read the options; every shard has
        # the same, so the home shard's stand for all.
        return self._home._config

    # -- shards -----------------------------------------------------------------------------

    @property
    def shard_names(self) -> tuple[str, ...]:
        """The shards' names, in the order ``shards`` gave them."""
        return self._ring.names

    def shard_of(self, channel: str) -> str:
        """The name of the shard that holds ``channel`` (and its group memberships)."""
        return self._ring.shard_of(validate_channel_name(channel))

    def _layer_of(self, channel: str) -> PostgresChannelLayer:
        return self._layers[self.shard_of(channel)]

    # -- options ----------------------------------------------------------------------------

    @property
    def prefix(self) -> str:
        return self._home.prefix

    @property
    def expiry(self) -> float:
        return self._home.expiry

    @expiry.setter
    def expiry(self, value: float) -> None:
        # Checked by the first before any changes, so all shards keep one value.
        for layer in self._layers.values():
            layer.expiry = value

    @property
    def group_expiry(self) -> float:
        return self._home.group_expiry

    @group_expiry.setter
    def group_expiry(self, value: float) -> None:
        for layer in self._layers.values():
            layer.group_expiry = value

    @property
    def capacity(self) -> int:
        return self._home.capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        for layer in self._layers.values():
            layer.capacity = value

    # -- the channel layer API --------------------------------------------------------------

    async def new_channel(self, prefix: str = "specific") -> str:
        """A new process-local channel name; it lives on this instance's home shard."""
        return await self._home.new_channel(prefix)

    async def send(
        self, channel: str, message: dict[str, Any], *, connection: ApplicationConnection | None = None
    ) -> None:
        """Queue ``message`` on ``channel``'s shard; ChannelFull if it holds ``capacity`` already.

        With ``connection``, that connection must be to the channel's shard (``shard_of``).
        """
        layer = self._layer_of(channel)
        if connection is None:
            await layer.send(channel, message)
            return
        try:
            await layer.send(channel, message, connection=connection)
        except ValueError as exc:
            exc.add_note(f"channel {channel!r} lives on shard {self.shard_of(channel)!r}")
            raise

    async def receive(self, channel: str) -> dict[str, Any]:
        """The next message on ``channel``, from its shard."""
        return await self._layer_of(channel).receive(channel)

    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group`` on the channel's shard."""
        validate_group_name(group)
        await self._layer_of(channel).group_add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group`` on the channel's shard."""
        validate_group_name(group)
        await self._layer_of(channel).group_discard(group, channel)

    async def group_send(
        self, group: str, message: dict[str, Any], *, connection: ApplicationConnection | None = None
    ) -> None:
        """Send ``message`` to every member of ``group``, on every shard at once.

        A shard that fails does not stop the others: its members miss the message, and the
        error, naming the shard, is raised once the others have delivered.
        """
        validate_group_name(group)
        if connection is not None:
            raise ValueError(
                "group_send(connection=...) is not supported by ShardedChannelLayer: a group's "
                "members live on every shard, and one transaction commits on one database only"
            )
        await self._on_every_shard("group_send", lambda layer: layer.group_send(group, message))

    async def flush(self) -> None:
        """Delete every message and membership under the prefix, on every shard."""
        await self._on_every_shard("flush", lambda layer: layer.flush())

    async def delete_expired(self) -> int:
        """Remove expired messages and lapsed memberships on every shard now; rows removed."""
        removed = await self._on_every_shard("delete_expired", lambda layer: layer.delete_expired())
        return sum(removed.values())

    async def check(self) -> None:
        """Fail now, naming the shard, if any shard is unreachable or has no schema."""
        await self._on_every_shard("check", lambda layer: layer.check())

    async def ping(self, *, timeout: float = 5.0) -> float:
        """Seconds the slowest shard's check took; raises, naming the shard, unless all can serve."""
        took = await self._on_every_shard("ping", lambda layer: layer.ping(timeout=timeout))
        return max(took.values())

    async def stats(self, *, limit: int = 10) -> dict[str, LayerStats]:
        """Each shard's LayerStats (see PostgresChannelLayer.stats), by shard name."""
        return await self._on_every_shard("stats", lambda layer: layer.stats(limit=limit))

    async def close(self) -> None:
        """Close every shard's layer; idempotent."""
        self._closed = True
        await asyncio.gather(*(layer.close() for layer in self._layers.values()))

    async def __aenter__(self) -> ShardedChannelLayer:
        try:
            await self.check()
        except BaseException:
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

    async def _on_every_shard(
        self, what: str, call: Callable[[PostgresChannelLayer], Awaitable[T]]
    ) -> dict[str, T]:
        """``call`` on every shard at once; each result by shard name, or the first failure.

        Every shard runs to the end even if one fails, so a shard that is down costs only its
        own part. The failure raised names the shard, and keeps the error's class.
        """
        if self._closed:
            # Every shard would say so; once is enough, and no shard is at fault.
            raise LayerClosedError("this channel layer was closed; create a new one")
        names = list(self._layers)
        # A cancel here cancels every shard's call: gather cancels its children.
        results = await asyncio.gather(*(call(self._layers[name]) for name in names), return_exceptions=True)
        done: dict[str, T] = {}
        failed: list[tuple[str, BaseException]] = []
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                failed.append((name, result))
            else:
                done[name] = result
        if failed:
            raise _naming_the_shard(what, failed, list(done))
        return done


def _naming_the_shard(
    what: str, failed: list[tuple[str, BaseException]], succeeded: list[str]
) -> BaseException:
    name, exc = failed[0]
    if not isinstance(exc, ChannelLayerError):
        # Bad input fails every shard alike; cancellation and the like are not the shard's.
        return exc
    others = f"; it succeeded on {', '.join(repr(s) for s in succeeded)}" if succeeded else ""
    more = f" (and {len(failed) - 1} other shards)" if len(failed) > 1 else ""
    error = type(exc)(f"{what} failed on shard {name!r}{more}: {exc}{others}")
    error.__cause__ = exc
    return error
