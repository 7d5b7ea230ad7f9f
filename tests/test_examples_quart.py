"""The Quart example, through its ASGI interface, on the test database."""

from __future__ import annotations

import uuid

import pytest

from tests.asgi import get, leaving_ends_the_membership, lifespan, refused, two_people_chat
from tests.helpers import Sql

pytest.importorskip("quart")

from channel_layer_pg.examples.quart_chat import create_app


async def test_two_app_instances_share_a_room_through_postgres(database_url: str, prefix: str) -> None:
    # Two instances, each with a layer of its own: as two worker processes would have.
    first, second = create_app(database_url, prefix), create_app(database_url, prefix)
    async with lifespan(first), lifespan(second):
        await two_people_chat(first, second, f"room-{uuid.uuid4().hex[:8]}")


async def test_a_client_that_leaves_is_dropped_from_the_room(
    database_url: str, prefix: str, sql: Sql
) -> None:
    app = create_app(database_url, prefix)
    async with lifespan(app):
        await leaving_ends_the_membership(app, sql, prefix)


async def test_serves_the_page_and_refuses_bad_room_names(database_url: str, prefix: str) -> None:
    app = create_app(database_url, prefix)
    async with lifespan(app):
        page = await get(app, "/")
        assert page["status"] == 200
        assert b"new WebSocket" in page["body"]
        assert await refused(app, "/ws/" + "x" * 51) == 1008
