"""Event loops that end under the layer, without close(): it lets go of them quietly.

These tests are synchronous on purpose: they run in the main thread with no event loop of
pytest's, as a script or a sync test suite would, and make and end their own loops.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import threading

import pytest
from asgiref.sync import async_to_sync

from channel_layer_pg import PostgresChannelLayer
from tests.helpers import TIMEOUT


async def use(layer: PostgresChannelLayer) -> None:
    """What a script does with a layer: its own channel in a group, a send, receives."""
    channel = await layer.new_channel()
    await layer.group_add("test.room", channel)
    await layer.group_send("test.room", {"type": "hello"})
    assert await asyncio.wait_for(layer.receive(channel), TIMEOUT) == {"type": "hello"}
    await layer.send("test.normal", {"type": "x"})
    assert await asyncio.wait_for(layer.receive("test.normal"), TIMEOUT) == {"type": "x"}


def assert_quiet(caplog: pytest.LogCaptureFixture, *, debug_lines: int) -> None:
    """Nothing above DEBUG from the layer, asyncio or SQLAlchemy; at most ``debug_lines`` of the layer's."""
    gc.collect()  # asyncio reports a task destroyed while pending only when it is collected
    loud = [r for r in caplog.records if r.levelno > logging.DEBUG]
    assert not loud, [r.getMessage() for r in loud]
    assert "destroyed" not in caplog.text
    ours = [r for r in caplog.records if r.name == "channel_layer_pg" and "event loop" in r.getMessage()]
    assert len(ours) <= debug_lines, [r.getMessage() for r in ours]


@pytest.fixture
def quiet_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    # SQLAlchemy's DEBUG and INFO are its statement echo; its warnings and errors are what count.
    caplog.set_level(logging.WARNING, logger="sqlalchemy")
    caplog.set_level(logging.DEBUG, logger="asyncio")
    caplog.set_level(logging.DEBUG, logger="channel_layer_pg")
    return caplog


def test_async_to_sync_calls_from_a_thread_leave_nothing_to_report(
    database_url: str, prefix: str, quiet_log: pytest.LogCaptureFixture
) -> None:
    layer = PostgresChannelLayer(url=database_url, prefix=prefix)
    failures: list[BaseException] = []

    def sync_code() -> None:
        try:
            channel = async_to_sync(layer.new_channel)()
            async_to_sync(layer.group_add)("test.room", channel)
            async_to_sync(layer.group_send)("test.room", {"type": "hello"})
            assert async_to_sync(layer.receive)(channel) == {"type": "hello"}
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=sync_code)
    thread.start()
    thread.join(TIMEOUT * 3)
    assert not failures
    asyncio.run(layer.close())  # later, from a loop of its own
    assert_quiet(quiet_log, debug_lines=0)


def test_loops_ended_by_asyncio_run_without_close_leave_one_debug_line_each(
    database_url: str, prefix: str, quiet_log: pytest.LogCaptureFixture
) -> None:
    layer = PostgresChannelLayer(url=database_url, prefix=prefix)
    asyncio.run(use(layer))
    asyncio.run(use(layer))
    assert layer.direct_loops == 0
    asyncio.run(layer.close())
    assert_quiet(quiet_log, debug_lines=2)


def test_a_layer_dropped_after_its_loops_ended_leaves_nothing_to_report(
    database_url: str, prefix: str, quiet_log: pytest.LogCaptureFixture
) -> None:
    layer = PostgresChannelLayer(url=database_url, prefix=prefix)
    asyncio.run(use(layer))
    del layer
    assert_quiet(quiet_log, debug_lines=1)


# The sockets of a loop closed outright can only be closed by collecting them: Python warns
# of that (ResourceWarning, shown only in development mode), and nothing short of private
# attributes of asyncio can spare it.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_a_loop_closed_outright_is_let_go_with_one_debug_line(
    database_url: str, prefix: str, quiet_log: pytest.LogCaptureFixture
) -> None:
    layer = PostgresChannelLayer(url=database_url, prefix=prefix)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(use(layer))
    finally:
        loop.close()  # without shutdown_asyncgens(): the layer's tasks are left pending on it
    asyncio.run(layer.close())
    del loop
    assert_quiet(quiet_log, debug_lines=1)
    assert "dropped its connections" in quiet_log.text
