"""The framework-free ASGI example, through its ASGI interface, on the test database."""

from __future__ import annotations

import uuid

import pytest

from channel_layer_pg.examples.plain_asgi import ChatApp
from tests.asgi import get, leaving_ends_the_membership, lifespan, refused, two_people_chat
from tests.helpers import Sql


async def test_two_app_instances_share_a_room_through_postgres(database_url: str, prefix: str) -> None:
    # Two instances, each with a layer of its own: as two worker processes would have.
    first, second = ChatApp(database_url, prefix), ChatApp(database_url, prefix)
    async with lifespan(first), lifespan(second):
        await two_people_chat(first, second, f"room-{uuid.uuid4().hex[:8]}")


async def test_startup_fails_with_the_reason_when_the_schema_is_missing(empty_database_url: str) -> None:
    app = ChatApp(empty_database_url)
    with pytest.raises(RuntimeError, match="channel_layer_pg migrate"):
        async with lifespan(app):
            pass


async def test_a_client_that_leaves_is_dropped_from_the_room(
    database_url: str, prefix: str, sql: Sql
) -> None:
    app = ChatApp(database_url, prefix)
    async with lifespan(app):
        await leaving_ends_the_membership(app, sql, prefix)


async def test_serves_the_page_and_refuses_bad_paths(database_url: str, prefix: str) -> None:
    app = ChatApp(database_url, prefix)
    async with lifespan(app):
        page = await get(app, "/")
        assert page["status"] == 200
        assert b"new WebSocket" in page["body"]
        assert (await get(app, "/elsewhere"))["status"] == 404
        assert await refused(app, "/ws/no%20spaces") == 1008
