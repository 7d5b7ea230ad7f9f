"""Long-lived event loops get connections of their own; loops made for one call share the I/O thread's."""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import threading
import warnings
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest
from asgiref.sync import async_to_sync

from channel_layer_pg import LayerClosedError, PostgresChannelLayer
from channel_layer_pg.loops import DIRECT_AFTER_CALLS
from channel_layer_pg.naming import listener_application_name
from tests.helpers import TIMEOUT, LayerFactory, Sql, receive

T = TypeVar("T")

LAYER_SESSIONS = (
    "FROM pg_stat_activity WHERE application_name LIKE 'channel_layer_pg%' "
    "AND datname = current_database() AND pid <> pg_backend_pid()"
)


class LoopThread:
    """An event loop in a thread of its own that runs until stopped, as a server's does.

    It runs under asyncio.run, so stopping it ends its async generators and closes it the
    way an application's loop ends.
    """

    def __init__(self) -> None:
        self._ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="app-loop")
        self.thread.start()
        if not self._ready.wait(TIMEOUT):
            raise RuntimeError("the loop thread did not start")

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()

    async def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the thread's loop and wait for its result."""
        assert self.loop is not None
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return await asyncio.wait_for(asyncio.wrap_future(future), TIMEOUT)

    async def stop(self) -> None:
        assert self.loop is not None and self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        await asyncio.to_thread(self.thread.join, TIMEOUT)
        assert not self.thread.is_alive()


async def make_served_directly(layer: PostgresChannelLayer, app: LoopThread) -> None:
    """Make as many calls from ``app``'s loop as it takes for the layer to serve it directly."""

    async def calls() -> None:
        for _ in range(DIRECT_AFTER_CALLS):
            await layer.check()

    await app.run(calls())


async def sessions(sql: Sql) -> int:
    (row,) = await sql(f"SELECT count(*) AS n {LAYER_SESSIONS}")
    return int(row["n"])


async def sessions_become(sql: Sql, expected: int) -> None:
    async with asyncio.timeout(TIMEOUT):
        # Polling the server for an observable state, bounded: a closed session leaves
        # pg_stat_activity a moment after the client closed it, and no event says when.
        while await sessions(sql) != expected:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@pytest.fixture
async def app() -> Any:
    app = LoopThread()
    yield app
    if app.thread.is_alive():
        await app.stop()


async def test_the_main_thread_loop_is_served_directly_from_its_first_call(make_layer: LayerFactory) -> None:
    layer = make_layer()
    await layer.check()
    assert layer.direct_loops == 1
    assert not any(thread.name.startswith("channel_layer_pg-") for thread in threading.enumerate())


async def test_a_long_lived_loop_in_another_thread_is_served_directly(
    make_layer: LayerFactory, app: LoopThread
) -> None:
    layer = make_layer()
    await make_served_directly(layer, app)
    assert layer.direct_loops == 0  # so far through the I/O thread
    await app.run(layer.send("test.app-loop", {"type": "from the app loop"}))
    assert layer.direct_loops == 1
    assert await app.run(layer.receive("test.app-loop")) == {"type": "from the app loop"}
    assert layer.direct_loops == 1


async def test_loops_served_directly_wake_each_other_s_receives(
    make_layer: LayerFactory, app: LoopThread
) -> None:
    layer = make_layer()
    await make_served_directly(layer, app)
    own = await layer.new_channel()
    on_app = asyncio.ensure_future(app.run(layer.receive("test.to-app")))
    await layer.send("test.to-app", {"type": "to the app loop"})
    assert await on_app == {"type": "to the app loop"}
    await app.run(layer.send(own, {"type": "to the main loop"}))
    assert await receive(layer, own) == {"type": "to the main loop"}
    assert layer.direct_loops == 2


async def test_the_io_thread_stops_listening_for_a_loop_once_that_loop_is_served_directly(
    make_layer: LayerFactory, app: LoopThread, sql: Sql, prefix: str
) -> None:
    layer = make_layer()
    query = "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN%'"

    async def until_listening(done: Callable[[set[int]], bool]) -> set[int]:
        async with asyncio.timeout(TIMEOUT):
            while True:
                pids = {row["pid"] for row in await sql(query, listener_application_name(prefix))}
                if done(pids):
                    return pids
                # Polling the server for an observable state, bounded: no event exists for it.
                await asyncio.sleep(0.01)

    # A receive that waits, through the I/O thread: its reader LISTENs there.
    waiting = asyncio.ensure_future(app.run(layer.receive("test.moving")))
    (io_thread,) = await until_listening(lambda pids: len(pids) == 1)
    await app.run(layer.send("test.moving", {"type": "through the I/O thread"}))
    assert await waiting == {"type": "through the I/O thread"}

    async def calls() -> None:
        for _ in range(DIRECT_AFTER_CALLS - 2):
            await layer.check()

    await app.run(calls())
    assert layer.direct_loops == 0
    # The first call served directly; the I/O thread's reader has nothing left to linger for.
    waiting = asyncio.ensure_future(app.run(layer.receive("test.moving")))
    await until_listening(lambda pids: len(pids) == 1 and io_thread not in pids)
    assert layer.direct_loops == 1
    await app.run(layer.send("test.moving", {"type": "after the move"}))
    assert await waiting == {"type": "after the move"}


async def test_async_to_sync_loops_never_get_connections_of_their_own(
    make_layer: LayerFactory, sql: Sql
) -> None:
    layer = make_layer(pool_size=2, max_overflow=0, capacity=1000)

    async def many_calls_in_one_sync_call() -> int:
        # More calls than a loop of unknown lifetime makes before it is served directly.
        for n in range(DIRECT_AFTER_CALLS + 10):
            await layer.send("test.sync-view", {"type": "n", "n": n})
        return layer.direct_loops

    def django_view() -> int:
        return async_to_sync(many_calls_in_one_sync_call)()

    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, lambda: async_to_sync(layer.send)("test.sync-view", {"type": "first"}))
    opened = await sessions(sql)
    with ThreadPoolExecutor(max_workers=3) as pool:
        served_directly = await asyncio.wait_for(
            asyncio.gather(*(loop.run_in_executor(pool, django_view) for _ in range(3))), TIMEOUT
        )
    assert served_directly == [0, 0, 0]
    assert await sessions(sql) == opened


async def test_a_loop_that_ends_without_closing_the_layer_closes_its_connections(
    make_layer: LayerFactory, sql: Sql, app: LoopThread, caplog: pytest.LogCaptureFixture
) -> None:
    layer = make_layer()
    await make_served_directly(layer, app)
    before = await sessions(sql)  # the I/O thread's, which served the first calls
    await app.run(layer.send("test.ending", {"type": "x"}))
    assert await app.run(layer.receive("test.ending")) == {"type": "x"}  # LISTENs too
    assert await sessions(sql) > before
    with caplog.at_level(logging.DEBUG, logger="channel_layer_pg"):
        await app.stop()
    assert layer.direct_loops == 0
    assert "ended before the channel layer was closed" in caplog.text
    await sessions_become(sql, before)


async def test_after_a_loop_ended_without_closing_the_layer_a_new_loop_works(
    make_layer: LayerFactory, app: LoopThread
) -> None:
    layer = make_layer()
    await make_served_directly(layer, app)
    await app.run(layer.send("test.first-app", {"type": "first"}))
    await app.stop()
    second = LoopThread()
    try:
        await make_served_directly(layer, second)
        await second.run(layer.send("test.second-app", {"type": "second"}))
        assert layer.direct_loops == 1
        assert await second.run(layer.receive("test.first-app")) == {"type": "first"}
        assert await second.run(layer.receive("test.second-app")) == {"type": "second"}
    finally:
        await second.stop()


async def test_a_loop_closed_outright_is_let_go_and_the_next_loop_works(
    make_layer: LayerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    layer = make_layer()

    def run_and_close_outright() -> None:
        loop = asyncio.new_event_loop()
        try:

            async def calls() -> None:
                for _ in range(DIRECT_AFTER_CALLS + 1):
                    await layer.check()

            loop.run_until_complete(calls())
        finally:
            loop.close()  # no shutdown_asyncgens(): nothing gives the connections back

    await asyncio.to_thread(run_and_close_outright)
    with caplog.at_level(logging.DEBUG, logger="channel_layer_pg"), abandoned_connections_collected():
        await layer.send("test.after-outright", {"type": "x"})
        await asyncio.to_thread(asyncio.run, layer.send("test.after-outright", {"type": "y"}))
        assert await receive(layer, "test.after-outright") == {"type": "x"}
    assert "closed without ending its async generators" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert layer.direct_loops == 1


@contextmanager
def abandoned_connections_collected() -> Iterator[None]:
    """Let the layer drop abandoned connections inside, and collect them before leaving.

    Their loop is closed, so their sockets can only be closed by the collector, and warn as
    they go (ResourceWarning): expected here, and kept out of later tests.
    """
    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    pool_logger = logging.getLogger("sqlalchemy.pool")
    level = pool_logger.level
    pool_logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
            gc.collect()
            gc.collect()  # what the first pass's reports kept alive
    finally:
        sys.unraisablehook = hook
        pool_logger.setLevel(level)


async def test_close_closes_the_backend_of_every_running_loop(
    make_layer: LayerFactory, sql: Sql, app: LoopThread
) -> None:
    layer = make_layer()
    await make_served_directly(layer, app)
    await layer.check()
    waiting = asyncio.ensure_future(app.run(layer.receive("test.closing-app")))
    await app.run(layer.send("test.other", {"type": "x"}))  # pending or not yet begun: either way it ends
    await layer.close()
    with pytest.raises(LayerClosedError):
        await waiting
    assert layer.direct_loops == 0
    await sessions_become(sql, 0)
    with pytest.raises(LayerClosedError):
        await app.run(layer.send("test.closing-app", {"type": "x"}))


async def test_loops_served_directly_from_several_threads_at_once(
    make_layer: LayerFactory,
) -> None:
    layer = make_layer(capacity=1000)
    apps = [LoopThread() for _ in range(4)]
    try:
        await asyncio.gather(*(make_served_directly(layer, app) for app in apps))
        await asyncio.gather(*(app.run(layer.send(f"test.app-{n}", {"n": n})) for n, app in enumerate(apps)))
        assert layer.direct_loops == 4
        got = await asyncio.gather(*(app.run(layer.receive(f"test.app-{n}")) for n, app in enumerate(apps)))
        assert got == [{"n": n} for n in range(4)]
    finally:
        await asyncio.gather(*(app.stop() for app in apps))
    assert layer.direct_loops == 0
