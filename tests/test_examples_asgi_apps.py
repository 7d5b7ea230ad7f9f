"""The Starlette, Quart and framework-free examples, through their ASGI interfaces.

The three speak the same protocol, so one set of tests drives each; the Django example, which
Channels' own test client drives, has a module of its own.
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.asgi import get, leaving_ends_the_membership, lifespan, refused, two_people_chat
from tests.helpers import Sql

AppFactory = Callable[[str, str], Any]


def _factory(module: str, name: str, framework: str | None) -> Any:
    def load() -> AppFactory:
        if framework is not None:
            pytest.importorskip(framework)
        factory: AppFactory = getattr(importlib.import_module(f"examples.{module}"), name)
        return factory

    return pytest.param(load, id=module)


EXAMPLES = [
    _factory("starlette_chat", "create_app", "starlette"),
    _factory("quart_chat", "create_app", "quart"),
    _factory("plain_asgi", "ChatApp", None),
]


@pytest.mark.parametrize("load", EXAMPLES)
async def test_two_app_instances_share_a_room_through_postgres(
    load: Callable[[], AppFactory], database_url: str, prefix: str
) -> None:
    make = load()
    # Two instances, each with a layer of its own: as two worker processes would have.
    first, second = make(database_url, prefix), make(database_url, prefix)
    async with lifespan(first), lifespan(second):
        await two_people_chat(first, second, f"room-{uuid.uuid4().hex[:8]}")


@pytest.mark.parametrize("load", EXAMPLES)
async def test_a_client_that_leaves_is_dropped_from_the_room(
    load: Callable[[], AppFactory], database_url: str, prefix: str, sql: Sql
) -> None:
    app = load()(database_url, prefix)
    async with lifespan(app):
        await leaving_ends_the_membership(app, sql, prefix)


@pytest.mark.parametrize("load", EXAMPLES)
async def test_serves_the_page_and_refuses_bad_room_names(
    load: Callable[[], AppFactory], database_url: str, prefix: str
) -> None:
    app = load()(database_url, prefix)
    async with lifespan(app):
        page = await get(app, "/")
        assert page["status"] == 200
        assert b"new WebSocket" in page["body"]
        assert await refused(app, "/ws/" + "x" * 51) == 1008
