"""The WebSocket side: each socket joins its room's group and relays the group's messages."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncJsonWebsocketConsumer


def room_group(room: str) -> str:
    return f"chat.{room}"


class ChatConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]  # channels has no type hints
    async def connect(self) -> None:
        self.group = room_group(self.scope["url_route"]["kwargs"]["room"])
        query = parse_qs(self.scope["query_string"].decode())
        self.name = query.get("name", ["anonymous"])[0][:40]
        # Join before accepting: once the client sees the socket open, it is in the room.
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        text = content.get("text") if isinstance(content, dict) else None
        if isinstance(text, str) and text:
            message = {"type": "chat.message", "text": text[:1000], "from": self.name}
            await self.channel_layer.group_send(self.group, message)

    async def chat_message(self, event: dict[str, Any]) -> None:
        """Handles group messages of type "chat.message" (Channels maps the dot to "_")."""
        await self.send_json({"text": event["text"], "from": event["from"]})
