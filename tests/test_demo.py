"""The terminal demo (``python -m channel_layer_pg demo``) cleans up after itself."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

from tests.helpers import TIMEOUT
from tests.web_demo import ROOT, START_TIMEOUT, embedded_server, running


async def test_kill_stops_the_worker_and_the_embedded_postgres() -> None:
    # Enough pings to be busy when the signal comes.
    demo = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "channel_layer_pg",
        "demo",
        "--messages=1000000",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output: list[str] = []
    worker = 0
    try:
        worker = await asyncio.wait_for(_worker_pid(demo, output), START_TIMEOUT)
        directory, postmaster = embedded_server(output)
        demo.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(demo.communicate(), TIMEOUT + 10)
        output.extend(rest.decode().splitlines())
    finally:
        if demo.returncode is None:
            # The test failed; at least the worker, in a session of its own, must not outlive it.
            demo.kill()
            await demo.wait()
            if worker and running(worker):
                os.kill(worker, signal.SIGKILL)
    assert demo.returncode == 130, output
    assert "channel-layer-pg demo: interrupted" in output
    assert not running(worker)
    assert not running(postmaster)
    assert not await asyncio.to_thread(directory.exists)


async def _worker_pid(demo: asyncio.subprocess.Process, output: list[str]) -> int:
    if demo.stdout is None:
        raise RuntimeError("the demo's stdout is not piped")
    while True:
        line = (await demo.stdout.readline()).decode()
        if not line:
            raise AssertionError("the demo ended early:\n" + "\n".join(output))
        output.append(line.rstrip("\n"))
        if started := re.search(r"started worker pid (\d+)", line):
            return int(started[1])
