"""The layer is shared by every event loop in the process, as Django's sync code uses it."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from asgiref.sync import async_to_sync

from channel_layer_pg import LayerClosedError, PostgresChannelLayer
from tests.helpers import TIMEOUT, CancelAfterClaim, CancelAtHandOver, LayerFactory, Sql, receive


async def test_async_to_sync_group_send_from_threads_reaches_a_receiver(layer: PostgresChannelLayer) -> None:
    channel = await layer.new_channel()
    await layer.group_add("room", channel)

    def view(n: int) -> None:
        # What a Django view does: each call may get a fresh event loop in a worker thread.
        async_to_sync(layer.group_send)("room", {"type": "from.view", "n": n})

    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=4) as pool:
        await asyncio.wait_for(
            asyncio.gather(*(loop.run_in_executor(pool, view, n) for n in range(20))), TIMEOUT
        )
    got = sorted([(await receive(layer, channel))["n"] for _ in range(20)])
    assert got == list(range(20))


async def test_a_receive_on_this_loop_is_woken_by_a_send_from_another_loop(
    layer: PostgresChannelLayer,
) -> None:
    receiving = asyncio.create_task(layer.receive("test.cross-loop"))
    await asyncio.sleep(0)

    def send_on_a_new_loop() -> None:
        asyncio.run(layer.send("test.cross-loop", {"type": "other loop"}))

    await asyncio.get_running_loop().run_in_executor(None, send_on_a_new_loop)
    assert await asyncio.wait_for(receiving, TIMEOUT) == {"type": "other loop"}


def test_sync_code_with_no_running_loop_can_send_and_receive(database_url: str, prefix: str) -> None:
    layer = PostgresChannelLayer(url=database_url, prefix=prefix)
    async_to_sync(layer.send)("test.sync", {"type": "sync"})
    assert async_to_sync(layer.receive)("test.sync") == {"type": "sync"}
    async_to_sync(layer.close)()


async def test_a_receive_cancelled_on_a_worker_loop_keeps_its_message(make_layer: LayerFactory) -> None:
    # Handed over on the layer's I/O thread; the cancel reaches the worker's loop from there.
    faults = CancelAtHandOver()
    layer = make_layer(fault_hooks=faults)

    def worker() -> bool:
        async def receive_and_get_cancelled() -> bool:
            task = faults.target = asyncio.create_task(layer.receive("test.worker-cancel"))
            await asyncio.gather(task, return_exceptions=True)
            return task.cancelled()

        return asyncio.run(receive_and_get_cancelled())

    outcome = asyncio.get_running_loop().run_in_executor(None, worker)
    assert await asyncio.to_thread(faults.waiting.wait, TIMEOUT)
    await layer.send("test.worker-cancel", {"type": "first"})
    await layer.send("test.worker-cancel", {"type": "second"})
    was_cancelled = await asyncio.wait_for(outcome, TIMEOUT)
    assert was_cancelled
    assert await receive(layer, "test.worker-cancel") == {"type": "first"}
    assert await receive(layer, "test.worker-cancel") == {"type": "second"}


async def test_a_receive_cancelled_on_a_worker_loop_as_its_own_claim_returns_keeps_the_message(
    make_layer: LayerFactory,
) -> None:
    # The claim runs on the layer's I/O thread; the cancel reaches the worker's loop from there.
    faults = CancelAfterClaim()
    layer = make_layer(fault_hooks=faults)
    await layer.send("test.worker-claim-cancel", {"type": "first"})
    await layer.send("test.worker-claim-cancel", {"type": "second"})

    def worker() -> bool:
        async def receive_and_get_cancelled() -> bool:
            task = faults.target = asyncio.create_task(layer.receive("test.worker-claim-cancel"))
            await asyncio.gather(task, return_exceptions=True)
            return task.cancelled()

        return asyncio.run(receive_and_get_cancelled())

    was_cancelled = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(None, worker), TIMEOUT)
    assert was_cancelled
    assert await receive(layer, "test.worker-claim-cancel") == {"type": "first"}
    assert await receive(layer, "test.worker-claim-cancel") == {"type": "second"}


async def test_sync_calls_share_one_pool_instead_of_a_connection_each(
    make_layer: LayerFactory, sql: Sql
) -> None:
    layer = make_layer(pool_size=2, max_overflow=0, capacity=1000)

    def django_view(calls: int) -> None:
        for n in range(calls):
            async_to_sync(layer.send)("test.sync-calls", {"type": "n", "n": n})

    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, django_view, 1)
    opened = await layer_sessions(sql)
    await asyncio.wait_for(loop.run_in_executor(None, django_view, 50), TIMEOUT)
    assert await layer_sessions(sql) == opened
    assert [(await receive(layer, "test.sync-calls"))["n"] for _ in range(51)] == [0, *range(50)]


async def test_close_stops_the_io_thread(make_layer: LayerFactory) -> None:
    layer = make_layer()
    await asyncio.get_running_loop().run_in_executor(
        None, lambda: async_to_sync(layer.send)("test.thread", {"type": "x"})
    )
    assert any(thread.name.startswith("channel_layer_pg-") for thread in threading.enumerate())
    await layer.close()
    assert not any(thread.name.startswith("channel_layer_pg-") for thread in threading.enumerate())


async def layer_sessions(sql: Sql) -> int:
    (row,) = await sql(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name LIKE 'channel_layer_pg%' "
        "AND datname = current_database()"
    )
    return int(row["n"])


async def test_a_receive_cancelled_twice_on_a_worker_loop_keeps_its_message(make_layer: LayerFactory) -> None:
    faults = CancelAtHandOver(times=2)
    layer = make_layer(fault_hooks=faults)

    def worker() -> bool:
        async def receive_and_get_cancelled_twice() -> bool:
            task = faults.target = asyncio.create_task(layer.receive("test.double-cancel"))
            await asyncio.gather(task, return_exceptions=True)
            return task.cancelled()

        return asyncio.run(receive_and_get_cancelled_twice())

    outcome = asyncio.get_running_loop().run_in_executor(None, worker)
    assert await asyncio.to_thread(faults.waiting.wait, TIMEOUT)
    await layer.send("test.double-cancel", {"type": "first"})
    assert await asyncio.wait_for(outcome, TIMEOUT)
    assert await receive(layer, "test.double-cancel") == {"type": "first"}


async def test_close_ends_sync_callers_in_flight_with_layer_closed(make_layer: LayerFactory) -> None:
    layer = make_layer()
    started = threading.Event()

    def django_view() -> BaseException | None:
        started.set()
        try:
            async_to_sync(layer.receive)("test.closing")
        except BaseException as exc:
            return exc
        return None

    outcome = asyncio.get_running_loop().run_in_executor(None, django_view)
    await asyncio.to_thread(started.wait, TIMEOUT)
    await asyncio.sleep(0.2)  # let the receive reach the I/O thread: a closed layer refuses it either way
    await layer.close()
    assert isinstance(await asyncio.wait_for(outcome, TIMEOUT), LayerClosedError)
    with pytest.raises(LayerClosedError):
        await asyncio.to_thread(async_to_sync(layer.send), "test.closing", {"type": "x"})
