"""The layer runs with DML on its two tables and LISTEN: no DDL, no ownership, no superuser."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.conftest import connect
from tests.helpers import TIMEOUT, LayerFactory, receive


async def test_every_operation_works_with_only_run_time_privileges(
    make_layer: LayerFactory, runtime_role_url: str
) -> None:
    layer = make_layer(url=runtime_role_url)
    await layer.check()
    local = await layer.new_channel()
    await layer.group_add("room", local)
    await layer.group_add("room", local)  # the upsert path needs UPDATE
    await layer.group_send("room", {"type": "group"})
    assert await receive(layer, local) == {"type": "group"}
    waiting = asyncio.create_task(layer.receive("test.rt"))
    await layer.send("test.rt", {"type": "direct"})
    assert await asyncio.wait_for(waiting, TIMEOUT) == {"type": "direct"}
    await layer.group_discard("room", local)
    await layer.delete_expired()
    await layer.flush()


async def test_the_run_time_role_cannot_change_the_schema(runtime_role_url: str) -> None:
    conn = await connect(runtime_role_url)
    try:
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.execute("ALTER TABLE channel_layer_pg_message ADD COLUMN x int")
    finally:
        await conn.close()
