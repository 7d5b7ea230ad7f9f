"""Running ``python -m channel_layer_pg demo --web`` as a user would, for the tests that need it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from tests.helpers import TIMEOUT

ROOT = Path(__file__).resolve().parent.parent
# Start-up includes worker interpreters and, without --url, an embedded PostgreSQL.
START_TIMEOUT = 45.0


@dataclass
class Demo:
    process: asyncio.subprocess.Process
    output: list[str] = field(default_factory=list)
    page: str = ""
    pids: list[int] = field(default_factory=list)

    @property
    def ws(self) -> str:
        return self.page.replace("http://", "ws://", 1).rstrip("/")


@asynccontextmanager
async def running_demo(*options: str) -> AsyncIterator[Demo]:
    """The demo command on a free port, ready to serve; stopped with Ctrl-C's SIGINT afterwards."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "channel_layer_pg",
        "demo",
        "--web",
        f"--port={free_port()}",
        *options,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        # A process group of its own, as a terminal gives a foreground command: Ctrl-C signals it.
        start_new_session=True,
    )
    demo = Demo(process)
    try:
        await asyncio.wait_for(_until_serving(demo), START_TIMEOUT)
        yield demo
    finally:
        await interrupt(demo)


async def interrupt(demo: Demo, how: signal.Signals = signal.SIGINT) -> int:
    """Press Ctrl-C (SIGINT to the demo's process group), or ``kill`` it with ``how``.

    Returns its exit code once it has stopped.
    """
    if demo.process.returncode is None:
        if how == signal.SIGINT:
            os.killpg(demo.process.pid, how)
        else:
            demo.process.send_signal(how)
        try:
            rest = await asyncio.wait_for(demo.process.communicate(), TIMEOUT + 10)
        except TimeoutError:
            os.killpg(demo.process.pid, signal.SIGKILL)
            await demo.process.wait()
            raise
        demo.output.extend(rest[0].decode().splitlines())
    return demo.process.returncode  # type: ignore[return-value]  # set once wait() returned


async def _until_serving(demo: Demo) -> None:
    stream = demo.process.stdout
    if stream is None:
        raise RuntimeError("the demo's stdout is not piped")
    while not demo.page:
        line = (await stream.readline()).decode()
        if not line:
            raise AssertionError("the demo exited before serving:\n" + "\n".join(demo.output))
        demo.output.append(line.rstrip("\n"))
        demo.pids.extend(int(ready[1]) for ready in re.finditer(r"worker pid (\d+) ready", line))
        if opened := re.search(r"open (http://\S+/)", line):
            demo.page = opened[1]


def embedded_server(output: list[str]) -> tuple[Path, int]:
    """The embedded PostgreSQL's directory, from the URL a demo printed, and its server's pid."""
    (line,) = [line for line in output if "ready at postgresql://" in line]
    directory = Path(unquote(line.split("host=", 1)[1].strip()))
    return directory, int((directory / "postmaster.pid").read_text().split()[0])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


async def next_event(websocket: Any, kind: str) -> dict[str, Any]:
    """The next frame of type ``kind`` from the demo's WebSocket, skipping others."""

    async def find() -> dict[str, Any]:
        while True:
            event: dict[str, Any] = json.loads(await websocket.recv())
            if event["type"] == kind:
                return event

    return await asyncio.wait_for(find(), TIMEOUT)
