"""A process that dies without close() loses its memberships and queue; a live one keeps them."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from channel_layer_pg import DatabaseUnreachableError, PostgresChannelLayer
from channel_layer_pg.faults import FaultHooks
from channel_layer_pg.naming import liveness_lock_key, non_local_name
from tests.conftest import runtime_role
from tests.helpers import TIMEOUT, LayerFactory, Sql, receive
from tests.test_isolation import schema_of_its_own

ROOT = Path(__file__).resolve().parent.parent

# Short enough for a test, long enough for a listener to reconnect between two passes.
INTERVAL = 2.0


class CleanupPasses(FaultHooks):
    """Counts the cleanup's passes (each begins by reading which processes are alive).

    ``before_pass``, if set, runs as a pass begins, before it reads the locks.
    """

    def __init__(self) -> None:
        super().__init__(cleanup_interval=INTERVAL)
        self.count = 0
        self._changed = asyncio.Condition()
        self.before_pass: Callable[[], Awaitable[None]] | None = None

    async def before_statement(self, name: str, parameters: Mapping[str, Any]) -> None:
        if name == "statements.LIVE_PROCESSES" and self.before_pass is not None:
            before, self.before_pass = self.before_pass, None
            await before()

    async def after_statement(self, name: str, parameters: Mapping[str, Any], result: Any) -> None:
        if name == "statements.LIVE_PROCESSES":
            async with self._changed:
                self.count += 1
                self._changed.notify_all()

    async def wait(self, passes: int) -> None:
        """Wait until ``passes`` more passes have begun after this call."""
        async with self._changed:
            target = self.count + passes
            await asyncio.wait_for(self._changed.wait_for(lambda: self.count >= target), TIMEOUT * 2)


async def lock_holders(sql: Sql, process_id: str) -> list[int]:
    """The backends that hold ``process_id``'s liveness lock (key layout: naming.liveness_lock_key)."""
    rows = await sql(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND granted"
        " AND ((classid::int8 << 32) | objid::int8) = $1",
        liveness_lock_key(process_id),
    )
    return [row["pid"] for row in rows]


async def wait_until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + TIMEOUT * 3
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.05)


async def memberships(sql: Sql, prefix: str, channels: list[str]) -> int:
    rows = await sql(
        "SELECT count(*) AS n FROM channel_layer_pg_group_member WHERE prefix = $1 AND channel = ANY($2)",
        prefix,
        channels,
    )
    return int(rows[0]["n"])


async def queued(sql: Sql, prefix: str, queue: str) -> int:
    rows = await sql(
        "SELECT count(*) AS n FROM channel_layer_pg_message WHERE prefix = $1 AND queue = $2", prefix, queue
    )
    return int(rows[0]["n"])


@pytest.fixture
async def member_process(
    make_layer: LayerFactory, database_url: str, prefix: str
) -> AsyncIterator[Callable[[PostgresChannelLayer], Awaitable[tuple[asyncio.subprocess.Process, list[str]]]]]:
    """Starts a process that puts two channels of its own in group "g"; killed afterwards."""
    started: list[asyncio.subprocess.Process] = []

    async def start(layer: PostgresChannelLayer) -> tuple[asyncio.subprocess.Process, list[str]]:
        reply = await layer.new_channel()
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.member_worker", database_url, prefix, "g", reply, cwd=ROOT
        )
        started.append(child)
        joined = await asyncio.wait_for(layer.receive(reply), TIMEOUT * 3)
        return child, joined["channels"]

    yield start
    for child in started:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def test_killed_process_loses_its_memberships_and_queue_within_two_passes(
    make_layer: LayerFactory, member_process: Any, prefix: str, sql: Sql
) -> None:
    passes = CleanupPasses()
    live = make_layer(fault_hooks=passes)
    mine = await live.new_channel()
    await live.group_add("g", mine)
    child, (waiting, idle) = await member_process(live)
    await live.send(idle, {"type": "queued"})  # nobody receives on it: it stays in the queue
    dead_queue = non_local_name(idle)
    assert await memberships(sql, prefix, [waiting, idle]) == 2
    assert await queued(sql, prefix, dead_queue) == 1

    child.send_signal(signal.SIGKILL)
    await child.wait()

    async def cleaned() -> bool:
        members_left = await memberships(sql, prefix, [waiting, idle])
        return members_left == 0 and await queued(sql, prefix, dead_queue) == 0

    await wait_until(cleaned, "the killed process's memberships and queued messages are removed")
    assert await memberships(sql, prefix, [mine]) == 1

    await live.group_send("g", {"type": "after"})
    assert await queued(sql, prefix, dead_queue) == 0
    assert (await receive(live, mine))["type"] == "after"


async def test_live_process_keeps_its_memberships_while_its_listener_reconnects(
    make_layer: LayerFactory, database_url: str, prefix: str, sql: Sql
) -> None:
    passes = CleanupPasses()
    cleaner = make_layer(fault_hooks=passes)
    await cleaner.group_add("g", await cleaner.new_channel())
    # A role of its own, so the test can hold its listener's reconnect back for a while.
    async with runtime_role(database_url) as member_url:
        role = make_url(member_url).username
        member = make_layer(url=member_url)
        channel = await member.new_channel()
        await member.group_add("g", channel)
        (holder,) = await lock_holders(sql, member.client_prefix)

        async def cut_the_listener() -> None:
            await sql(f'ALTER ROLE "{role}" NOLOGIN')
            await sql("SELECT pg_terminate_backend($1)", holder)

            async def released() -> bool:
                return not await lock_holders(sql, member.client_prefix)

            # The pass that comes next finds the member without its lock.
            await wait_until(released, "the terminated LISTEN session has released its lock")

        passes.before_pass = cut_the_listener
        await passes.wait(1)
        await sql(f'ALTER ROLE "{role}" LOGIN')

        async def relocked() -> bool:
            return bool(await lock_holders(sql, member.client_prefix))

        await wait_until(relocked, "the member's listener has reconnected and taken its lock again")
        await passes.wait(3)
        assert await memberships(sql, prefix, [channel]) == 1
        await cleaner.group_send("g", {"type": "still here"})
        assert (await receive(member, channel))["type"] == "still here"
        await member.close()


async def test_a_new_channel_holds_the_liveness_lock_before_it_is_used(
    make_layer: LayerFactory, sql: Sql
) -> None:
    # Others may send to it and put it in groups from the moment new_channel() returns.
    layer = make_layer()
    await layer.new_channel()
    assert await lock_holders(sql, layer.client_prefix)


async def test_a_layer_receiving_a_backlog_on_its_own_channel_keeps_its_queue(
    make_layer: LayerFactory, sql: Sql, prefix: str
) -> None:
    # Every receive finds a message at once, so its reader never LISTENs.
    member = make_layer()
    sender = make_layer()
    reply = await member.new_channel()
    for n in range(5):
        await sender.send(reply, {"type": "part", "n": n})
    assert (await receive(member, reply))["n"] == 0
    passes = CleanupPasses()
    cleaner = make_layer(fault_hooks=passes)
    await cleaner.group_add("other", await cleaner.new_channel())
    await passes.wait(3)
    assert await queued(sql, prefix, non_local_name(reply)) == 4
    assert [(await receive(member, reply))["n"] for _ in range(4)] == [1, 2, 3, 4]


async def test_the_dead_process_cleanup_works_in_the_schema_option(
    make_layer: LayerFactory, sql: Sql, prefix: str, caplog: pytest.LogCaptureFixture, database_url: str
) -> None:
    async with schema_of_its_own(database_url) as (schema, url):
        # What a process killed with SIGKILL left: nobody holds lock p0123456789ab.
        dead = "specific.p0123456789ab!x"
        await sql(
            f'INSERT INTO "{schema}".channel_layer_pg_group_member VALUES ($1, $2, $3, $4)',
            prefix,
            "g",
            dead,
            datetime.now(UTC) + timedelta(days=1),
        )
        await sql(
            f'INSERT INTO "{schema}".channel_layer_pg_message (prefix, queue, channel, expires_at, payload)'
            " VALUES ($1, $2, $3, $4, $5)",
            prefix,
            non_local_name(dead),
            dead,
            datetime.now(UTC) + timedelta(days=1),
            b"\x80",
        )
        passes = CleanupPasses()
        cleaner = make_layer(url=url, schema=schema, fault_hooks=passes)
        await cleaner.group_add("g", await cleaner.new_channel())
        with caplog.at_level(logging.WARNING, logger="channel_layer_pg.cleanup"):
            await passes.wait(3)
        left = await sql(
            f'SELECT (SELECT count(*) FROM "{schema}".channel_layer_pg_group_member WHERE channel = $1)'
            f' + (SELECT count(*) FROM "{schema}".channel_layer_pg_message WHERE channel = $1) AS n',
            dead,
        )
        await cleaner.close()
        assert not [r.getMessage() for r in caplog.records if r.name == "channel_layer_pg.cleanup"]
        assert left[0]["n"] == 0


def test_a_live_layer_keeps_its_memberships_after_the_loop_that_added_them_ends(
    database_url: str, prefix: str
) -> None:
    # A script's or a management command's asyncio.run() in the main thread: that loop is
    # served directly, and its connections end with it; the layer is not closed.
    member = PostgresChannelLayer(url=database_url, prefix=prefix)
    channel = asyncio.run(member.new_channel())
    asyncio.run(member.group_add("g", channel))

    async def another_process_cleans() -> None:
        passes = CleanupPasses()
        cleaner = PostgresChannelLayer(url=database_url, prefix=prefix, fault_hooks=passes)
        await cleaner.group_add("g", await cleaner.new_channel())
        await passes.wait(3)
        await cleaner.group_send("g", {"type": "still a member"})
        await cleaner.close()

    async def receive_and_close() -> dict[str, Any]:
        try:
            return await receive(member, channel)
        finally:
            await member.close()

    asyncio.run(another_process_cleans())
    assert asyncio.run(receive_and_close())["type"] == "still a member"


class FailsOnce(CleanupPasses):
    """CleanupPasses whose first run of ``statement`` fails."""

    def __init__(self, statement: str) -> None:
        super().__init__()
        self._failing: str | None = statement

    async def before_statement(self, name: str, parameters: Mapping[str, Any]) -> None:
        await super().before_statement(name, parameters)
        if name == self._failing:
            self._failing = None
            raise DatabaseUnreachableError("injected failure")


async def test_a_dead_process_whose_removal_failed_is_removed_on_the_next_pass(
    make_layer: LayerFactory, sql: Sql, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    dead = "specific.p0123456789ac!x"
    await sql(
        "INSERT INTO channel_layer_pg_group_member VALUES ($1, $2, $3, $4)",
        prefix,
        "g",
        dead,
        datetime.now(UTC) + timedelta(days=1),
    )
    passes = FailsOnce("statements.DELETE_DEAD_MEMBERS")
    cleaner = make_layer(fault_hooks=passes)
    await cleaner.group_add("g", await cleaner.new_channel())

    async def removed() -> bool:
        return await memberships(sql, prefix, [dead]) == 0

    with caplog.at_level(logging.WARNING, logger="channel_layer_pg.cleanup"):
        await wait_until(removed, "the dead process's membership is removed")
    # First found on pass 1 (a full scan), dead on pass 2 (which failed), removed on pass 3,
    # far before the next full scan.
    assert passes.count <= 4
    assert any("removing dead processes' rows failed" in r.getMessage() for r in caplog.records)


def test_a_layer_collected_without_close_lets_its_lock_go(database_url: str, prefix: str) -> None:
    # Nobody can receive on its channels any more: it is as good as a dead process.
    layer = PostgresChannelLayer(url=database_url, prefix=prefix)
    process_id = layer.client_prefix
    thread_name = f"channel_layer_pg-{process_id}"
    asyncio.run(layer.new_channel())

    async def holders() -> list[int]:
        conn = await asyncpg.connect(database_url)
        try:
            return await lock_holders(lambda *args: conn.fetch(*args), process_id)
        finally:
            await conn.close()

    assert asyncio.run(holders())
    del layer
    gc.collect()

    async def released() -> None:
        async def gone() -> bool:
            threads = [thread.name for thread in threading.enumerate()]
            return thread_name not in threads and not await holders()

        await wait_until(gone, "the collected layer's I/O thread and liveness lock are gone")

    asyncio.run(released())


async def test_a_listener_back_after_half_a_cleanup_interval_warns(
    make_layer: LayerFactory, database_url: str, sql: Sql, caplog: pytest.LogCaptureFixture
) -> None:
    async with runtime_role(database_url) as member_url:
        role = make_url(member_url).username
        member = make_layer(url=member_url, fault_hooks=FaultHooks(cleanup_interval=INTERVAL))
        await member.new_channel()
        (holder,) = await lock_holders(sql, member.client_prefix)
        with caplog.at_level(logging.INFO, logger="channel_layer_pg.listener"):
            await sql(f'ALTER ROLE "{role}" NOLOGIN')
            await sql("SELECT pg_terminate_backend($1)", holder)
            await asyncio.sleep(INTERVAL)  # the outage to act out: longer than half an interval
            await sql(f'ALTER ROLE "{role}" LOGIN')

            async def relocked() -> bool:
                return bool(await lock_holders(sql, member.client_prefix))

            await wait_until(relocked, "the member's listener has reconnected and taken its lock again")

            async def warned() -> bool:
                return any("longer than half the cleanup interval" in r.getMessage() for r in caplog.records)

            await wait_until(warned, "the listener has warned of its long reconnect")
        await member.close()
