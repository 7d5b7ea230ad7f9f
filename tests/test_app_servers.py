"""Several app servers on one database: independent processes, each with its own layer.

Each test starts three processes of tests/app_server.py on the test database under one
prefix. Each made a process-local channel and joined the group ``room`` with it, and
receives on that channel and on the shared work queue ``test.jobs``; it reports every
arrival to the test over stdout. So what crosses between the processes crosses only
through PostgreSQL, as between the app servers of one deployment.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from channel_layer_pg import PostgresChannelLayer
from tests.app_server import GROUP, JOBS
from tests.helpers import TIMEOUT, LayerFactory, Sql

ROOT = Path(__file__).resolve().parent.parent
SERVERS = 3
STDERR_KEPT = 20_000  # characters of a server's stderr shown when a test fails


@dataclass
class AppServer:
    name: str
    process: asyncio.subprocess.Process
    channel: str = ""
    local: list[dict[str, Any]] = field(default_factory=list)  # arrivals on its own channel, in order
    jobs: list[dict[str, Any]] = field(default_factory=list)  # jobs it took from test.jobs
    done: int = 0  # commands it has completed
    stderr: str = ""
    killed: bool = False
    readers: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def queue(self) -> str:
        """The queue its process-local channel's messages are stored under."""
        return self.channel[: self.channel.index("!") + 1]


class AppServers:
    """Starts the servers, steers them, and waits (bounded) for what they report."""

    def __init__(self, database_url: str, prefix: str) -> None:
        self._env = {**os.environ, "APP_SERVER_URL": database_url, "APP_SERVER_PREFIX": prefix}
        self._news = asyncio.Condition()
        self.servers: list[AppServer] = []

    async def start(self, count: int) -> None:
        for index in range(count):
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.app_server",
                cwd=ROOT,
                env=self._env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            server = AppServer(f"s{index}", process)
            server.readers = [
                asyncio.create_task(self._read_events(server)),
                asyncio.create_task(self._read_stderr(server)),
            ]
            self.servers.append(server)
        # Interpreters starting at once on a busy 2-core machine.
        await self.wait_for(lambda: all(server.channel for server in self.servers), "ready", TIMEOUT * 3)

    async def command(self, server: AppServer, **command: Any) -> None:
        """Have ``server`` run ``command``; returns once it has completed there."""
        target = server.done + 1
        stdin = server.process.stdin
        assert stdin is not None
        stdin.write((json.dumps(command) + "\n").encode())
        await stdin.drain()
        await self.wait_for(lambda: server.done >= target, f"{server.name} to do {command['command']}")

    def kill(self, server: AppServer) -> None:
        server.killed = True
        server.process.kill()

    async def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
        """Wait until ``predicate()`` holds; fail at once if a server dies, with stacks on timeout."""

        def settled() -> bool:
            return predicate() or any(self._died(server) for server in self.servers)

        try:
            async with self._news:
                await asyncio.wait_for(self._news.wait_for(settled), timeout)
        except TimeoutError:
            await self._dump_stacks()
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what}\n{self._report()}"
            ) from None
        if not predicate():
            raise AssertionError(f"a server exited while waiting for {what}\n{self._report()}")

    async def stop(self) -> None:
        """Stop every server still running: close stdin, then SIGKILL if it does not exit."""
        running = [server for server in self.servers if server.process.returncode is None]
        for server in running:
            if server.process.stdin is not None and not server.killed:
                server.process.stdin.close()
        try:
            await asyncio.wait_for(
                asyncio.gather(*(server.process.wait() for server in running)), TIMEOUT * 3
            )
        except TimeoutError:
            await self._dump_stacks()
            raise AssertionError(f"a server did not stop\n{self._report()}") from None
        finally:
            for server in self.servers:
                if server.process.returncode is None:
                    server.process.kill()
                    await server.process.wait()
            for server in self.servers:
                await asyncio.gather(*server.readers, return_exceptions=True)
        failed = [server for server in self.servers if server.process.returncode != 0 and not server.killed]
        if failed:
            raise AssertionError(f"a server exited with an error\n{self._report()}")

    def _died(self, server: AppServer) -> bool:
        return server.process.returncode is not None and not server.killed

    async def _read_events(self, server: AppServer) -> None:
        assert server.process.stdout is not None
        async for line in server.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                # Not one of its events (a library printing?): shown with its stderr.
                server.stderr += f"stdout: {line.decode(errors='replace')}"
                continue
            if event["event"] == "ready":
                server.channel = event["channel"]
            elif event["event"] == "received":
                (server.local if event["on"] == "local" else server.jobs).append(event["message"])
            elif event["event"] == "done":
                server.done += 1
            await self._notify()
        # stdout closed: the process is exiting; waiters should notice once it has.
        await server.process.wait()
        await self._notify()

    async def _read_stderr(self, server: AppServer) -> None:
        assert server.process.stderr is not None
        async for line in server.process.stderr:
            server.stderr = (server.stderr + line.decode(errors="replace"))[-STDERR_KEPT:]
            await self._notify()

    async def _notify(self) -> None:
        async with self._news:
            self._news.notify_all()

    async def _dump_stacks(self) -> None:
        """Have every live server print its threads' and tasks' stacks into its stderr."""
        live = [server for server in self.servers if server.process.returncode is None]
        for server in live:
            server.process.send_signal(signal.SIGUSR1)  # threads (faulthandler)
            server.process.send_signal(signal.SIGUSR2)  # tasks (tests/app_server.py)
        try:
            async with self._news:
                await asyncio.wait_for(
                    self._news.wait_for(lambda: all("Stack for" in server.stderr for server in live)), 2.0
                )
        except TimeoutError:
            pass  # a server too stuck to print its tasks: its thread stacks still show

    def _report(self) -> str:
        return "\n".join(
            f"--- {server.name} (pid {server.process.pid}, exit {server.process.returncode}): "
            f"{len(server.local)} local, {len(server.jobs)} jobs, stderr:\n{server.stderr}"
            for server in self.servers
        )


@pytest.fixture
async def app_servers(database_url: str, prefix: str) -> AsyncIterator[AppServers]:
    servers = AppServers(database_url, prefix)
    try:
        await servers.start(SERVERS)
        yield servers
    finally:
        await servers.stop()


def message(sender: str, seq: int) -> dict[str, Any]:
    return {"type": "test.message", "sender": sender, "seq": seq}


def arrivals(messages: Iterable[dict[str, Any]]) -> dict[str, list[int]]:
    """Sender -> the seqs that arrived from it, in arrival order."""
    by_sender: dict[str, list[int]] = {}
    for received in messages:
        by_sender.setdefault(received["sender"], []).append(received["seq"])
    return by_sender


async def rows_left(sql: Sql, prefix: str) -> dict[str, int]:
    rows = await sql(
        "SELECT queue, count(*) AS n FROM channel_layer_pg_message WHERE prefix = $1 GROUP BY queue",
        prefix,
    )
    return {row["queue"]: row["n"] for row in rows}


async def group_send_all(layer: PostgresChannelLayer, sender: str, seqs: Iterable[int]) -> None:
    for seq in seqs:
        await layer.group_send(GROUP, message(sender, seq))


async def test_each_process_gets_every_direct_message_from_the_others_once_in_order(
    app_servers: AppServers, prefix: str, sql: Sql
) -> None:
    servers = app_servers.servers

    def sends(sender: AppServer) -> list[Any]:
        peers = [server for server in servers if server is not sender]
        return [[peer.channel, message(sender.name, seq)] for seq in range(20) for peer in peers]

    await asyncio.gather(
        *(app_servers.command(server, command="send", sends=sends(server)) for server in servers)
    )
    await app_servers.wait_for(lambda: all(len(server.local) >= 40 for server in servers), "40 each")

    for server in servers:
        others = {peer.name for peer in servers if peer is not server}
        assert arrivals(server.local) == {name: list(range(20)) for name in others}, server.name
    assert await rows_left(sql, prefix) == {}


async def test_group_send_from_any_process_reaches_every_member_once_in_order(
    app_servers: AppServers, make_layer: LayerFactory, prefix: str, sql: Sql
) -> None:
    servers = app_servers.servers
    layer = make_layer(capacity=1000)

    await asyncio.gather(
        group_send_all(layer, "test", range(10)),
        *(
            app_servers.command(
                server, command="group_send", messages=[message(server.name, seq) for seq in range(10)]
            )
            for server in servers
        ),
    )
    await app_servers.wait_for(lambda: all(len(server.local) >= 40 for server in servers), "40 each")

    senders = ["test", *(server.name for server in servers)]
    for server in servers:
        assert arrivals(server.local) == {name: list(range(10)) for name in senders}, server.name
    assert await rows_left(sql, prefix) == {}


async def test_processes_sharing_a_normal_channel_do_each_job_exactly_once(
    app_servers: AppServers, make_layer: LayerFactory, prefix: str, sql: Sql
) -> None:
    servers = app_servers.servers
    layer = make_layer(capacity=1000)

    async def send_jobs() -> None:
        for seq in range(30):
            await layer.send(JOBS, message("test", seq))

    await asyncio.gather(
        send_jobs(),
        *(
            app_servers.command(
                server, command="send", sends=[[JOBS, message(server.name, seq)] for seq in range(10)]
            )
            for server in servers
        ),
    )
    await app_servers.wait_for(lambda: sum(len(server.jobs) for server in servers) >= 60, "60 jobs")

    done = Counter((job["sender"], job["seq"]) for server in servers for job in server.jobs)
    sent = [("test", seq) for seq in range(30)]
    sent += [(server.name, seq) for server in servers for seq in range(10)]
    assert done == Counter(sent)
    assert await rows_left(sql, prefix) == {}


async def test_group_discard_in_one_process_stops_only_its_deliveries(
    app_servers: AppServers, make_layer: LayerFactory, prefix: str, sql: Sql
) -> None:
    leaver, *stayers = app_servers.servers
    layer = make_layer(capacity=1000)
    await layer.group_send(GROUP, message("test", 0))
    await app_servers.wait_for(lambda: all(server.local for server in app_servers.servers), "one each")

    await app_servers.command(leaver, command="group_discard")
    await asyncio.gather(
        group_send_all(layer, "test", range(1, 11)),
        app_servers.command(
            stayers[0], command="group_send", messages=[message(stayers[0].name, seq) for seq in range(10)]
        ),
    )
    # Sent after every group_send returned: a copy stored for the leaver would have a lower
    # id in its queue, and so would arrive before this.
    await layer.send(leaver.channel, message("fence", 0))
    await app_servers.wait_for(
        lambda: len(leaver.local) >= 2 and all(len(server.local) >= 21 for server in stayers), "the sends"
    )

    assert arrivals(leaver.local) == {"test": [0], "fence": [0]}
    for server in stayers:
        assert arrivals(server.local) == {"test": list(range(11)), stayers[0].name: list(range(10))}
    assert await rows_left(sql, prefix) == {}


async def test_a_killed_process_leaves_the_others_working_and_its_messages_expire_unread(
    app_servers: AppServers, make_layer: LayerFactory, prefix: str, sql: Sql
) -> None:
    dead, sender, other = app_servers.servers
    layer = make_layer(capacity=1000)
    app_servers.kill(dead)
    await dead.process.wait()

    async def send_jobs() -> None:
        for seq in range(10):
            await layer.send(JOBS, message("test", seq))

    await asyncio.gather(
        group_send_all(layer, "test", range(10)),
        send_jobs(),
        app_servers.command(
            sender,
            command="send",
            sends=[[peer.channel, message(sender.name, seq)] for seq in range(5) for peer in (dead, other)],
        ),
    )
    await app_servers.command(
        sender, command="group_send", messages=[message(sender.name, seq) for seq in range(5, 10)]
    )
    await app_servers.wait_for(
        lambda: len(sender.local) >= 15 and len(other.local) >= 20 and len(sender.jobs + other.jobs) >= 10,
        "the survivors' messages",
    )

    assert arrivals(sender.local) == {"test": list(range(10)), sender.name: list(range(5, 10))}
    assert arrivals(other.local) == {"test": list(range(10)), sender.name: list(range(10))}
    assert sorted(job["seq"] for job in sender.jobs + other.jobs) == list(range(10))
    # Nobody took the dead process's messages: 5 direct, and 15 group_sends' copies for its
    # member channel, still stored under its queue alone...
    assert await rows_left(sql, prefix) == {dead.queue: 20}
    # ...until they expire and cleanup deletes them.
    await sql(
        "UPDATE channel_layer_pg_message SET expires_at = now() - interval '1 second' WHERE prefix = $1",
        prefix,
    )
    await layer.delete_expired()
    assert await rows_left(sql, prefix) == {}
