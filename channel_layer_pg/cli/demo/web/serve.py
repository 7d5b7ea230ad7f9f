"""``python -m channel_layer_pg demo --web``: the chat on uvicorn worker processes.

Unless given a URL, it starts a throwaway embedded PostgreSQL and migrates it. uvicorn runs
in a session of its own, so Ctrl-C reaches only this process, which then stops uvicorn (whose
supervisor stops its workers gracefully: each closes its sockets and its layer) and only then
the embedded PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import IO

from sqlalchemy.engine import make_url

from ....config import URL_ENV_VAR
from ....embedded import embedded_postgres
from ....layer import PostgresChannelLayer
from ....store.migrate import migrate
from .. import DemoError
from ..terminal import say, terminate_as_interrupt

# Each worker prints this once its layer is open (see app.py).
READY_LINE = re.compile(r"worker pid (\d+) ready")
# Worker start-up is an interpreter, the imports and a database check: seconds, not tens.
STARTUP_TIMEOUT = 30.0
# uvicorn gives open WebSockets this long to close before it stops a worker anyway.
GRACEFUL_SHUTDOWN = 5
STOP_TIMEOUT = 15.0


def run_web_demo(url: str | None, *, host: str, port: int, workers: int) -> int:
    """Serve the chat until Ctrl-C, on ``url`` or an embedded PostgreSQL if None; the exit code."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise DemoError("the web demo needs the 'web' extra: pip install 'channel-layer-pg[web]'") from None
    with terminate_as_interrupt():
        return _run(url, host, port, workers)


def _run(url: str | None, host: str, port: int, workers: int) -> int:
    if url is not None:
        say(f"using PostgreSQL at {_safe(url)}")
        return _serve(url, host, port, workers)
    say("starting an embedded PostgreSQL in a temporary directory ...")
    with embedded_postgres() as embedded_url:
        say(f"  ready at {_safe(embedded_url)}")
        migrate(embedded_url)
        say("  created the layer's tables (migrate to head)")
        try:
            return _serve(embedded_url, host, port, workers)
        finally:
            say("stopping the embedded PostgreSQL")


def _serve(url: str, host: str, port: int, workers: int) -> int:
    # An unreachable database or a missing schema fails here, once, with the layer's own message,
    # rather than in every worker that uvicorn would then restart.
    asyncio.run(_check(url))
    say(f"starting {workers} uvicorn worker process{'es' if workers > 1 else ''} on port {port} ...")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            f"{__package__}.app:app",
            f"--host={host}",
            f"--port={port}",
            f"--workers={workers}",
            f"--timeout-graceful-shutdown={GRACEFUL_SHUTDOWN}",
            "--log-level=warning",
            "--no-access-log",
        ],
        # In the environment, not the arguments: any local user can read another's argv.
        env={**os.environ, URL_ENV_VAR: url},
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        pids = _wait_for_workers(server, workers)
        page = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"
        say(f"serving: workers {', '.join(map(str, pids))} share port {port}, and meet in PostgreSQL")
        say("")
        say(f"  open {page}?room=lobby in two browser windows and chat between them")
        say("")
        say("press Ctrl-C to stop")
        code = server.wait()
        raise DemoError(f"the web server exited by itself, with code {code}")
    except KeyboardInterrupt:
        say("stopping the web server ...")
        return 0
    finally:
        _stop(server)


async def _check(url: str) -> None:
    # Opening a layer checks the connection and the schema; the prefix plays no part in that.
    async with PostgresChannelLayer(url=url):
        pass


def _wait_for_workers(server: subprocess.Popen[str], workers: int) -> list[int]:
    """The pids of the workers, once each has said it is ready; echoes what uvicorn prints."""
    if server.stdout is None:
        raise RuntimeError("uvicorn must be started with stdout=PIPE")
    pids: list[int] = []
    all_ready = threading.Event()

    def echo(stream: IO[str]) -> None:
        # Runs until uvicorn's stdout closes, so a worker that prints later never blocks on a full pipe.
        for line in stream:
            print(line, end="", flush=True)
            for ready in READY_LINE.finditer(line):
                pids.append(int(ready[1]))
                if len(pids) == workers:
                    all_ready.set()

    threading.Thread(target=echo, args=(server.stdout,), name="uvicorn output", daemon=True).start()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    # Bounded waits on the event, so that an early exit of uvicorn is noticed at once too.
    while not all_ready.wait(0.2):
        if server.poll() is not None:
            raise DemoError(
                f"the web server exited with code {server.returncode} before serving (its error is above; "
                "is the port taken? try --port)"
            )
        if time.monotonic() > deadline:
            raise DemoError(f"the workers were not ready within {STARTUP_TIMEOUT:g} s")
    return list(pids)


def _stop(server: subprocess.Popen[str]) -> None:
    """Stop uvicorn and every worker it started, gracefully if they let us."""
    try:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            server.wait(STOP_TIMEOUT)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        say("the web server did not stop in time; killing it")
    finally:
        # Whatever is left of uvicorn's session (a hung or orphaned worker) goes too. The group
        # id stays reserved while any member lives, so this cannot reach anyone else's process.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _safe(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)
