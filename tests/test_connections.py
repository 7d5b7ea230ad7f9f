"""Server connections stay bounded however many receivers wait, and a full server is shared."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import RUNTIME_GRANTS, connect
from tests.helpers import TIMEOUT, LayerFactory, Sql


async def count_layer_connections(sql: Sql) -> int:
    (row,) = await sql(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name LIKE 'channel_layer_pg%'"
    )
    return int(row["n"])


async def test_350_waiting_receivers_use_at_most_the_pool_and_one_listener(
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
    assert await count_layer_connections(sql) - before <= 4 + 1


@pytest.fixture
async def three_connection_role_url(database_url: str) -> AsyncIterator[str]:
    """The test database as a role that PostgreSQL lets open at most three connections."""
    role = f"clpg_limited_{uuid.uuid4().hex[:8]}"
    admin = await connect(database_url)
    try:
        await admin.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 3')
        await admin.execute(RUNTIME_GRANTS.format(role=f'"{role}"'))
        yield make_url(database_url).set(username=role, password=None).render_as_string(hide_password=False)
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
        await admin.execute(f'DROP OWNED BY "{role}"')
        await admin.execute(f'DROP ROLE "{role}"')
    finally:
        await admin.close()


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
