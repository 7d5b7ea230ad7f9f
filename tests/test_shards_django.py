"""A Django group chat over a ShardedChannelLayer, in two app processes homed on different shards.

Each process (tests/shard_chat_app.py) is the same Django project, whose CHANNEL_LAYERS
spreads the layer over two database URLs, and runs the group-chat consumer of
tests/test_channels_compat.py behind a WebsocketCommunicator. Process-local channels live on
their layer's home shard, which a random process id decides; each process rebuilds its layer
until that id hashes to the shard the test assigns it, so the two consumers' channels and
memberships are on different servers in every run, not in half of them. A chat message then
crosses servers only through group_send's statement on every shard.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from channel_layer_pg import ShardedChannelLayer, migrate
from channel_layer_pg.embedded import embedded_server
from tests.django_project import REPO, new_project
from tests.helpers import TIMEOUT
from tests.test_shards import members_on

pytest.importorskip("django")
pytest.importorskip("channels")


@pytest.fixture
def shard_urls(database_url: str) -> Iterator[list[str]]:
    """The session's server and one of this test's own: two database URLs."""
    with embedded_server() as server:
        migrate(server.url)
        yield [database_url, server.url]


class ChatProcess:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def event(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """Its next report; a process that exits or hangs fails the test, never stalls it."""
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        except TimeoutError:
            raise AssertionError(f"the chat process reported nothing within {timeout} s") from None
        assert line, f"the chat process exited with {await self.process.wait()}; its stderr is above"
        event: dict[str, Any] = json.loads(line)
        return event

    async def say(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"say": text}).encode() + b"\n")
        await self.process.stdin.drain()


@pytest.fixture
async def chat_processes(
    shard_urls: list[str], prefix: str, tmp_path: Path
) -> AsyncIterator[list[ChatProcess]]:
    config = {"shards": shard_urls, "prefix": prefix}
    project = new_project(tmp_path / "project")
    project.write_settings(
        {}, repr({"default": {"BACKEND": "channel_layer_pg.ShardedChannelLayer", "CONFIG": config}})
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "settings",
        "PYTHONPATH": os.pathsep.join([str(project.directory), str(REPO)]),
    }
    env.pop("CHANNEL_LAYER_PG_URL", None)
    # Shard names are computed from the settings alone, as every process computes them.
    names_only = ShardedChannelLayer(shards=shard_urls, prefix=prefix)
    names = names_only.shard_names
    await names_only.close()
    chats = [
        ChatProcess(
            await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "tests.shard_chat_app"),
                cwd=REPO,
                env={**env, "SHARD_CHAT_HOME": name},
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        )
        for name in names
    ]
    try:
        yield chats
    finally:
        for chat in chats:
            assert chat.process.stdin is not None
            chat.process.stdin.close()
        for chat in chats:
            try:
                assert await asyncio.wait_for(chat.process.wait(), TIMEOUT) == 0
            finally:
                if chat.process.returncode is None:
                    chat.process.kill()
                    await chat.process.wait()


async def test_a_group_chat_reaches_both_processes_across_shards(
    chat_processes: list[ChatProcess], shard_urls: list[str], prefix: str
) -> None:
    first, second = chat_processes
    # A cold Django start on a busy 2-core machine takes longer than a message.
    readies = [await chat.event(TIMEOUT * 3) for chat in chat_processes]
    assert [ready["event"] for ready in readies] == ["ready", "ready"]
    homes = [ready["home"] for ready in readies]
    assert len(set(homes)) == 2
    # Each server holds the room membership of exactly the process homed on it.
    for url, ready in zip(shard_urls, readies, strict=True):
        members = await members_on(url, prefix)
        assert len(members) == 1 and members[0].startswith(f"specific.{ready['process_id']}!"), members
    for speaker, text in ((first, "hello from the first"), (second, "hello from the second")):
        await speaker.say(text)
        for chat in chat_processes:
            assert await chat.event() == {"event": "heard", "message": {"text": text}}
