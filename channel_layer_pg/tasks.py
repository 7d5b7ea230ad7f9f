"""Starting the tasks that carry a statement, an inline claim or an I/O-thread call."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def start_task(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A task running ``coroutine``, started at once where Python can (3.12 and later).

    Eagerly started, the coroutine runs in the caller's turn of the loop up to its first real
    wait (the statement written to the socket) instead of a turn later: one turn fewer per
    statement, which is a few per cent of a send→receive round trip (instructions counted in
    docs/benchmarks.md, "Where latency goes"). Only the moment of that first step changes:
    a statement's or claim's task still outlives a cancel of its caller, and an I/O-thread
    call is still cancelled with its caller (IoThread.run).

    ``loop`` must be the loop running in the calling thread: Python 3.12 and 3.13 start a task
    eagerly on any running loop, so from another thread the first step would run there, with
    that loop's current task swapped under it.
    """
    if sys.version_info >= (3, 12):
        return asyncio.Task(coroutine, loop=loop, eager_start=True)
    return loop.create_task(coroutine)
