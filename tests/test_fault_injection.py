"""Faults forced on a real server: each reaches the caller as a layer error, never the driver's;
nothing stored is lost; a waiting receive completes once the fault clears.

Each test runs in a database of this module's own (with a throwaway role where a setting is
forced), so a held table lock or a read-only setting never touches the shared test database.
Covered elsewhere and not repeated here: a server restart under traffic and killed idle or
LISTEN sessions (test_connection_loss.py), a burst beyond a role's CONNECTION LIMIT
(test_connections.py), a missing schema and an unreachable server (test_database_errors.py).

The disk-full case puts the message table in a tablespace on a 1 MiB tmpfs, then grows it. It
needs root (to mount) and the server's data directory on this machine (to give the mount to
the server's own user), and is skipped where either is missing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from channel_layer_pg import (
    DatabaseFullError,
    DatabaseReadOnlyError,
    DatabaseUnreachableError,
    StatementRejectedError,
    StatementTimeoutError,
    migrate,
)
from channel_layer_pg.faults import FaultHooks
from tests.conftest import connect, runtime_role
from tests.helpers import CLAIMS, TIMEOUT, LayerFactory, receive


async def _admin(url: str, *statements: str) -> None:
    conn = await connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@asynccontextmanager
async def own_database(database_url: str, *, tablespace: str | None = None) -> AsyncIterator[str]:
    """A migrated database of the test's own on the test server; dropped afterwards."""
    name = f"clpg_faults_{uuid.uuid4().hex[:8]}"
    await _admin(database_url, f'CREATE DATABASE "{name}"')
    url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
    try:
        migrate(url)
        if tablespace is not None:
            await _admin(url, f'ALTER TABLE channel_layer_pg_message SET TABLESPACE "{tablespace}"')
        yield url
    finally:
        await _admin(database_url, f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
async def own_url(database_url: str) -> AsyncIterator[str]:
    async with own_database(database_url) as url:
        yield url


class CountClaims(FaultHooks):
    """Counts the claims the layer starts; ``reached(n)`` tells when the n-th has started."""

    def __init__(self) -> None:
        super().__init__()
        self.started = 0
        self._events: dict[int, threading.Event] = {}

    async def before_statement(self, name: str, parameters: Mapping[str, Any]) -> None:
        if name in CLAIMS:
            self.started += 1
            for count, event in self._events.items():
                if self.started >= count:
                    event.set()

    async def reached(self, count: int) -> None:
        event = self._events.setdefault(count, threading.Event())
        if self.started >= count:
            event.set()
        assert await asyncio.to_thread(event.wait, TIMEOUT), f"only {self.started} claims started"


async def stored(url: str, prefix: str) -> int:
    conn = await connect(url)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM channel_layer_pg_message WHERE prefix = $1", prefix)
        )
    finally:
        await conn.close()


def caused_by(exc: BaseException, sqlstate: str) -> None:
    """``exc`` is a layer error caused by the server's error ``sqlstate``, chained under it.

    The server's error comes as asyncpg's, or, for a failed connect, inside SQLAlchemy's.
    """
    assert not isinstance(exc, (asyncpg.PostgresError, DBAPIError))
    seen: BaseException | None = exc.__cause__
    while seen is not None and not isinstance(seen, asyncpg.PostgresError):
        seen = seen.__cause__ or getattr(seen, "orig", None)
    assert isinstance(seen, asyncpg.PostgresError), repr(exc.__cause__)
    assert seen.sqlstate == sqlstate


@pytest.mark.parametrize(("setting", "sqlstate"), [("statement_timeout", "57014"), ("lock_timeout", "55P03")])
async def test_a_lock_held_past_a_timeout_fails_sends_while_a_waiting_receive_waits_it_out(
    own_url: str, make_layer: LayerFactory, caplog: pytest.LogCaptureFixture, setting: str, sqlstate: str
) -> None:
    caplog.set_level(logging.INFO, logger="channel_layer_pg")
    async with runtime_role(own_url) as role_url:
        role = make_url(role_url).username
        await _admin(own_url, f'ALTER ROLE "{role}" SET {setting} = 200')
        claims = CountClaims()
        layer = make_layer(url=role_url, fault_hooks=claims)
        await layer.send("test.held", {"type": "first"})
        await layer.send("test.held", {"type": "second"})
        locker = await connect(own_url)
        try:
            async with locker.transaction():
                # SHARE blocks every write (sends and claims) and no read.
                await locker.execute("LOCK TABLE channel_layer_pg_message IN SHARE MODE")
                receiving = asyncio.create_task(layer.receive("test.held"))
                # The inline claim, then the reader's, then its retries: each cancelled server-side.
                await claims.reached(4)
                assert not receiving.done(), receiving
                with pytest.raises(StatementTimeoutError, match=f"{setting}") as caught:
                    await layer.send("test.held", {"type": "refused"})
                caused_by(caught.value, sqlstate)
                # Each cancelled claim rolled back: both messages are still in the table.
                assert await stored(own_url, layer.prefix) == 2
        finally:
            await locker.close()
        assert await asyncio.wait_for(receiving, TIMEOUT) == {"type": "first"}
        assert await receive(layer, "test.held") == {"type": "second"}
    failures = [r for r in caplog.records if "receiving from" in r.message and "failed" in r.message]
    assert len(failures) == 1, "a state is logged once, not at every retry"
    assert any("works again" in r.message for r in caplog.records)


async def test_a_read_only_database_fails_sends_and_ping_and_a_waiting_receive_outlasts_it(
    own_url: str, make_layer: LayerFactory
) -> None:
    async with runtime_role(own_url) as role_url:
        role = make_url(role_url).username
        writer = make_layer(url=own_url)
        await writer.send("test.ro", {"type": "stored before"})
        await _admin(own_url, f'ALTER ROLE "{role}" SET default_transaction_read_only = on')
        claims = CountClaims()
        layer = make_layer(url=role_url, fault_hooks=claims)
        with pytest.raises(DatabaseReadOnlyError, match="default_transaction_read_only") as caught:
            await layer.ping()
        caused_by(caught.value, "25006")
        with pytest.raises(DatabaseReadOnlyError, match="primary") as caught:
            await layer.send("test.ro", {"type": "refused"})
        caused_by(caught.value, "25006")
        stats = await layer.stats()
        assert (stats.writable, stats.in_recovery) == (False, False)
        assert "accepts writes: NO" in stats.format()
        receiving = asyncio.create_task(layer.receive("test.ro"))
        await claims.reached(3)
        assert not receiving.done(), receiving
        assert await stored(own_url, layer.prefix) == 1
        await _admin(own_url, f'ALTER ROLE "{role}" RESET default_transaction_read_only')
        # Sessions keep the setting they began with: the layer replaces each that refused.
        assert await asyncio.wait_for(receiving, TIMEOUT) == {"type": "stored before"}
        await layer.send("test.ro", {"type": "after"})
        assert await receive(layer, "test.ro") == {"type": "after"}
        await layer.ping()


async def blocked_claims(locker: asyncpg.Connection) -> int:
    """The server process of the one statement waiting for a lock in this database."""
    query = "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
    async with asyncio.timeout(TIMEOUT):
        # Polling the server for an observable state, bounded: no event exists for it.
        while not (pids := await locker.fetch(query)):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    (row,) = pids
    return int(row["pid"])


async def test_a_claim_whose_server_process_is_terminated_mid_statement_loses_nothing(
    own_url: str, make_layer: LayerFactory
) -> None:
    claims = CountClaims()
    layer = make_layer(url=own_url, fault_hooks=claims)
    await layer.send("test.killed", {"type": "first"})
    locker = await connect(own_url)
    try:
        async with locker.transaction():
            await locker.execute("LOCK TABLE channel_layer_pg_message IN SHARE MODE")
            receiving = asyncio.create_task(layer.receive("test.killed"))
            await claims.reached(1)
            blocked = await blocked_claims(locker)
            await locker.execute("SELECT pg_terminate_backend($1)", blocked)
            # The terminated claim rolled back; the reader met a lost connection and retries.
            await claims.reached(2)
            assert not receiving.done(), receiving
    finally:
        await locker.close()
    assert await asyncio.wait_for(receiving, TIMEOUT) == {"type": "first"}


async def test_a_role_out_of_connection_slots_gets_a_layer_error_and_recovers(
    own_url: str, make_layer: LayerFactory
) -> None:
    async with runtime_role(own_url, attributes="CONNECTION LIMIT 2") as role_url:
        hogs = [await connect(role_url) for _ in range(2)]
        try:
            layer = make_layer(url=role_url)
            with pytest.raises(DatabaseUnreachableError, match="too many connections") as caught:
                await layer.send("test.slots", {"type": "refused"})
            caused_by(caught.value, "53300")
        finally:
            for hog in hogs:
                await hog.close()
        await layer.send("test.slots", {"type": "after"})
        assert await receive(layer, "test.slots") == {"type": "after"}
        await layer.ping()


@pytest.fixture
def tiny_disk(database_url: str) -> Iterator[str]:
    """A 1 MiB tmpfs owned by the server's user: a directory for a tablespace that fills."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    data_directory = asyncio.run(_show_data_directory(database_url))
    if data_directory is None or not os.path.isdir(data_directory):
        pytest.skip("the server's data directory is not on this machine")
    mount = tempfile.mkdtemp(prefix="clpg_tiny_disk_")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mount], check=False).returncode:
        os.rmdir(mount)
        pytest.skip("this machine does not let root mount a tmpfs")
    try:
        owner = os.stat(data_directory)
        os.chown(mount, owner.st_uid, owner.st_gid)
        os.chmod(mount, 0o700)
        yield mount
    finally:
        subprocess.run(["umount", "-l", mount], check=False)
        os.rmdir(mount)


async def _show_data_directory(url: str) -> str | None:
    conn = await connect(url)
    try:
        return str(await conn.fetchval("SHOW data_directory"))
    except asyncpg.InsufficientPrivilegeError:
        return None
    finally:
        await conn.close()


async def test_a_full_disk_fails_sends_with_a_layer_error_and_keeps_what_was_stored(
    database_url: str, tiny_disk: str, make_layer: LayerFactory
) -> None:
    tablespace = f"clpg_tiny_{uuid.uuid4().hex[:8]}"
    await _admin(database_url, f"CREATE TABLESPACE \"{tablespace}\" LOCATION '{tiny_disk}'")
    try:
        async with own_database(database_url, tablespace=tablespace) as url:
            layer = make_layer(url=url, capacity=1000)
            sent = 0
            with pytest.raises(DatabaseFullError, match="disk is full") as caught:
                # Random bytes: compression cannot shrink them, so 1 MiB holds about 20.
                for sent in range(200):
                    await layer.send("test.full", {"type": "big", "n": sent, "blob": os.urandom(50_000)})
            caused_by(caught.value, "53100")
            assert isinstance(caught.value, StatementRejectedError)
            assert 0 < sent < 200
            assert await stored(url, layer.prefix) == sent
            # Claims delete, which needs no new space: every stored message is received.
            got = [(await receive(layer, "test.full"))["n"] for _ in range(sent)]
            assert got == list(range(sent))
            remount = ["mount", "-o", "remount,size=64m", tiny_disk]
            await asyncio.to_thread(subprocess.run, remount, check=True)
            await layer.send("test.full", {"type": "after"})
            assert await receive(layer, "test.full") == {"type": "after"}
            await layer.close()  # before its database goes
    finally:
        await _admin(database_url, f'DROP TABLESPACE "{tablespace}"')
