"""Server connections stay bounded however many receivers wait."""

from __future__ import annotations

import asyncio

from tests.helpers import TIMEOUT, LayerFactory, Sql


async def count_connections(sql: Sql) -> int:
    (row,) = await sql(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid()"
    )
    return int(row["n"])


async def test_350_waiting_receivers_use_at_most_the_pool_and_one_listener(
    make_layer: LayerFactory, sql: Sql
) -> None:
    before = await count_connections(sql)
    layer = make_layer(pool_size=4, max_overflow=0, capacity=1000)
    local = [await layer.new_channel() for _ in range(300)]
    normal = [f"test.normal-{n}" for n in range(50)]
    receiving = [asyncio.create_task(layer.receive(channel)) for channel in local + normal]
    for channel in local + normal:
        await layer.send(channel, {"type": "x", "to": channel})
    got = await asyncio.wait_for(asyncio.gather(*receiving), TIMEOUT * 2)
    assert [message["to"] for message in got] == local + normal
    assert await count_connections(sql) - before <= 4 + 1
