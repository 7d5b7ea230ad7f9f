"""What only the framework-free example does itself: start-up checks and routing.

The behaviour it shares with the Starlette and Quart examples is in test_examples_asgi_apps.py.
"""

from __future__ import annotations

import pytest

from examples.plain_asgi import ChatApp
from tests.asgi import get, lifespan, refused


async def test_startup_fails_with_the_reason_when_the_schema_is_missing(empty_database_url: str) -> None:
    app = ChatApp(empty_database_url)
    with pytest.raises(RuntimeError, match="channel_layer_pg migrate"):
        async with lifespan(app):
            pass


async def test_serves_the_page_and_refuses_bad_paths(database_url: str, prefix: str) -> None:
    app = ChatApp(database_url, prefix)
    async with lifespan(app):
        page = await get(app, "/")
        assert page["status"] == 200
        assert b"new WebSocket" in page["body"]
        assert (await get(app, "/elsewhere"))["status"] == 404
        assert await refused(app, "/ws/no%20spaces") == 1008
