"""Driving an ASGI application in-process, as a server would: lifespan, WebSocket, HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from asgiref.testing import ApplicationCommunicator

# The modules themselves, not channels.testing: the tests need no live server.
from channels.testing.http import HttpCommunicator
from channels.testing.websocket import WebsocketCommunicator

from tests.helpers import TIMEOUT, Sql

# Keys uvicorn and hypercorn put in every scope, which some frameworks (Quart) rely on.
SERVER_KEYS = {
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "root_path": "",
    "server": ("127.0.0.1", 8000),
    "client": ("127.0.0.1", 50000),
}


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """Run the app's startup before the block and its shutdown after it."""
    server = ApplicationCommunicator(app, {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}})
    await server.send_input({"type": "lifespan.startup"})
    started = await server.receive_output(TIMEOUT)
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"the app did not start: {started.get('message')}")
    try:
        yield
    finally:
        await server.send_input({"type": "lifespan.shutdown"})
        assert (await server.receive_output(TIMEOUT))["type"] == "lifespan.shutdown.complete"
        await server.wait(TIMEOUT)


class Client(WebsocketCommunicator):  # type: ignore[misc]  # channels has no type hints
    def __init__(self, app: Any, path: str) -> None:
        super().__init__(app, path)
        # The app starts on the first send, so the scope may still gain keys here.
        self.scope.update(SERVER_KEYS, scheme="ws")

    async def receive_json(self) -> Any:
        event = await self.receive_output(TIMEOUT)
        assert event["type"] == "websocket.send", event
        # Not receive_json_from: it rejects frames that carry both keys, one of them None (Quart).
        return json.loads(event.get("text") or event["bytes"])

    async def leave(self) -> None:
        """Disconnect, and wait until the app has finished with this socket."""
        await self.disconnect(timeout=TIMEOUT)


async def join(app: Any, room: str, name: str) -> Client:
    """A client in ``room`` under ``name``, connected (failing the test if refused)."""
    client = Client(app, f"/ws/{room}?name={name}")
    connected, code = await client.connect(TIMEOUT)
    assert connected, f"{name} could not join {room!r}: closed with {code}"
    return client


async def refused(app: Any, path: str) -> int | None:
    """The close code with which the app refuses a WebSocket at ``path``; None if it accepts."""
    client = Client(app, path)
    connected, code = await client.connect(TIMEOUT)
    await client.leave()
    return None if connected else int(code)


async def get(app: Any, path: str) -> dict[str, Any]:
    """GET ``path``: a dict with status, headers and body."""
    request = HttpCommunicator(app, "GET", path)
    request.scope.update(SERVER_KEYS, scheme="http")
    response: dict[str, Any] = await request.get_response(TIMEOUT)
    await request.wait(TIMEOUT)  # the app may still be finishing the request
    return response


async def two_people_chat(first: Any, second: Any, room: str) -> None:
    """Alice on ``first`` and Bob on ``second`` each see what the other says in ``room``."""
    alice = await join(first, room, "Alice")
    bob = await join(second, room, "Bob")
    try:
        await alice.send_json_to({"text": "hello Bob"})
        assert await bob.receive_json() == {"text": "hello Bob", "from": "Alice"}
        assert await alice.receive_json() == {"text": "hello Bob", "from": "Alice"}
        await bob.send_json_to({"text": "hi Alice"})
        assert await alice.receive_json() == {"text": "hi Alice", "from": "Bob"}
        assert await bob.receive_json() == {"text": "hi Alice", "from": "Bob"}
    finally:
        await alice.leave()
        await bob.leave()


async def leaving_ends_the_membership(app: Any, sql: Sql, prefix: str) -> None:
    """A client that disconnects is no longer in its room's group."""
    alice, bob = await join(app, "hall", "Alice"), await join(app, "hall", "Bob")
    assert len(await _members(sql, prefix, "chat.hall")) == 2
    await bob.leave()
    assert len(await _members(sql, prefix, "chat.hall")) == 1
    # The room still works for whoever stayed.
    await alice.send_json_to({"text": "anyone?"})
    assert await alice.receive_json() == {"text": "anyone?", "from": "Alice"}
    await alice.leave()
    assert await _members(sql, prefix, "chat.hall") == []


async def _members(sql: Sql, prefix: str, group: str) -> list[Any]:
    query = "SELECT channel FROM channel_layer_pg_group_member WHERE prefix = $1 AND group_name = $2"
    return await sql(query, prefix, group)
