"""close(), async with, and use of a closed layer."""

from __future__ import annotations

import asyncio

import pytest

from channel_layer_pg import LayerClosedError, PostgresChannelLayer
from tests.helpers import TIMEOUT, LayerFactory


async def test_close_ends_pending_receives_with_a_clear_error(make_layer: LayerFactory) -> None:
    layer = make_layer()
    receiving = asyncio.create_task(layer.receive("test.pending"))
    local = asyncio.create_task(layer.receive(await layer.new_channel()))
    await asyncio.sleep(0)
    await layer.close()
    for task in (receiving, local):
        with pytest.raises(LayerClosedError):
            await asyncio.wait_for(task, TIMEOUT)


async def test_close_is_idempotent(make_layer: LayerFactory) -> None:
    layer = make_layer()
    await layer.send("test.close", {"type": "x"})
    await layer.close()
    await layer.close()


async def test_a_closed_layer_says_so(make_layer: LayerFactory) -> None:
    layer = make_layer()
    await layer.close()
    with pytest.raises(LayerClosedError, match="closed"):
        await layer.send("test.closed", {"type": "x"})
    with pytest.raises(LayerClosedError, match="closed"):
        await layer.receive("test.closed")


async def test_async_with_closes_the_layer(database_url: str, prefix: str) -> None:
    async with PostgresChannelLayer(url=database_url, prefix=prefix) as layer:
        await layer.send("test.with", {"type": "x"})
        assert await layer.receive("test.with") == {"type": "x"}
    with pytest.raises(LayerClosedError):
        await layer.send("test.with", {"type": "x"})


async def test_close_leaves_no_task_running(make_layer: LayerFactory) -> None:
    before = asyncio.all_tasks()
    layer = make_layer()
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "x"})
    await layer.receive(channel)
    await layer.send("test.tasks", {"type": "x"})
    await layer.receive("test.tasks")
    await layer.close()
    assert asyncio.all_tasks() == before


async def test_repr_hides_the_password(database_url: str) -> None:
    layer = PostgresChannelLayer(url="postgresql://user:s3cret@db.example:5433/app")
    assert "s3cret" not in repr(layer)
    assert "db.example:5433" in repr(layer)


async def test_group_discard_after_close_is_a_no_op(make_layer: LayerFactory) -> None:
    layer = make_layer()
    await layer.group_add("room", "test.member")
    await layer.close()
    await layer.group_discard("room", "test.member")  # a consumer disconnecting after shutdown


async def test_close_waits_for_a_failing_connection_attempt_only_until_it_fails(prefix: str) -> None:
    # A server that accepts connections and never answers: each attempt fails after
    # connect_timeout. close() waits for connections in use, up to a close_timeout made
    # longer here than the test's bound: it must stop waiting once the attempt has failed.
    accepted = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        accepted.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    layer = PostgresChannelLayer(
        url=f"postgresql://postgres@127.0.0.1:{port}/x", prefix=prefix, connect_timeout=1, close_timeout=60
    )
    sending = asyncio.create_task(layer.send("test.silent", {"type": "x"}))
    try:
        await asyncio.wait_for(accepted.wait(), TIMEOUT)
        await asyncio.wait_for(layer.close(), TIMEOUT)
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
