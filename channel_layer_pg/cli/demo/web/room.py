"""One member of a room: a WebSocket, the channel it receives on, and whom it knows is there.

Everything between members goes through the layer, so two members served by different worker
processes meet exactly as two in one process do: in PostgreSQL. A member joins the room's
group, announces itself to the group, and everyone already there answers on its channel; so
each member learns who is in the room without any shared state outside the layer.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from starlette.websockets import WebSocket

from ....layer import PostgresChannelLayer

MAX_TEXT = 1000


class Member:
    def __init__(self, layer: PostgresChannelLayer, websocket: WebSocket, room: str, name: str) -> None:
        self.layer = layer
        self.websocket = websocket
        self.room = room
        self.group = f"room.{room}"
        self.name = name
        self.pid = os.getpid()
        self.channel = ""
        # channel -> {"name", "pid"} of everyone known to be in the room, this member included.
        self.present: dict[str, dict[str, Any]] = {}

    async def run(self) -> None:
        self.channel = await self.layer.new_channel()
        # In the group before the announcement goes out: the answers to it come to our channel,
        # and anyone who joins after us finds us in the group.
        await self.layer.group_add(self.group, self.channel)
        await self.websocket.accept()
        await self.websocket.send_json(
            {"type": "welcome", "room": self.room, "name": self.name, "pid": self.pid}
        )
        relay = asyncio.create_task(self._relay())
        try:
            await self.layer.group_send(self.group, self._presence("room.join"))
            async for frame in self.websocket.iter_text():
                text = _text_of(frame)
                if text:
                    message = {"type": "room.message", "text": text, "from": self.name, "pid": self.pid}
                    await self.layer.group_send(
                        self.group, {**message, "time": time.time(), "channel": self.channel}
                    )
        finally:
            relay.cancel()
            await asyncio.gather(relay, return_exceptions=True)
            await self.layer.group_discard(self.group, self.channel)
            await self.layer.group_send(self.group, self._presence("room.leave"))

    async def _relay(self) -> None:
        """Hand the room's messages to the browser, and keep track of who is there."""
        while True:
            message = await self.layer.receive(self.channel)
            kind = message.pop("type")
            who = message.pop("channel")
            if kind == "room.message":
                await self.websocket.send_json({"type": "message", **message, "you": who == self.channel})
                continue
            if kind == "room.leave":
                self.present.pop(who, None)
            else:  # room.join, or room.here: the answer of someone already in the room
                self.present[who] = {"name": message["name"], "pid": message["pid"]}
            if kind == "room.join" and who != self.channel:
                await self.layer.send(who, self._presence("room.here"))
            await self.websocket.send_json(
                {
                    "type": "presence",
                    "event": kind.removeprefix("room."),
                    "name": message["name"],
                    "pid": message["pid"],
                    "you": who == self.channel,
                    "members": self._members(),
                }
            )

    def _members(self) -> list[dict[str, Any]]:
        members = [{**member, "you": who == self.channel} for who, member in self.present.items()]
        return sorted(members, key=lambda member: (member["name"].lower(), member["pid"]))

    def _presence(self, kind: str) -> dict[str, Any]:
        return {"type": kind, "channel": self.channel, "name": self.name, "pid": self.pid}


def _text_of(frame: str) -> str | None:
    """The text of a ``{"text": ...}`` frame, cut to MAX_TEXT characters; None for anything else."""
    try:
        text = json.loads(frame)["text"]
    except (ValueError, KeyError, TypeError):
        return None
    return text.strip()[:MAX_TEXT] if isinstance(text, str) else None
