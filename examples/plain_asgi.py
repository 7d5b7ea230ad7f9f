"""Chat with no framework at all: one ASGI callable, the layer used directly.

Run::

    export CHANNEL_LAYER_PG_URL=postgresql://user@127.0.0.1:5432/app
    channel-layer-pg migrate
    uvicorn examples.plain_asgi:app --workers 2
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from channel_layer_pg import PostgresChannelLayer

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

PAGE = Path(__file__).with_name("chat.html").read_bytes()
# ASCII only and short: group names allow [a-zA-Z0-9-_.] and fewer than 100 characters.
CHAT_PATH = re.compile(r"/ws/([A-Za-z0-9_-]{1,50})")


class ChatApp:
    """The page over HTTP, the chat over WebSocket, the layer opened by the lifespan protocol."""

    def __init__(self, url: str | None = None, prefix: str = "plain_chat") -> None:
        # The database is ``url``, or $CHANNEL_LAYER_PG_URL when None.
        self.url = url
        self.prefix = prefix
        self.layer: PostgresChannelLayer | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        elif scope["type"] == "http":
            await self.page(scope, send)
        elif scope["type"] == "websocket":
            await self.chat(scope, receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        layer = PostgresChannelLayer(url=self.url, prefix=self.prefix)
        try:
            await layer.check()  # the database answers and has the schema
        except Exception as exc:
            await layer.close()
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        self.layer = layer
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        self.layer = None
        await layer.close()
        await send({"type": "lifespan.shutdown.complete"})

    async def page(self, scope: Scope, send: Send) -> None:
        found = scope["path"] == "/"
        body = PAGE if found else b"not found\n"
        content_type = b"text/html; charset=utf-8" if found else b"text/plain"
        await send(
            {
                "type": "http.response.start",
                "status": 200 if found else 404,
                "headers": [(b"content-type", content_type)],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = CHAT_PATH.fullmatch(scope["path"])
        await receive()  # websocket.connect
        layer = self.layer
        if route is None or layer is None:
            await send({"type": "websocket.close", "code": 1008})
            return
        group = f"chat.{route[1]}"
        name = parse_qs(scope["query_string"].decode()).get("name", ["anonymous"])[0][:40]
        channel = await layer.new_channel()
        # Join before accepting: once the client sees the socket open, it is in the room.
        await layer.group_add(group, channel)
        await send({"type": "websocket.accept"})
        relay = asyncio.create_task(relay_to_client(layer, channel, send))
        try:
            while (event := await receive())["type"] == "websocket.receive":
                text = text_of(event.get("text") or event.get("bytes") or b"")
                if text:
                    await layer.group_send(group, {"type": "chat.message", "text": text, "from": name})
        finally:
            # The loop ends with websocket.disconnect: the client has gone.
            relay.cancel()
            await asyncio.gather(relay, return_exceptions=True)
            await layer.group_discard(group, channel)


async def relay_to_client(layer: PostgresChannelLayer, channel: str, send: Send) -> None:
    while True:
        message = await layer.receive(channel)
        frame = json.dumps({"text": message["text"], "from": message["from"]})
        await send({"type": "websocket.send", "text": frame})


def text_of(frame: str | bytes) -> str | None:
    """The text of a ``{"text": ...}`` frame, at most 1000 characters; None for anything else."""
    try:
        text = json.loads(frame)["text"]
    except (ValueError, KeyError, TypeError):
        return None
    return text[:1000] if isinstance(text, str) else None


app = ChatApp()
