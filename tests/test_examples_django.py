"""The Django Channels example: its consumer, routing and sync view, on the test database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.helpers import TIMEOUT

pytest.importorskip("django")
pytest.importorskip("channels")

from channels.testing.http import HttpCommunicator
from channels.testing.websocket import WebsocketCommunicator

ORIGIN = (b"origin", b"http://127.0.0.1:8000")  # the example checks Origin against ALLOWED_HOSTS
HOST = (b"host", b"127.0.0.1:8000")


@pytest.fixture
async def application(database_url: str, prefix: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    """The example's ASGI application, under its own settings but on the test database."""
    import django
    from channels.layers import get_channel_layer
    from django.conf import settings
    from django.test.utils import override_settings

    from examples.django_chat import settings as example

    if not settings.configured:
        settings.configure()
    django.setup()
    monkeypatch.setenv("DJANGO_SETTINGS_MODULE", example.__name__)
    # All but SECRET_KEY: Django refuses to restore an empty one when the override ends.
    values = {
        name: getattr(example, name) for name in dir(example) if name.isupper() and name != "SECRET_KEY"
    }
    layers = {
        "default": {**example.CHANNEL_LAYERS["default"], "CONFIG": {"url": database_url, "prefix": prefix}}
    }
    # Changing CHANNEL_LAYERS makes Channels drop the layers it built before, on entry and exit.
    with override_settings(**{**values, "CHANNEL_LAYERS": layers}):
        from examples.django_chat.asgi import application

        try:
            yield application
        finally:
            # Channels never closes its layers; the test closes the one it built.
            await get_channel_layer().close()


async def join(application: Any, room: str, name: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, f"/ws/{room}?name={name}", headers=[ORIGIN])
    connected, code = await communicator.connect(TIMEOUT)
    assert connected, f"{name} could not join {room!r}: closed with {code}"
    return communicator


async def http(application: Any, method: str, path: str, body: bytes = b"", *headers: Any) -> Any:
    request = HttpCommunicator(application, method, path, body=body, headers=[HOST, *headers])
    response = await request.get_response(TIMEOUT)
    # Django finishes the request (closing its body file) after sending the response.
    await request.wait(TIMEOUT)
    return response


@pytest.fixture
def room() -> str:
    return f"room-{uuid.uuid4().hex[:8]}"


async def test_consumers_in_one_room_hear_each_other(application: Any, room: str) -> None:
    alice, bob = await join(application, room, "Alice"), await join(application, room, "Bob")
    await alice.send_json_to({"text": "hello Bob"})
    assert await bob.receive_json_from(TIMEOUT) == {"text": "hello Bob", "from": "Alice"}
    assert await alice.receive_json_from(TIMEOUT) == {"text": "hello Bob", "from": "Alice"}
    await alice.disconnect(timeout=TIMEOUT)
    await bob.disconnect(timeout=TIMEOUT)


async def test_the_sync_view_broadcasts_to_the_room_under_asgi(application: Any, room: str) -> None:
    alice, bob = await join(application, room, "Alice"), await join(application, room, "Bob")
    form = (b"content-type", b"application/x-www-form-urlencoded")
    response = await http(application, "POST", f"/rooms/{room}/announce", b"text=closing+soon", form)
    assert response["status"] == 204
    for person in (alice, bob):
        assert await person.receive_json_from(TIMEOUT) == {"text": "closing soon", "from": "server"}
        await person.disconnect(timeout=TIMEOUT)


async def test_the_sync_view_broadcasts_from_a_thread_without_an_event_loop(
    application: Any, room: str
) -> None:
    # As under a WSGI server: async_to_sync makes a fresh event loop for the call.
    from django.test import Client

    alice = await join(application, room, "Alice")
    client = Client(HTTP_HOST="127.0.0.1")
    path = f"/rooms/{room}/announce"
    response = await asyncio.to_thread(client.post, path, {"text": "from a thread"})
    assert response.status_code == 204
    assert await alice.receive_json_from(TIMEOUT) == {"text": "from a thread", "from": "server"}
    assert (await asyncio.to_thread(client.post, path, {"text": ""})).status_code == 400
    assert (await asyncio.to_thread(client.get, path)).status_code == 405
    await alice.disconnect(timeout=TIMEOUT)


async def test_serves_the_page_and_refuses_other_origins(application: Any) -> None:
    page = await http(application, "GET", "/")
    assert page["status"] == 200
    assert b"new WebSocket" in page["body"]
    stranger = WebsocketCommunicator(application, "/ws/lobby", headers=[(b"origin", b"https://evil.example")])
    assert await stranger.connect(TIMEOUT) == (False, 1000)
