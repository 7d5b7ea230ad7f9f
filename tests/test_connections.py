"""Server connections stay bounded however many receivers wait, and a full server is shared."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.engine import make_url

from channel_layer_pg.faults import FaultHooks
from channel_layer_pg.naming import listener_application_name
from tests.conftest import runtime_role
from tests.helpers import TIMEOUT, LayerFactory, Sql, receive


async def count_layer_connections(sql: Sql) -> int:
    (row,) = await sql(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name LIKE 'channel_layer_pg%'"
    )
    return int(row["n"])


async def test_350_waiting_receivers_use_at_most_the_pool_and_two_listeners(
    make_layer: LayerFactory, sql: Sql
) -> None:
    before = await count_layer_connections(sql)
    layer = make_layer(pool_size=4, max_overflow=0, capacity=1000)
    local = [await layer.new_channel() for _ in range(300)]
    normal = [f"test.normal-{n}" for n in range(50)]
    receiving = [asyncio.create_task(layer.receive(channel)) for channel in local + normal]
    for channel in local + normal:
        await layer.send(channel, {"type": "x", "to": channel})
    got = await asyncio.wait_for(asyncio.gather(*receiving), TIMEOUT * 2)
    assert [message["to"] for message in got] == local + normal
    # The pool, the loop's listener, and the I/O thread's listener that holds the liveness lock.
    assert await count_layer_connections(sql) - before <= 4 + 2


# The application_name of the layer's pooled sessions (a listener's adds its prefix).
POOLED = "channel_layer_pg"


async def sessions_of(sql: Sql, role: str, application_name: str) -> int:
    """The sessions ``role`` holds open whose application_name is LIKE ``application_name``."""
    (row,) = await sql(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
        "AND usename = $1 AND application_name LIKE $2",
        role,
        application_name,
    )
    return int(row["n"])


async def until_sessions(sql: Sql, role: str, application_name: str, count: int) -> None:
    async with asyncio.timeout(TIMEOUT):
        # Polling the server for an observable state, bounded: no event exists for it.
        while await sessions_of(sql, role, application_name) != count:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_idle_pooled_connections_are_closed_after_the_idle_timeout(
    make_layer: LayerFactory, sql: Sql, runtime_role_url: str
) -> None:
    role = make_url(runtime_role_url).username
    assert role is not None
    layer = make_layer(url=runtime_role_url, pool_size=3, max_overflow=2, pool_idle_timeout=0.5)
    started = time.monotonic()
    # Concurrent statements open every connection the pool allows; it keeps pool_size.
    await asyncio.gather(*(layer.group_add("room", f"test.member-{n}") for n in range(10)))
    await until_sessions(sql, role, POOLED, 3)
    await until_sessions(sql, role, POOLED, 0)
    assert time.monotonic() - started >= 0.5
    # The next statement opens a connection again.
    await layer.send("test.after-idle", {"type": "after"})
    assert await receive(layer, "test.after-idle") == {"type": "after"}


async def test_the_listen_connection_is_closed_once_nothing_was_listened_to_for_the_idle_timeout(
    make_layer: LayerFactory, sql: Sql, runtime_role_url: str, prefix: str
) -> None:
    role = make_url(runtime_role_url).username
    assert role is not None
    listener = listener_application_name(prefix)
    # Readers stop listening 30 s after their last receive; shortened to keep this quick.
    layer = make_layer(url=runtime_role_url, pool_idle_timeout=0.5, fault_hooks=FaultHooks(reader_linger=0.1))
    for text in ("before", "after"):
        receiving = asyncio.create_task(layer.receive("test.listened"))
        await until_sessions(sql, role, listener, 1)
        await layer.send("test.listened", {"type": text})
        assert await asyncio.wait_for(receiving, TIMEOUT) == {"type": text}
        # The readers stop listening, then the connection goes; the next receive reopens it.
        await until_sessions(sql, role, listener, 0)


@pytest.fixture
async def three_connection_role_url(database_url: str) -> AsyncIterator[str]:
    """The test database as a role that PostgreSQL lets open at most three connections."""
    async with runtime_role(database_url, attributes="CONNECTION LIMIT 3") as url:
        yield url


async def test_a_burst_larger_than_the_server_allows_shares_the_connections_it_has(
    make_layer: LayerFactory, three_connection_role_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The default pool would open 20; the server refuses the fourth. Calls wait their turn
    # for the open ones instead of retrying connections on a timer.
    caplog.set_level(logging.WARNING, logger="channel_layer_pg")
    layer = make_layer(url=three_connection_role_url, capacity=1000)
    receiver = make_layer(capacity=1000)
    channel = await receiver.new_channel()
    await receiver.group_add("crowd", channel)
    calls = [layer.send("test.burst", {"type": "n", "n": n}) for n in range(200)]
    calls += [layer.group_send("crowd", {"type": "g", "n": n}) for n in range(50)]
    outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), TIMEOUT * 3)
    assert [outcome for outcome in outcomes if outcome is not None] == []
    got = [(await asyncio.wait_for(receiver.receive(channel), TIMEOUT))["n"] for _ in range(50)]
    assert sorted(got) == list(range(50))
    assert [r.message for r in caplog.records if "retrying" in r.message] == []
    assert any("waiting for one of the" in r.message for r in caplog.records)
