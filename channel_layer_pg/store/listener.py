"""One LISTEN connection per layer and event loop, outside the pool, that wakes readers.

It is closed when nothing has been listened to for pool_idle_timeout seconds, and opened
again by the next subscribe, unless it is held open (``hold``) for the process's liveness:
the layer holds its I/O thread's listener from its first new_channel() until close().

Every LISTEN session holds a shared session-level advisory lock on its layer instance's
liveness key (naming.liveness_lock_key): PostgreSQL releases it when the session ends however
it ends (close, kill -9 of the process, a terminated backend), which is how other processes'
cleanup tells a dead process from a live one (store/liveness.py). Shared, so the listeners
of one instance on several event loops never wait on each other. A held listener, or one
with topics, that loses its connection (or drops it after a failed LISTEN) reconnects.

NOTIFY carries no data here: the message table is the source of truth and a notification
only says "look again". That makes a lost notification (the connection dropped, nobody was
listening yet) cost latency, never a message: on reconnect every reader is woken to look.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..config import LayerConfig
from ..errors import DatabaseUnreachableError
from ..naming import listener_application_name
from .backoff import Backoff
from .driver_errors import listen_failed, translated_errors

logger = logging.getLogger("channel_layer_pg.listener")

Wake = Callable[[], None]
# Sends a NOTIFY on a topic through the layer's own pool (the way every send wakes readers).
Notify = Callable[[str], Awaitable[object]]

# Waits between attempts to reconnect after a loss; it retries for as long as the layer is open.
_RECONNECT_FIRST, _RECONNECT_MOST = 0.1, 5.0


class NotificationsNotDelivered(DatabaseUnreachableError):
    """LISTEN succeeded but hears nothing the layer sends: a setting to fix, not an outage."""


class Listener:
    """LISTENs on ``engine`` (the layer's, or one on listen_url) for the topics readers want."""

    def __init__(
        self,
        engine: AsyncEngine,
        config: LayerConfig,
        notify: Notify,
        liveness_key: int,
        cleanup_interval: float,
    ) -> None:
        self._engine = engine
        self._config = config
        self._liveness_key = liveness_key
        # Absent for longer than this, the lock may have been missed by two cleanup passes.
        self._liveness_grace = cleanup_interval / 2
        # Set by hold(): the connection stays open with nothing listened to, holding the lock.
        self._held = False
        # Errors about the LISTEN connection name the server it goes to.
        self._listen_config = config.for_listening()
        self._notify = notify
        self._delivery_checked = False
        # The latest failed delivery check, and how many there were: subscribes that queued
        # behind a failing check fail with it rather than each wait out a check of their own.
        self._check_failure: DatabaseUnreachableError | None = None
        self._check_failures = 0
        self._wakers: dict[str, set[Wake]] = {}
        self._conn: AsyncConnection | None = None
        self._driver: Any = None  # the asyncpg connection under self._conn
        self._lock = asyncio.Lock()
        self._reconnect_task: asyncio.Task[None] | None = None
        # Set while no topic is listened to: closes the connection after pool_idle_timeout.
        self._unused_timer: asyncio.TimerHandle | None = None
        self._closing_unused: asyncio.Task[None] | None = None
        self._closed = False
        # Once connected, a lost connection is an outage to ride out rather than an error.
        self.has_connected = False

    async def subscribe(self, topic: str, wake: Wake) -> None:
        """Call ``wake`` on every NOTIFY to ``topic``; LISTEN is in effect when this returns."""
        failures = self._check_failures
        if self._unused_timer is not None:
            self._unused_timer.cancel()
            self._unused_timer = None
        async with self._lock:
            if self._check_failures != failures and self._check_failure is not None:
                raise self._check_failure
            await self._ensure_connected()
            await self._ensure_delivers()
            wakers = self._wakers.setdefault(topic, set())
            if not wakers:
                try:
                    await self._driver.add_listener(topic, self._on_notify)
                except BaseException as exc:
                    # A cancel here leaves no half-registered topic behind.
                    del self._wakers[topic]
                    if isinstance(exc, Exception):
                        # Whatever broke LISTEN (most often a connection killed but not yet
                        # noticed) leaves this connection untrustworthy: start afresh.
                        await self._drop_connection()
                        # The other topics' readers, and the liveness lock, need it back.
                        if self._wakers or self._held:
                            self._start_reconnect()
                        raise listen_failed(self._listen_config, exc) from exc
                    raise
            wakers.add(wake)

    async def unsubscribe(self, topic: str, wake: Wake) -> None:
        async with self._lock:
            wakers = self._wakers.get(topic)
            if wakers is None:
                return
            wakers.discard(wake)
            if wakers:
                return
            del self._wakers[topic]
            if self._driver is not None and not self._driver.is_closed():
                try:
                    await self._driver.remove_listener(topic, self._on_notify)
                except Exception:  # the connection died meanwhile; its LISTENs died with it
                    logger.debug("UNLISTEN %s failed; connection already gone", topic)
            self._close_when_unused()

    async def hold(self) -> None:
        """Hold the connection, and with it the liveness lock, from now until close().

        A process's group memberships and queued rows are removed once no session holds its
        lock (store/liveness.py), so the layer holds it while it lives, listening or not.
        Connects now unless connected (or reconnecting already).
        """
        self._held = True
        if self._unused_timer is not None:
            self._unused_timer.cancel()
            self._unused_timer = None
        if self._driver is not None and not self._driver.is_closed():
            return
        if self._reconnect_task is not None and not self._reconnect_task.done():
            return  # it takes the lock again as it reconnects
        async with self._lock:
            await self._ensure_connected()

    def _close_when_unused(self) -> None:
        """With nothing to listen to, close the connection after pool_idle_timeout seconds.

        The next subscribe opens another: a few ms for the first receive after a quiet spell,
        against a server connection held for nothing meanwhile.
        """
        idle_timeout = self._config.pool_idle_timeout
        if not self._wakers and not self._held and idle_timeout is not None and self._unused_timer is None:
            self._unused_timer = asyncio.get_running_loop().call_later(idle_timeout, self._close_unused)

    def _close_unused(self) -> None:
        self._unused_timer = None
        if not self._closed and not self._wakers and not self._held and self._driver is not None:
            self._closing_unused = asyncio.get_running_loop().create_task(self._drop_if_unused())

    async def _drop_if_unused(self) -> None:
        async with self._lock:
            # A subscribe may have come while this waited for the lock.
            if not self._wakers and not self._held:
                logger.debug("closing the listen connection: nothing listened to for a while")
                await self._drop_connection()

    async def close(self) -> None:
        self._closed = True
        if self._unused_timer is not None:
            self._unused_timer.cancel()
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            await asyncio.gather(self._reconnect_task, return_exceptions=True)
        if self._closing_unused is not None:
            # Not cancelled: cut short, it could leave its connection half closed.
            await asyncio.gather(self._closing_unused, return_exceptions=True)
        async with self._lock:
            await self._drop_connection()
        self._wakers.clear()

    def abandon(self) -> None:
        """The loop was closed under the layer: drop the connection without it (pool.abandon)."""
        self._closed = True
        driver, self._conn, self._driver = self._driver, None, None
        if driver is not None:
            try:
                # Out of SQLAlchemy's pool already (detached): only asyncpg's side to mark.
                driver.terminate()
            except RuntimeError:
                pass  # it could not schedule the transport's close on the closed loop

    async def _ensure_connected(self) -> None:
        if self._driver is not None and not self._driver.is_closed():
            return
        await self._drop_connection()
        with translated_errors(self._listen_config):
            while True:
                conn = await self._engine.connect()
                try:
                    raw = await conn.get_raw_connection()
                    driver: Any = raw.driver_connection
                    if driver.is_closed():
                        # A pooled connection that died idle (a restart): take another.
                        await conn.invalidate()
                        await conn.close()
                        continue
                    # Out of the pool for good: LISTEN is session state that must neither leak
                    # into another checkout nor be reset by the pool.
                    raw.detach()
                    # Told apart from the pool's sessions, so stats can list the listeners;
                    # and the liveness lock, in the same round trip. Nobody takes that key
                    # exclusively, so the shared lock is always granted (unless an
                    # application's own lock uses the key: then the process just looks dead).
                    locked = await driver.fetchval(
                        "SELECT set_config('application_name', $1, false) IS NOT NULL"
                        " AND pg_try_advisory_lock_shared($2)",
                        listener_application_name(self._config.prefix),
                        self._liveness_key,
                    )
                    if not locked:
                        logger.warning(
                            "the liveness lock %d is held exclusively by another session; other "
                            "processes will take this one for dead and remove its group memberships",
                            self._liveness_key,
                        )
                    driver.add_termination_listener(self._on_terminated)
                except BaseException:
                    await conn.close()
                    raise
                break
        self._conn, self._driver = conn, driver
        # Connected without the check only to hold the lock, it has not yet proved it can listen.
        self.has_connected = self._delivery_checked

    async def _ensure_delivers(self) -> None:
        """Check once, before the first LISTEN a reader needs, that notifications arrive.

        Not for hold(): the lock needs no notification, and the check's NOTIFY would open a
        pooled connection on the I/O thread for nothing.
        """
        if not self._delivery_checked:
            try:
                await self._check_delivery()
            except BaseException:
                await self._drop_connection()
                raise
            self._delivery_checked = True
        self.has_connected = True

    async def _check_delivery(self) -> None:
        """Fail unless a NOTIFY sent through the layer's pool reaches this connection.

        Through a transaction pooler, LISTEN holds only the server connection lent for that one
        statement, and its notifications go to whichever client holds that connection next:
        every receive would wait for the reader's poll. A listen_url that reaches another
        server or database fails the same way. Checked once: a reconnect uses the same settings.
        """
        topic = f"channel_layer_pg_check_{secrets.token_hex(8)}"
        arrived = asyncio.get_running_loop().create_future()

        def on_notify(*_: object) -> None:
            if not arrived.done():
                arrived.set_result(None)

        with translated_errors(self._listen_config):
            await self._driver.add_listener(topic, on_notify)
        try:
            await self._notify(topic)
            heard, _ = await asyncio.wait({arrived}, timeout=self._config.connect_timeout)
        finally:
            arrived.cancel()
            try:
                await self._driver.remove_listener(topic, on_notify)
            except Exception:  # the connection died meanwhile; its LISTENs died with it
                logger.debug("UNLISTEN %s failed; connection already gone", topic)
        if not heard:
            self._check_failure = self._not_delivered()
            self._check_failures += 1
            raise self._check_failure

    def _not_delivered(self) -> DatabaseUnreachableError:
        config = self._config
        heard = (
            f"a NOTIFY sent through {config.safe_url} did not reach the LISTEN connection to "
            f"{self._listen_config.host_and_port} within {config.connect_timeout:g} s"
        )
        if config.listen_url is None:
            return NotificationsNotDelivered(
                f"{heard}: if the URL points at a pooler in transaction mode (PgBouncer's "
                "pool_mode = transaction), set listen_url to a direct PostgreSQL URL"
            )
        return NotificationsNotDelivered(
            f"{heard}: listen_url must reach the same PostgreSQL server and database as the "
            "layer's URL, directly rather than through a pooler in transaction mode"
        )

    async def _drop_connection(self) -> None:
        conn, self._conn, self._driver = self._conn, None, None
        if conn is not None:
            try:
                await conn.close()
            except Exception:
                logger.debug("closing the listen connection failed", exc_info=True)

    def _on_notify(self, _connection: Any, _pid: int, topic: str, _payload: str) -> None:
        for wake in tuple(self._wakers.get(topic, ())):
            wake()

    def _on_terminated(self, connection: Any) -> None:
        # Our own close of an old connection also lands here; only the current one matters.
        if self._closed or connection is not self._driver:
            return
        logger.warning("listen connection to %s lost; reconnecting", self._listen_config.host_and_port)
        self._driver = None
        self._start_reconnect()

    def _start_reconnect(self) -> None:
        if not self._closed and (self._reconnect_task is None or self._reconnect_task.done()):
            self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        backoff = Backoff(_RECONNECT_FIRST, _RECONNECT_MOST)
        # Started the moment the connection was lost (see _on_terminated).
        lost_at = time.monotonic()
        while not self._closed:
            try:
                async with self._lock:
                    await self._ensure_connected()
                    if self._wakers:
                        await self._ensure_delivers()
                    for topic in self._wakers:
                        await self._driver.add_listener(topic, self._on_notify)
            except Exception as exc:
                delay = backoff.next()
                logger.warning(
                    "reconnecting the listen connection failed (%s); retrying in %.1f s", exc, delay
                )
                await asyncio.sleep(delay)
                continue
            down = time.monotonic() - lost_at
            if self._held and down > self._liveness_grace:
                # Other processes' cleanup may have found the lock absent on two passes.
                logger.warning(
                    "listen connection to %s restored after %.1f s down, longer than half the "
                    "cleanup interval: other processes may have taken this one for dead and "
                    "removed its group memberships and queued messages",
                    self._listen_config.host_and_port,
                    down,
                )
            else:
                logger.info(
                    "listen connection to %s restored after %.1f s down",
                    self._listen_config.host_and_port,
                    down,
                )
            self._close_when_unused()
            break
        # Whatever was sent while nobody listened is in the table: every reader looks again.
        for wakers in tuple(self._wakers.values()):
            for wake in tuple(wakers):
                wake()
