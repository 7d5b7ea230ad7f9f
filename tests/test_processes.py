"""Several processes on one database: a shared work queue and process-local replies."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter
from pathlib import Path

from tests.helpers import TIMEOUT, LayerFactory, Sql, receive

ROOT = Path(__file__).resolve().parent.parent


async def test_workers_in_other_processes_share_a_channel_each_job_done_once(
    make_layer: LayerFactory, database_url: str, prefix: str, sql: Sql
) -> None:
    layer = make_layer(capacity=1000)
    replies = await layer.new_channel()
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.worker", database_url, prefix, "test.jobs", replies, cwd=ROOT
        )
        for _ in range(2)
    ]
    try:
        ready = {(await receive(layer, replies))["pid"] for _ in workers}
        assert ready == {worker.pid for worker in workers}

        for n in range(200):
            await layer.send("test.jobs", {"type": "job", "n": n})
        done = [await receive(layer, replies) for _ in range(200)]

        assert sorted(message["n"] for message in done) == list(range(200))
        assert set(Counter(message["pid"] for message in done)) <= ready

        for _ in workers:
            await layer.send("test.jobs", {"type": "stop"})
        try:
            codes = await asyncio.wait_for(asyncio.gather(*(w.wait() for w in workers)), TIMEOUT * 3)
        except TimeoutError:
            left = await sql(
                "SELECT count(*) AS n FROM channel_layer_pg_message WHERE prefix = $1 AND queue = $2",
                prefix,
                "test.jobs",
            )
            for worker in workers:
                if worker.returncode is None:
                    worker.send_signal(signal.SIGUSR1)  # prints its stacks (tests/worker.py)
                    worker.send_signal(signal.SIGUSR2)  # and its tasks' stacks
            await asyncio.sleep(0.5)  # let the stack dumps reach stderr before the kill
            raise AssertionError(
                f"a worker did not stop; stop messages still queued: {left[0]['n']}"
            ) from None
        assert codes == [0, 0]
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
