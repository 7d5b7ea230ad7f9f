"""Telling dead processes from live ones, for the periodic cleanup (store/backend.py).

A process is dead when no session holds its liveness lock (store/listener.py takes it on each
LISTEN connection; the layer holds its I/O thread's from its first new_channel(), before any
of its names exists, until close()). A lock can be briefly absent from a live process too:
its listener is reconnecting. So a process is taken for dead only when its lock was absent
on two passes of this cleanup at least half an ``interval`` apart (passes are ``interval``
apart give or take the timer's resolution), and is still absent when its rows are deleted
(the statements check again). A listener reconnects within seconds (back-off 0.1 s up to
5 s), far inside that; one that took longer logs a WARNING (store/listener.py).

Which processes to look at: those seen holding a lock on the previous pass that hold none now
(reading pg_locks only, every pass), and every process that owns rows (reading every
membership, so only on the first pass and every FULL_SCAN_EVERY passes after), which finds the
processes that died while no cleanup ran, such as all of them in a restart.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.sql.base import Executable

from . import statements

Fetch = Callable[[Executable, dict[str, Any]], Awaitable[list[Any]]]
Execute = Callable[[Executable, dict[str, Any]], Awaitable[int]]

# Passes between full scans for processes that own rows and hold no lock: 5 minutes at the
# default 30 s.
FULL_SCAN_EVERY = 10


class DeadProcesses:
    """One cleaner's memory of which processes it saw alive, and since when others seemed dead."""

    def __init__(self) -> None:
        self._alive: set[str] = set()
        # Process id -> when (monotonic) this cleaner first found it without its lock.
        self._suspects: dict[str, float] = {}
        self._passes = 0

    async def remove(self, fetch: Fetch, execute: Execute, interval: float) -> tuple[int, int, int]:
        """One pass: (processes found dead, memberships removed, messages removed)."""
        now = time.monotonic()
        (row,) = await fetch(statements.LIVE_PROCESSES, {})
        alive = set(row["processes"])
        lockless = (self._alive | set(self._suspects)) - alive
        if self._passes % FULL_SCAN_EVERY == 0:
            (row,) = await fetch(statements.LOCKLESS_OWNERS, {})
            lockless.update(row["processes"])
        self._passes += 1
        self._alive = alive
        dead = sorted(p for p in lockless if now - self._suspects.get(p, now) >= interval / 2)
        # The dead stay suspects until their rows are gone: a pass whose deletes fail leaves
        # them to the next, which deletes at once (unless their lock is back).
        self._suspects = {p: self._suspects.get(p, now) for p in lockless}
        if not dead:
            return 0, 0, 0
        memberships = await _in_batches(execute, statements.DELETE_DEAD_MEMBERS, dead)
        messages = await _in_batches(execute, statements.DELETE_DEAD_MESSAGES, dead)
        for process in dead:
            del self._suspects[process]
        return len(dead), memberships, messages


async def _in_batches(execute: Execute, statement: Executable, dead: list[str]) -> int:
    removed = 0
    while True:
        count = await execute(statement, {"dead": dead})
        removed += count
        if count < statements.CLEANUP_BATCH:
            return removed
