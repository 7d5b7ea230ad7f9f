"""Chat with Quart: the layer lives while the app serves; a websocket route per room.

Run::

    export CHANNEL_LAYER_PG_URL=postgresql://user@127.0.0.1:5432/app
    channel-layer-pg migrate
    hypercorn examples.quart_chat:app --workers 2
    # or: uvicorn examples.quart_chat:app --workers 2
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator
from pathlib import Path

from quart import Quart, copy_current_websocket_context, current_app, websocket

from channel_layer_pg import PostgresChannelLayer

PAGE = Path(__file__).with_name("chat.html").read_text(encoding="utf-8")
# ASCII only and short: group names allow [a-zA-Z0-9-_.] and fewer than 100 characters.
ROOM = re.compile(r"[A-Za-z0-9_-]{1,50}")


def create_app(url: str | None = None, prefix: str = "quart_chat") -> Quart:
    """The chat app on the database at ``url`` (by default ``$CHANNEL_LAYER_PG_URL``)."""
    app = Quart(__name__)

    @app.while_serving
    async def channel_layer() -> AsyncGenerator[None, None]:
        # Checks the database and schema at startup; closes the layer's connections at shutdown.
        async with PostgresChannelLayer(url=url, prefix=prefix) as layer:
            app.extensions["channel_layer"] = layer
            yield

    app.route("/")(page)
    app.websocket("/ws/<room>")(chat)
    return app


async def page() -> str:
    return PAGE


async def chat(room: str) -> None:
    if not ROOM.fullmatch(room):
        await websocket.close(1008)
        return
    layer: PostgresChannelLayer = current_app.extensions["channel_layer"]
    name = websocket.args.get("name", "anonymous")[:40]
    group = f"chat.{room}"
    channel = await layer.new_channel()
    # Join before accepting: once the client sees the socket open, it is in the room.
    await layer.group_add(group, channel)
    await websocket.accept()

    @copy_current_websocket_context
    async def relay_to_client() -> None:
        while True:
            message = await layer.receive(channel)
            await websocket.send_json({"text": message["text"], "from": message["from"]})

    relay = asyncio.ensure_future(relay_to_client())
    try:
        while True:
            # Quart ends this handler by cancelling it here when the client goes away.
            text = text_of(await websocket.receive())
            if text:
                await layer.group_send(group, {"type": "chat.message", "text": text, "from": name})
    finally:
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
        await layer.group_discard(group, channel)


def text_of(frame: str | bytes) -> str | None:
    """The text of a ``{"text": ...}`` frame, at most 1000 characters; None for anything else."""
    try:
        text = json.loads(frame)["text"]
    except (ValueError, KeyError, TypeError):
        return None
    return text[:1000] if isinstance(text, str) else None


app = create_app()
