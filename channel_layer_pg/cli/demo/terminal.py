"""A terminal demo: two processes talking through the layer, and so through PostgreSQL.

``python -m channel_layer_pg demo`` starts a throwaway embedded PostgreSQL unless given
``--url``, launches a worker process, and shows request/reply and a group send between them.
Everything it stores is under a random prefix and is flushed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Coroutine, Iterator
from typing import Any, TypeVar

from sqlalchemy.engine import make_url

from ...config import URL_ENV_VAR
from ...embedded import embedded_postgres
from ...layer import PostgresChannelLayer
from ...store.migrate import migrate
from . import DemoError

WORK_CHANNEL = "demo.work"
ROOM = "demo.room"

# The first reply also waits for the worker's interpreter to start and connect.
START_TIMEOUT = 30.0
REPLY_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
# A worker whose parent was killed outright must not wait for messages forever.
WORKER_IDLE_TIMEOUT = 60.0

Message = dict[str, Any]
T = TypeVar("T")


def say(line: str) -> None:
    # Flushed at once: the worker shares the terminal, and output may be piped.
    print(line, flush=True)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Handle SIGTERM and SIGHUP (``kill``, a closed terminal) as Ctrl-C, in the main thread.

    Their default ends the process on the spot, leaving what it started in sessions of their
    own (the worker, uvicorn, the embedded PostgreSQL) running with nobody to stop them.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; its caller owns the signals then
        return

    def interrupt(signum: int, frame: object) -> None:
        # SIGINT itself, not a KeyboardInterrupt raised here: inside asyncio.run, SIGINT cancels
        # the main task so that its cleanup runs, where an exception could land anywhere.
        signal.raise_signal(signal.SIGINT)

    previous = {number: signal.signal(number, interrupt) for number in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def run_demo(url: str | None, messages: int = 200) -> int:
    """Run the demo against ``url``, or an embedded PostgreSQL if None; the exit code."""
    with terminate_as_interrupt():
        if url is not None:
            say(f"using PostgreSQL at {_safe(url)}")
            return asyncio.run(_parent(url, messages))
        say("starting an embedded PostgreSQL in a temporary directory ...")
        with embedded_postgres() as embedded_url:
            say(f"  ready at {_safe(embedded_url)}")
            migrate(embedded_url)
            say("  created the layer's tables (migrate to head)")
            code = asyncio.run(_parent(embedded_url, messages))
            say("stopping the embedded PostgreSQL")
        return code


def run_worker(url: str, prefix: str) -> int:
    """The demo's second process; started by the demo, not by hand."""
    return asyncio.run(_worker(url, prefix))


# -- the parent process -------------------------------------------------------------------


async def _parent(url: str, messages: int) -> int:
    # A prefix of its own: the demo never sees, nor disturbs, anyone else's channels or groups.
    prefix = f"demo{secrets.token_hex(4)}"
    async with PostgresChannelLayer(url=url, prefix=prefix) as layer:
        reply = await layer.new_channel()
        say(f"parent pid {os.getpid()}: prefix {prefix!r}, reply channel {reply}")
        worker = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "channel_layer_pg",
            "demo-worker",
            "--prefix",
            prefix,
            # In the environment, not the arguments: any local user can read another's argv.
            env={**os.environ, URL_ENV_VAR: url},
            # Out of the terminal's process group, so Ctrl-C reaches only us and we stop the
            # worker ourselves, rather than it printing a traceback of its own half-way through.
            start_new_session=True,
        )
        try:
            await _unless_worker_exits(worker, _exchange(layer, reply, worker.pid, messages))
            say(f"3) stop: sending {{'type': 'stop'}} to {WORK_CHANNEL!r}")
            await layer.send(WORK_CHANNEL, {"type": "stop"})
            code = await _within(STOP_TIMEOUT, "exit of the worker after 'stop'", worker.wait())
            say(f"  worker pid {worker.pid} exited with code {code}")
        finally:
            await _reap(worker)
            # Best effort: on an error the database may be what failed, and the rows expire anyway.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(layer.flush(), REPLY_TIMEOUT)
    say(f"flushed prefix {prefix!r} and closed the layer")
    return 0 if code == 0 else 1


async def _exchange(layer: PostgresChannelLayer, reply: str, worker_pid: int, messages: int) -> None:
    async def ask(message: Message, what: str, timeout: float = REPLY_TIMEOUT) -> Message:
        await layer.send(WORK_CHANNEL, {**message, "reply_to": reply})
        return await _within(timeout, what, layer.receive(reply))

    say(f"started worker pid {worker_pid}; it receives on {WORK_CHANNEL!r}")
    started = time.perf_counter()
    await ask({"type": "ping", "n": 0, "sent": time.time()}, "first pong", START_TIMEOUT)
    say(f"  first pong after {_ms(time.perf_counter() - started)} (worker start-up included)")

    say(f"1) request/reply: {messages} pings to {WORK_CHANNEL!r}, one at a time")
    round_trips: list[float] = []
    senders: set[int] = set()
    began = time.perf_counter()
    for n in range(1, messages + 1):
        sent = time.perf_counter()
        pong = await ask({"type": "ping", "n": n, "sent": time.time()}, f"pong {n}")
        round_trips.append(time.perf_counter() - sent)
        if pong.get("type") != "pong" or pong.get("n") != n:
            raise DemoError(f"expected pong {n}, got {pong!r}")
        senders.add(pong["worker_pid"])
    elapsed = time.perf_counter() - began
    round_trips.sort()
    say(
        f"  round trip p50 {_ms(_percentile(round_trips, 0.50))}, p99 {_ms(_percentile(round_trips, 0.99))}, "
        f"{messages / elapsed:.0f} round trips/s"
    )
    say(f"  pings sent by pid {os.getpid()}, pongs sent by pid {', '.join(map(str, sorted(senders)))}")

    say(f"2) groups: both processes join {ROOM!r}, the parent calls group_send once")
    inbox = await layer.new_channel()
    await layer.group_add(ROOM, inbox)
    joined = await ask({"type": "join"}, "word that the worker joined")
    say(f"  parent joined with {inbox}, worker with {joined['channel']}")
    await layer.group_send(ROOM, {"type": "chat", "text": "hello room"})
    here = await _within(REPLY_TIMEOUT, "group message", layer.receive(inbox))
    there = await _within(REPLY_TIMEOUT, "word from the worker", layer.receive(reply))
    say(f"  parent pid {os.getpid()} received {here['text']!r}")
    say(f"  worker pid {there['worker_pid']} received {there['text']!r}")


async def _unless_worker_exits(worker: asyncio.subprocess.Process, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work``, failing at once rather than at a timeout if the worker dies meanwhile."""
    task = asyncio.ensure_future(work)
    exited = asyncio.ensure_future(worker.wait())
    try:
        await asyncio.wait({task, exited}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            code = worker.returncode or 0
            how = f"was killed by signal {-code}" if code < 0 else f"exited early with code {code}"
            raise DemoError(f"the worker {how}")
        return task.result()
    finally:
        # Also reached on Ctrl-C: neither task may outlive the demo.
        task.cancel()
        exited.cancel()
        await asyncio.gather(task, exited, return_exceptions=True)


async def _reap(worker: asyncio.subprocess.Process) -> None:
    if worker.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):  # it exited just now
        worker.terminate()
    try:
        await asyncio.wait_for(worker.wait(), STOP_TIMEOUT)
    except TimeoutError:
        worker.kill()
        await worker.wait()


# -- the worker process -------------------------------------------------------------------


async def _worker(url: str, prefix: str) -> int:
    async with PostgresChannelLayer(url=url, prefix=prefix) as layer:
        while True:
            try:
                message = await asyncio.wait_for(layer.receive(WORK_CHANNEL), WORKER_IDLE_TIMEOUT)
            except TimeoutError:
                raise DemoError(f"nothing on {WORK_CHANNEL!r} for {WORKER_IDLE_TIMEOUT:g} s") from None
            kind = message.get("type")
            if kind == "stop":
                return 0
            if kind == "ping":
                pong = {"type": "pong", "n": message["n"], "worker_pid": os.getpid()}
                await layer.send(message["reply_to"], pong)
            elif kind == "join":
                await _join_room(layer, message["reply_to"])
            else:
                print(f"demo worker: ignoring a message of type {kind!r}", file=sys.stderr)


async def _join_room(layer: PostgresChannelLayer, reply_to: str) -> None:
    inbox = await layer.new_channel()
    await layer.group_add(ROOM, inbox)
    # Only now may the parent group_send: a message sent before group_add would miss us.
    await layer.send(reply_to, {"type": "joined", "channel": inbox, "worker_pid": os.getpid()})
    chat = await _within(REPLY_TIMEOUT, "group message", layer.receive(inbox))
    await layer.send(reply_to, {"type": "received", "text": chat["text"], "worker_pid": os.getpid()})
    await layer.group_discard(ROOM, inbox)


# -- helpers ------------------------------------------------------------------------------


async def _within(seconds: float, what: str, work: Awaitable[T]) -> T:
    try:
        return await asyncio.wait_for(work, seconds)
    except TimeoutError:
        raise DemoError(f"no {what} within {seconds:g} s") from None


def _percentile(ordered: list[float], fraction: float) -> float:
    # Nearest rank: always a measured value, and defined for a single one.
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _safe(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)
