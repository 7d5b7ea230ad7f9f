"""A private event loop in a thread of its own, for calls from short-lived event loops.

asyncpg connections belong to the loop that opened them. Django's sync code reaches the
layer through async_to_sync, which may make a fresh loop per call and close it right after:
a pool on such a loop would be lost with it, and a connection per call is slow. Calls from
those loops run here instead, on a loop that lives as long as the layer, with its own pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class IoThread:
    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The thread's loop, started on first use."""
        with self._lock:
            if self._loop is None:
                ready = threading.Event()
                loop = asyncio.new_event_loop()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                # A daemon: Channels never calls close(), and the process must still be able to exit.
                self._thread = threading.Thread(target=run, name=self._name, daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    async def run(
        self,
        coroutine: Coroutine[Any, Any, T],
        on_orphaned: Callable[[T], None] | None = None,
    ) -> T:
        """Run ``coroutine`` on the I/O thread and return its result to the calling loop.

        Cancelling the caller cancels the coroutine there and waits for it to end, so nothing
        it does outlives the call. If it finished with a result just as the caller was
        cancelled, ``on_orphaned`` gets that result (a receive uses it to keep the message).
        """
        loop = self.loop
        outcome: concurrent.futures.Future[T] = concurrent.futures.Future()
        started: list[asyncio.Task[T]] = []

        def start() -> None:
            task = loop.create_task(coroutine)
            started.append(task)
            task.add_done_callback(lambda done: _copy_outcome(done, outcome))

        loop.call_soon_threadsafe(start)
        waiter = asyncio.wrap_future(outcome)
        try:
            return await asyncio.shield(waiter)
        except asyncio.CancelledError:
            # start() was queued first on the same loop, so the task exists when this runs.
            loop.call_soon_threadsafe(lambda: started[0].cancel())
            try:
                result = await waiter
            except BaseException:
                raise asyncio.CancelledError from None
            if on_orphaned is not None:
                on_orphaned(result)
            raise

    async def stop(self) -> None:
        """Cancel what still runs there, stop the loop, and wait for the thread to end."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(_cancel_all_tasks(), loop))
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join)
        loop.close()


def _copy_outcome(task: asyncio.Task[T], outcome: concurrent.futures.Future[T]) -> None:
    if task.cancelled():
        outcome.cancel()
    elif task.exception() is not None:
        outcome.set_exception(task.exception())
    else:
        outcome.set_result(task.result())


async def _cancel_all_tasks() -> None:
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
