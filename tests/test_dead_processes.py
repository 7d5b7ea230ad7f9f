"""A process that dies without close() loses its memberships and queue; a live one keeps them."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from channel_layer_pg import PostgresChannelLayer
from channel_layer_pg.faults import FaultHooks
from channel_layer_pg.naming import liveness_lock_key, non_local_name
from tests.conftest import runtime_role
from tests.helpers import TIMEOUT, LayerFactory, Sql, receive

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
