"""The web demo's ASGI app: the chat page, its static files, and a WebSocket per member."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from ....layer import PostgresChannelLayer
from .room import Member

PREFIX = "web_demo"
STATIC = Path(__file__).with_name("static")
# ASCII only and short: group names allow [a-zA-Z0-9-_.] and fewer than 100 characters.
ROOM = re.compile(r"[A-Za-z0-9_-]{1,40}")
READY = "worker pid {pid} ready"


def create_app(url: str | None = None, prefix: str = PREFIX) -> Starlette:
    """The demo on the database at ``url`` (by default ``$CHANNEL_LAYER_PG_URL``)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with PostgresChannelLayer(url=url, prefix=prefix) as layer:
            app.state.layer = layer
            # The demo command waits for one such line per worker before it says "open ...". One
            # write with its newline: the workers share a pipe, and smaller writes would interleave.
            print(f"  {READY.format(pid=os.getpid())}\n", end="", flush=True)
            yield

    routes = [
        Route("/", index),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        WebSocketRoute("/ws/{room}", chat),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


async def index(request: Request) -> FileResponse:
    return FileResponse(STATIC / "index.html")


async def chat(websocket: WebSocket) -> None:
    room = websocket.path_params["room"]
    if not ROOM.fullmatch(room):
        await websocket.close(code=1008, reason="a room name is 1-40 letters, digits, '-' or '_'")
        return
    name = " ".join(websocket.query_params.get("name", "").split())[:30] or "anonymous"
    await Member(websocket.app.state.layer, websocket, room, name).run()


app = create_app()
