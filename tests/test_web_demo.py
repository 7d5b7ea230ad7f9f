"""The web demo: its app in-process, then the real command with two uvicorn workers."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import urllib.request
import uuid
from typing import Any

import pytest

from tests.asgi import get, join, lifespan, refused
from tests.helpers import TIMEOUT
from tests.web_demo import embedded_server, free_port, interrupt, next_event, running, running_demo

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
websockets_client = pytest.importorskip("websockets.asyncio.client")

from channel_layer_pg.cli import main  # noqa: E402
from channel_layer_pg.cli.demo.web.app import create_app  # noqa: E402


@pytest.fixture
def room() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


async def test_members_learn_who_is_in_the_room_across_app_instances(
    database_url: str, prefix: str, room: str
) -> None:
    first, second = create_app(database_url, prefix), create_app(database_url, prefix)
    async with lifespan(first), lifespan(second):
        alice = await join(first, room, "Alice")
        assert (await alice.receive_json())["type"] == "welcome"
        assert (await alice.receive_json())["members"] == [{"name": "Alice", "pid": _pid(), "you": True}]

        bob = await join(second, room, "Bob")
        assert (await bob.receive_json())["type"] == "welcome"
        seen_by_alice = await alice.receive_json()
        assert (seen_by_alice["event"], seen_by_alice["name"]) == ("join", "Bob")
        assert [member["name"] for member in seen_by_alice["members"]] == ["Alice", "Bob"]
        # Bob hears of himself and of Alice (her answer to his announcement), in either order.
        seen_by_bob = [await bob.receive_json(), await bob.receive_json()]
        assert {event["event"] for event in seen_by_bob} == {"join", "here"}
        assert max(len(event["members"]) for event in seen_by_bob) == 2

        await bob.leave()
        left = await alice.receive_json()
        assert (left["event"], left["name"], left["members"]) == (
            "leave",
            "Bob",
            [{"name": "Alice", "pid": _pid(), "you": True}],
        )
        await alice.leave()


async def test_a_message_reaches_the_room_with_sender_worker_and_time(
    database_url: str, prefix: str, room: str
) -> None:
    first, second = create_app(database_url, prefix), create_app(database_url, prefix)
    async with lifespan(first), lifespan(second):
        alice, bob = await join(first, room, "Alice"), await join(second, room, "Bob")
        await alice.send_json_to({"text": "  hello Bob  "})
        for person, mine in ((alice, True), (bob, False)):
            message = await _next_message(person)
            assert message["text"] == "hello Bob"
            assert (message["from"], message["pid"], message["you"]) == ("Alice", _pid(), mine)
            assert isinstance(message["time"], float)
        await alice.leave()
        await bob.leave()


async def test_serves_the_page_and_its_files_and_refuses_bad_room_names(
    database_url: str, prefix: str
) -> None:
    app = create_app(database_url, prefix)
    async with lifespan(app):
        page = await get(app, "/")
        assert page["status"] == 200
        assert b'src="/static/demo.js"' in page["body"]
        for name in ("demo.js", "demo.css"):
            assert (await get(app, f"/static/{name}"))["status"] == 200
        assert await refused(app, "/ws/not%20a%20room") == 1008


async def test_the_command_serves_from_two_workers_and_messages_cross_between_them(
    database_url: str, room: str
) -> None:
    async with running_demo(f"--url={database_url}", "--workers=2") as demo:
        assert len(set(demo.pids)) == 2, demo.output
        page = await asyncio.to_thread(_fetch, demo.page)
        assert "channel_layer_pg" in page

        async with websockets_client.connect(
            f"{demo.ws}/ws/{room}?name=Alice", open_timeout=TIMEOUT
        ) as alice:
            alice_pid = (await next_event(alice, "welcome"))["pid"]
            bob, bob_pid = await _connect_to_another_worker(f"{demo.ws}/ws/{room}?name=Bob", alice_pid)
            async with bob:
                assert {alice_pid, bob_pid} == set(demo.pids)
                await alice.send('{"text": "across processes"}')
                await bob.send('{"text": "and back"}')
                # Each sees both, each sender's in its order; how the two interleave is a race.
                for person in (alice, bob):
                    seen = [await next_event(person, "message") for _ in range(2)]
                    assert sorted((event["from"], event["pid"], event["text"]) for event in seen) == [
                        ("Alice", alice_pid, "across processes"),
                        ("Bob", bob_pid, "and back"),
                    ]
        # Stopped by `kill` rather than Ctrl-C, it still takes its workers with it.
        assert await interrupt(demo, signal.SIGTERM) == 0, "\n".join(demo.output)
    assert not any(running(pid) for pid in demo.pids)


async def test_ctrl_c_stops_the_workers_and_the_embedded_postgres(room: str) -> None:
    async with running_demo("--workers=2") as demo:
        socket_directory, postmaster = embedded_server(demo.output)
        assert running(postmaster)
        # Someone still chatting when Ctrl-C comes: the worker closes the socket and leaves the room.
        member = await websockets_client.connect(f"{demo.ws}/ws/{room}?name=Alice", open_timeout=TIMEOUT)
        await next_event(member, "welcome")
        assert await interrupt(demo) == 0, "\n".join(demo.output)
    await asyncio.wait_for(member.wait_closed(), TIMEOUT)
    assert member.close_code == 1012  # "service restart": uvicorn's graceful shutdown
    assert "stopping the embedded PostgreSQL" in demo.output
    assert not [line for line in demo.output if "Traceback" in line or "ERROR" in line], demo.output
    assert not any(running(pid) for pid in [*demo.pids, postmaster])
    assert not await asyncio.to_thread(socket_directory.exists)


async def test_refuses_a_database_without_the_schema_naming_the_migrate_command(
    empty_database_url: str,
) -> None:
    command = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "channel_layer_pg",
        "demo",
        "--web",
        f"--url={empty_database_url}",
        f"--port={free_port()}",
        stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )
    _, error = await asyncio.wait_for(command.communicate(), TIMEOUT)
    assert command.returncode == 1
    assert "channel_layer_pg migrate" in error.decode()


def test_web_options_need_web(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["demo", "--workers=3"])
    assert exit_.value.code == 2
    assert "--workers applies to the web demo only: add --web" in capsys.readouterr().err


async def _connect_to_another_worker(url: str, other_pid: int) -> tuple[Any, int]:
    """A connection served by a worker other than ``other_pid``; the kernel picks, so try a few."""
    for _ in range(30):
        websocket = await websockets_client.connect(url, open_timeout=TIMEOUT)
        pid = (await next_event(websocket, "welcome"))["pid"]
        if pid != other_pid:
            return websocket, pid
        await websocket.close()
    raise AssertionError(f"30 connections in a row were all served by worker {other_pid}")


async def _next_message(client: Any) -> dict[str, Any]:
    while True:
        event = await client.receive_json()
        if event["type"] == "message":
            return dict(event)


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        return str(response.read().decode())


def _pid() -> int:
    return os.getpid()
