"""A separate process for the cross-process tests: takes jobs from a normal channel.

Run as ``python -m tests.worker URL PREFIX JOBS_CHANNEL REPLY_CHANNEL``. It announces itself
on the reply channel (a process-local channel of the test process), then answers every job
with its own pid until it receives a message of type "stop".
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import sys

from channel_layer_pg import PostgresChannelLayer


def dump_tasks() -> None:
    for task in asyncio.all_tasks():
        task.print_stack(file=sys.stderr)


async def work(url: str, prefix: str, jobs: str, reply: str) -> None:
    # SIGUSR2 (sent by the test with SIGUSR1) prints every task's stack: where it waits.
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, dump_tasks)
    async with PostgresChannelLayer(url=url, prefix=prefix, capacity=1000) as layer:
        await layer.send(reply, {"type": "ready", "pid": os.getpid()})
        while True:
            job = await layer.receive(jobs)
            if job["type"] == "stop":
                return
            await layer.send(reply, {"type": "done", "n": job["n"], "pid": os.getpid()})


if __name__ == "__main__":
    # The test sends SIGUSR1 to a worker that does not finish in time: its stacks then show
    # in the test's captured output, where it was stuck.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    asyncio.run(work(*sys.argv[1:5]))
