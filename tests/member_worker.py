"""A separate process that joins groups with its process-local channels, for the dead-process tests.

Run as ``python -m tests.member_worker URL PREFIX GROUP REPLY_CHANNEL``. It puts two channels of
its own in GROUP, announces them on the reply channel, and then waits on a receive on the first
until it is killed: the test kills it with SIGKILL, so it never closes its layer.
"""

from __future__ import annotations

import asyncio
import sys

from channel_layer_pg import PostgresChannelLayer


async def join_and_wait(url: str, prefix: str, group: str, reply: str) -> None:
    layer = PostgresChannelLayer(url=url, prefix=prefix)
    waiting, idle = await layer.new_channel(), await layer.new_channel()
    for channel in (waiting, idle):
        await layer.group_add(group, channel)
    await layer.send(reply, {"type": "joined", "channels": [waiting, idle]})
    while True:
        await layer.receive(waiting)


if __name__ == "__main__":
    asyncio.run(join_and_wait(*sys.argv[1:5]))
