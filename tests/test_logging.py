"""What the layer logs on the channel_layer_pg loggers, on which one, and what it never logs."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

import channel_layer_pg
from channel_layer_pg import ChannelFull, DatabaseUnreachableError, PostgresChannelLayer
from channel_layer_pg.faults import FaultHooks
from tests.conftest import connect
from tests.helpers import TIMEOUT, LayerFactory, Sql

SECRET = "payload-secret-4f1e"
# Capacity drops are counted this long before their summary is logged (10 s in use).
SUMMARY_INTERVAL = 0.2
PASSWORD = "password-secret-9c2d"


class Awaited(logging.Handler):
    """Lets a test wait, with a timeout, for a record whose message contains some text."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self._loop = asyncio.get_running_loop()
        self._expected: dict[str, asyncio.Event] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for text, seen in self._expected.items():
            if text in message:
                self._loop.call_soon_threadsafe(seen.set)

    def expect(self, text: str) -> Callable[[], Awaitable[None]]:
        """Start watching for ``text`` now; the returned coroutine function waits for it."""
        seen = self._expected.setdefault(text, asyncio.Event())
        return lambda: asyncio.wait_for(seen.wait(), TIMEOUT)


@pytest.fixture
async def logged(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Awaited]:
    caplog.set_level(logging.DEBUG, logger="channel_layer_pg")
    handler = Awaited()
    logger = logging.getLogger("channel_layer_pg")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def messages(caplog: pytest.LogCaptureFixture, containing: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if containing in record.getMessage()]


def loggers(caplog: pytest.LogCaptureFixture, containing: str) -> set[str]:
    """The names of the loggers that logged a message containing ``containing``."""
    return {record.name for record in caplog.records if containing in record.getMessage()}


async def expire_everything(layer: PostgresChannelLayer, sql: Sql) -> None:
    """Make every message and membership under the layer's prefix expired, for a cleanup run."""
    for table in ("channel_layer_pg_message", "channel_layer_pg_group_member"):
        await sql(
            f"UPDATE {table} SET expires_at = now() - interval '1 second' WHERE prefix = $1", layer.prefix
        )


async def blocked_by(sql: Sql, blocker: asyncpg.Connection) -> None:
    """Wait until some session waits for a lock ``blocker`` holds."""
    query = "SELECT count(*) AS n FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))"
    pid = blocker.get_server_pid()
    async with asyncio.timeout(TIMEOUT):
        # Polling the server for an observable state, bounded: no event exists for it.
        while not (await sql(query, pid))[0]["n"]:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def kill_listener(layer: PostgresChannelLayer, sql: Sql, logged: Awaited) -> None:
    """Terminate the layer's listen session once a waiting receive opened it; wait for its return."""
    async with asyncio.timeout(TIMEOUT):
        # Polling the server for an observable state, bounded: no event exists for it.
        while not (stats := await layer.stats()).listeners:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    # The session shows before the listener has finished connecting (it checks once that a
    # NOTIFY reaches it); killed then, a receive's retry reconnects it, with nothing to log.
    # A message woken by a NOTIFY proves the listener is up.
    proof = asyncio.create_task(layer.receive("test.listening"))
    await asyncio.sleep(0.05)  # the proof's receive starts waiting; a NOTIFY or its poll delivers
    await layer.send("test.listening", {"type": "proof"})
    await asyncio.wait_for(proof, TIMEOUT)
    restored = logged.expect("restored after")
    await sql("SELECT pg_terminate_backend($1)", stats.listeners[0].pid)
    await restored()


async def test_a_send_refused_for_capacity_is_logged_with_its_channel(
    make_layer: LayerFactory, caplog: pytest.LogCaptureFixture, logged: Awaited
) -> None:
    layer = make_layer(capacity=1)
    await layer.send("test.full", {"type": "fills it"})
    with pytest.raises(ChannelFull):
        await layer.send("test.full", {"type": "refused"})
    (message,) = messages(caplog, "send to 'test.full' refused")
    assert "'test.full'" in message and "capacity of 1" in message
    assert loggers(caplog, "send to 'test.full' refused") == {"channel_layer_pg.capacity"}


async def test_a_flood_of_skipped_members_logs_one_line_then_a_summary_at_close(
    make_layer: LayerFactory, caplog: pytest.LogCaptureFixture, logged: Awaited
) -> None:
    layer = make_layer(capacity=1)
    await layer.group_add("room", "test.stuck")
    await layer.send("test.stuck", {"type": "fills it"})
    for _ in range(20):
        await layer.group_send("room", {"type": "skipped"})
    assert len(messages(caplog, "group_send to 'room' skipped 1 of 1")) == 1
    await layer.close()
    (summary,) = messages(caplog, "capacity drops")
    assert "19 member deliveries skipped by group_send ('room' 19)" in summary


async def test_the_drop_summary_is_logged_when_its_interval_ends(
    make_layer: LayerFactory, logged: Awaited, caplog: pytest.LogCaptureFixture
) -> None:
    layer = make_layer(capacity=1, fault_hooks=FaultHooks(drop_summary_interval=SUMMARY_INTERVAL))
    await layer.send("test.full", {"type": "fills it"})
    summary = logged.expect("capacity drops")
    for _ in range(3):
        with pytest.raises(ChannelFull):
            await layer.send("test.full", {"type": "refused"})
    await summary()
    (message,) = messages(caplog, "capacity drops")
    assert "2 sends refused with ChannelFull ('test.full' 2)" in message


async def test_after_a_quiet_interval_the_next_drop_is_logged_in_full(
    make_layer: LayerFactory, logged: Awaited, caplog: pytest.LogCaptureFixture
) -> None:
    layer = make_layer(capacity=1, fault_hooks=FaultHooks(drop_summary_interval=SUMMARY_INTERVAL))
    await layer.send("test.full", {"type": "fills it"})
    with pytest.raises(ChannelFull):
        await layer.send("test.full", {"type": "logged in full"})
    # With nothing to summarise, the interval's end logs nothing: wait on the drop log itself.
    loop = asyncio.get_running_loop()
    ended = loop.create_future()
    loop.call_later(SUMMARY_INTERVAL, ended.set_result, None)
    await asyncio.wait_for(ended, TIMEOUT)
    with pytest.raises(ChannelFull):
        await layer.send("test.full", {"type": "logged in full again"})
    assert len(messages(caplog, "send to 'test.full' refused")) == 2
    assert not messages(caplog, "capacity drops")


async def test_a_lost_listen_connection_is_logged_with_how_long_it_was_down(
    layer: PostgresChannelLayer, sql: Sql, logged: Awaited, caplog: pytest.LogCaptureFixture
) -> None:
    receiving = asyncio.create_task(layer.receive("test.waiting"))
    try:
        await kill_listener(layer, sql, logged)
    finally:
        receiving.cancel()
        await asyncio.gather(receiving, return_exceptions=True)
    (lost,) = [record for record in caplog.records if "lost; reconnecting" in record.getMessage()]
    assert lost.levelno == logging.WARNING
    (back,) = [record for record in caplog.records if "restored after" in record.getMessage()]
    assert back.levelno == logging.INFO
    assert re.search(r"restored after \d+\.\d s down", back.getMessage())
    assert lost.name == back.name == "channel_layer_pg.listener"


async def test_a_cleanup_run_logs_how_many_rows_it_removed(
    layer: PostgresChannelLayer, sql: Sql, caplog: pytest.LogCaptureFixture, logged: Awaited
) -> None:
    await layer.send("test.expiring", {"type": "x"})
    await layer.send("test.expiring", {"type": "x"})
    await layer.group_add("room", "test.lapsing")
    await expire_everything(layer, sql)
    await layer.delete_expired()
    (message,) = messages(caplog, "cleanup removed")
    # Cleanup covers every prefix: other tests' expired rows may be in the count too.
    found = re.fullmatch(
        r"cleanup removed (\d+) expired messages and (\d+) lapsed group memberships in \d+\.\d{3} s", message
    )
    assert found is not None
    assert int(found[1]) >= 2 and int(found[2]) >= 1
    assert loggers(caplog, "cleanup removed") == {"channel_layer_pg.cleanup"}


async def test_a_slow_statement_is_logged_by_name(
    make_layer: LayerFactory, database_url: str, sql: Sql, caplog: pytest.LogCaptureFixture, logged: Awaited
) -> None:
    layer = make_layer(slow_statement_threshold=0.1)
    await layer.group_add("room", "test.locked")
    blocker = await connect(database_url)
    try:
        async with blocker.transaction():
            await blocker.execute(
                "SELECT 1 FROM channel_layer_pg_group_member WHERE prefix = $1 FOR UPDATE", layer.prefix
            )
            adding = asyncio.create_task(layer.group_add("room", "test.locked"))
            await blocked_by(sql, blocker)
            # The statement is known to be waiting: keeping it waiting makes it slow.
            await asyncio.sleep(0.15)
    finally:
        await blocker.close()
    await asyncio.wait_for(adding, TIMEOUT)
    (message,) = messages(caplog, "slow statement")
    assert re.fullmatch(r"slow statement: statements\.GROUP_ADD took \d+\.\d\d s", message)
    assert loggers(caplog, "slow statement") == {"channel_layer_pg.statements"}


async def test_no_record_holds_a_payload_or_the_password(
    make_layer: LayerFactory,
    database_url: str,
    sql: Sql,
    caplog: pytest.LogCaptureFixture,
    logged: Awaited,
) -> None:
    # The test servers trust local connections, so any password gets in.
    url = make_url(database_url).set(password=PASSWORD).render_as_string(hide_password=False)
    layer = make_layer(url=url, capacity=1, slow_statement_threshold=0.1)
    secret = {"type": "chat", "text": SECRET}
    # Capacity drops: a refused send and a skipped member, then their summary at close.
    await layer.send("test.secret", secret)
    for _ in range(2):
        with pytest.raises(ChannelFull):
            await layer.send("test.secret", secret)
    await layer.group_add("room", "test.secret")
    await layer.group_send("room", secret)
    # A slow send, whose parameters hold the payload.
    blocker = await connect(database_url)
    try:
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE channel_layer_pg_message IN SHARE MODE")
            sending = asyncio.create_task(layer.send("test.slow-secret", secret))
            await blocked_by(sql, blocker)
            await asyncio.sleep(0.15)  # the send is known to be waiting: this makes it slow
    finally:
        await blocker.close()
    await asyncio.wait_for(sending, TIMEOUT)
    assert (await asyncio.wait_for(layer.receive("test.slow-secret"), TIMEOUT))["text"] == SECRET
    # The listen connection lost and restored.
    receiving = asyncio.create_task(layer.receive("test.waiting"))
    try:
        await kill_listener(layer, sql, logged)
    finally:
        receiving.cancel()
        await asyncio.gather(receiving, return_exceptions=True)
    # A cleanup run, and a close.
    await sql(
        "UPDATE channel_layer_pg_message SET expires_at = now() - interval '1 second' WHERE prefix = $1",
        layer.prefix,
    )
    await layer.delete_expired()
    await layer.close()
    # A database that cannot be reached: its errors are retried with a warning.
    unreachable = make_layer(url=f"postgresql://someone:{PASSWORD}@127.0.0.1:1/db")
    with pytest.raises(DatabaseUnreachableError):
        await unreachable.send("test.secret", secret)
    logged_kinds = {
        "refused",
        "skipped",
        "capacity drops",
        "slow statement",
        "restored",
        "cleanup",
        "retrying",
    }
    text = "\n".join(logging.Formatter().format(record) for record in caplog.records)
    assert {kind for kind in logged_kinds if kind in text} == logged_kinds
    assert loggers(caplog, "cannot reach PostgreSQL") == {"channel_layer_pg.pool"}
    assert SECRET not in text
    assert PASSWORD not in text


async def test_quieting_the_cleanup_logger_keeps_the_listener_s_and_capacity_s_records(
    make_layer: LayerFactory, sql: Sql, caplog: pytest.LogCaptureFixture, logged: Awaited
) -> None:
    # Not caplog.set_level: it would raise the level of caplog's own handler too.
    cleanup = logging.getLogger("channel_layer_pg.cleanup")
    cleanup.setLevel(logging.WARNING)
    layer = make_layer(capacity=1)
    receiving = asyncio.create_task(layer.receive("test.waiting"))
    try:
        await layer.send("test.full", {"type": "fills it"})
        with pytest.raises(ChannelFull):
            await layer.send("test.full", {"type": "refused"})
        await layer.group_add("room", "test.lapsing")
        await expire_everything(layer, sql)
        assert await layer.delete_expired() >= 2
        await kill_listener(layer, sql, logged)
    finally:
        cleanup.setLevel(logging.NOTSET)
        receiving.cancel()
        await asyncio.gather(receiving, return_exceptions=True)
    assert not messages(caplog, "cleanup removed")
    assert loggers(caplog, "send to 'test.full' refused") == {"channel_layer_pg.capacity"}
    assert (
        loggers(caplog, "lost; reconnecting")
        == loggers(caplog, "restored after")
        == {"channel_layer_pg.listener"}
    )


def test_every_logger_is_a_child_of_channel_layer_pg_named_in_the_docs() -> None:
    package = Path(channel_layer_pg.__file__).parent
    used = {
        name
        for path in package.rglob("*.py")
        for name in re.findall(r"getLogger\(([^)]*)\)", path.read_text(encoding="utf-8"))
    }
    used.discard('"alembic"')  # the migrate command shows Alembic's own progress
    assert used and all(re.fullmatch(r'"channel_layer_pg\.[a-z]+"', name) for name in used), used
    operations = (package.parent / "docs" / "operations.md").read_text(encoding="utf-8")
    logging_section = operations.split("## Logging", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(channel_layer_pg\.[a-z]+)` \|", logging_section, re.MULTILINE))
    assert {name.strip('"') for name in used} == documented
