"""Chat with Starlette: a WebSocket endpoint, the layer opened and closed in the app's lifespan.

Run::

    export CHANNEL_LAYER_PG_URL=postgresql://user@127.0.0.1:5432/app
    channel-layer-pg migrate
    uvicorn examples.starlette_chat:app --workers 2
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from channel_layer_pg import PostgresChannelLayer

PAGE = Path(__file__).with_name("chat.html").read_text(encoding="utf-8")
# ASCII only and short: group names allow [a-zA-Z0-9-_.] and fewer than 100 characters.
ROOM = re.compile(r"[A-Za-z0-9_-]{1,50}")


def create_app(url: str | None = None, prefix: str = "starlette_chat") -> Starlette:
    """The chat app on the database at ``url`` (by default ``$CHANNEL_LAYER_PG_URL``)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Checks the database and schema at startup; closes the layer's connections at shutdown.
        async with PostgresChannelLayer(url=url, prefix=prefix) as layer:
            app.state.layer = layer
            yield

    routes = [Route("/", page), WebSocketRoute("/ws/{room}", chat)]
    return Starlette(routes=routes, lifespan=lifespan)


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


async def chat(websocket: WebSocket) -> None:
    room = websocket.path_params["room"]
    if not ROOM.fullmatch(room):
        await websocket.close(code=1008)
        return
    layer: PostgresChannelLayer = websocket.app.state.layer
    name = websocket.query_params.get("name", "anonymous")[:40]
    group = f"chat.{room}"
    channel = await layer.new_channel()
    # Join before accepting: once the client sees the socket open, it is in the room.
    await layer.group_add(group, channel)
    await websocket.accept()
    relay = asyncio.create_task(relay_to_client(layer, channel, websocket))
    try:
        async for frame in websocket.iter_text():
            text = text_of(frame)
            if text:
                await layer.group_send(group, {"type": "chat.message", "text": text, "from": name})
    finally:
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
        await layer.group_discard(group, channel)


async def relay_to_client(layer: PostgresChannelLayer, channel: str, websocket: WebSocket) -> None:
    while True:
        message = await layer.receive(channel)
        await websocket.send_json({"text": message["text"], "from": message["from"]})


def text_of(frame: str) -> str | None:
    """The text of a ``{"text": ...}`` frame, at most 1000 characters; None for anything else."""
    try:
        text = json.loads(frame)["text"]
    except (ValueError, KeyError, TypeError):
        return None
    return text[:1000] if isinstance(text, str) else None


app = create_app()
