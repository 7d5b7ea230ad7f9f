"""One Django app process for tests/test_shards_django.py: a group chat over a sharded layer.

Run as ``python -m tests.shard_chat_app`` with ``DJANGO_SETTINGS_MODULE`` naming settings whose
CHANNEL_LAYERS default is a ShardedChannelLayer, and the shard its consumer must live on in
``SHARD_CHAT_HOME``. It connects one WebsocketCommunicator to tests/test_channels_compat.py's
GroupChat consumer and reports over stdout, one JSON object a line:

- out ``{"event": "ready", "home": ..., "process_id": ...}`` once the consumer has joined the room;
- out ``{"event": "heard", "message": {...}}`` for every message its client receives;
- in ``{"say": text}``: its client sends ``{"text": text}`` to the consumer;
- stdin closing: it disconnects, closes its layer and exits 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

import django

django.setup()

from channels.layers import channel_layers, get_channel_layer  # noqa: E402
from channels.testing import WebsocketCommunicator  # noqa: E402

from channel_layer_pg import ShardedChannelLayer  # noqa: E402
from tests.test_channels_compat import GroupChat  # noqa: E402

ROOM = "/ws/sharded-room"
# Each try lands on the wanted shard with probability 1/shards: with two, 64 misses in a row
# happen once in 2**64 runs.
TRIES = 64


def emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


async def layer_homed_on(shard: str) -> ShardedChannelLayer:
    """The settings' layer, built again until its random process id hashes to ``shard``.

    The home shard follows from a random process id, as in production; dropping the unused
    instance from Channels' cache makes the next get_channel_layer() build a new one from
    the same settings, so the consumer below uses the layer the settings describe.
    """
    for _ in range(TRIES):
        layer = get_channel_layer()
        assert isinstance(layer, ShardedChannelLayer), layer
        if layer.home_shard == shard:
            return layer
        await layer.close()
        del channel_layers.backends["default"]
    raise RuntimeError(f"no process id hashed to {shard!r} in {TRIES} tries")


async def report_heard(client: WebsocketCommunicator) -> None:
    while True:
        emit(event="heard", message=await client.receive_json_from(timeout=3600))


async def main() -> None:
    layer = await layer_homed_on(os.environ["SHARD_CHAT_HOME"])
    client = WebsocketCommunicator(GroupChat.as_asgi(), ROOM)
    connected, _ = await client.connect(timeout=30)
    assert connected
    emit(event="ready", home=layer.home_shard, process_id=layer.client_prefix)
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    heard = asyncio.create_task(report_heard(client))
    next_line = asyncio.create_task(commands.readline())
    try:
        while True:
            await asyncio.wait([next_line, heard], return_when=asyncio.FIRST_COMPLETED)
            if heard.done():
                heard.result()  # its traceback ends the process, rather than a silent client
            if not (line := next_line.result()):
                break
            await client.send_json_to({"text": json.loads(line)["say"]})
            next_line = asyncio.create_task(commands.readline())
    finally:
        for task in (next_line, heard):
            task.cancel()
        await asyncio.gather(next_line, heard, return_exceptions=True)
        await client.disconnect(timeout=30)
        await layer.close()


if __name__ == "__main__":
    asyncio.run(main())
