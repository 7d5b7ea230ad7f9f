"""One app server for tests/test_app_servers.py: its own process, its own layer, one database.

Run as ``python -m tests.app_server`` with the database URL in ``APP_SERVER_URL`` (the
environment, not argv, where ``ps`` would show a password) and the layer prefix in
``APP_SERVER_PREFIX``. Like a consumer in a real app server, it makes a process-local
channel, joins the group ``room`` with it, and receives on that channel and on the shared
work queue ``test.jobs`` for as long as it runs.

The test steers it over stdin and hears from it over stdout, one JSON object a line, so that
its commands and reports never travel through the layer under test:

- out ``{"event": "ready", "pid": ..., "channel": ...}`` once it has joined ``room``;
- out ``{"event": "received", "on": "local" | "jobs", "message": {...}}`` for every message;
- in ``{"command": "send", "sends": [[channel, message], ...]}``, sent one after another;
- in ``{"command": "group_send", "messages": [...]}``, to ``room``, one after another;
- in ``{"command": "group_discard"}``, its channel leaves ``room``;
- out ``{"event": "done", "command": ...}`` once a command has completed;
- in ``{"command": "stop"}`` (or stdin closing): it closes its layer and exits 0.

SIGUSR1 prints every thread's stack and SIGUSR2 every task's to stderr, for a test that
times out waiting on this process.
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import os
import signal
import sys
from typing import Any

from channel_layer_pg import PostgresChannelLayer

GROUP = "room"
JOBS = "test.jobs"


def emit(**event: Any) -> None:
    print(json.dumps(event), flush=True)


def dump_tasks() -> None:
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)
    sys.stderr.flush()


async def report_arrivals(layer: PostgresChannelLayer, channel: str, name: str) -> None:
    # One receive at a time, so the order reported is the order the layer delivered.
    while True:
        message = await layer.receive(channel)
        emit(event="received", on=name, message=message)


async def obey(layer: PostgresChannelLayer, command: dict[str, Any], me: str) -> None:
    name = command["command"]
    if name == "send":
        for channel, message in command["sends"]:
            await layer.send(channel, message)
    elif name == "group_send":
        for message in command["messages"]:
            await layer.group_send(GROUP, message)
    elif name == "group_discard":
        await layer.group_discard(GROUP, me)
    else:
        raise ValueError(f"unknown command {name!r}")
    emit(event="done", command=name)


async def serve(url: str, prefix: str) -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR2, dump_tasks)
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    async with PostgresChannelLayer(url=url, prefix=prefix, capacity=1000) as layer:
        me = await layer.new_channel()
        await layer.group_add(GROUP, me)
        receivers = [
            asyncio.create_task(report_arrivals(layer, me, "local")),
            asyncio.create_task(report_arrivals(layer, JOBS, "jobs")),
        ]
        emit(event="ready", pid=os.getpid(), channel=me)
        next_line = asyncio.create_task(commands.readline())
        try:
            while True:
                await asyncio.wait([next_line, *receivers], return_when=asyncio.FIRST_COMPLETED)
                # A receive loop that failed ends the process with its traceback, rather
                # than leaving the test to wait for messages that will never be reported.
                for receiver in receivers:
                    if receiver.done():
                        receiver.result()
                line = next_line.result()
                if not line:
                    break
                command = json.loads(line)
                if command["command"] == "stop":
                    break
                await obey(layer, command, me)
                next_line = asyncio.create_task(commands.readline())
        finally:
            for task in (next_line, *receivers):
                task.cancel()
            await asyncio.gather(next_line, *receivers, return_exceptions=True)


if __name__ == "__main__":
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    asyncio.run(serve(os.environ["APP_SERVER_URL"], os.environ["APP_SERVER_PREFIX"]))
