"""Which connections serve a call, per event loop; the I/O thread for short-lived loops.

asyncpg connections belong to the loop that opened them, so the layer keeps a LoopBackend
(connections, a LISTEN connection, readers, cleanup) per event loop it serves directly.
That suits a loop that lives as long as the application: an ASGI server's, whether in the
main thread or not (Django's runserver serves from another thread), a worker's. It does not
suit a loop made for one call: asgiref's async_to_sync, with no outer loop running, runs
each call with ``asyncio.run`` in a new worker thread, so a backend per loop would be a
connection per call. Calls from such loops hop to the layer's own I/O thread instead, whose
loop and backend live as long as the layer.

Which loops are served directly (EventLoops.route):

- The main thread's loop, from its first call: it is the application's (``asyncio.run(main())``,
  an ASGI server); async_to_sync never runs its loops in the main thread.
- Never a loop async_to_sync made for one call. asgiref registers each loop it makes in the
  public class attribute ``AsyncToSync.loop_thread_executors`` for exactly the length of that
  call, and its own sync_to_async reads it the same way; nothing else runs on that loop.
- Any other loop once it has made DIRECT_AFTER_CALLS calls through the I/O thread. Nothing
  about a new loop tells whether it will live for one call (``asyncio.run(layer.send(...))``
  in a Celery task) or for the process, so it pays the hop until it has shown it lives long.
  A backend costs about 10 ms to start (an engine, a connection, a LISTEN connection if it
  receives) and a hop about 0.1 ms per call: switching after as many hops as a backend costs
  means no loop pays more than twice the cheaper of the two (the ski-rental bound).

A loop that ends without the layer being closed gives its connections back as it ends:
``asyncio.run`` (and asyncio.Runner, uvloop.run, pytest-asyncio) closes every live async
generator of the loop before closing it, and each backend keeps one suspended on its loop
for that. A loop closed without that step (``loop.close()`` alone) can run nothing more; the
next backend made for a loop, or close(), notices and lets its backend go without it
(LoopBackend.abandon). Either way one DEBUG line: both are routine in scripts and tests.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import weakref
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from .errors import LayerClosedError
from .iothread import IoThread
from .local import Claimed
from .store.backend import LoopBackend

T = TypeVar("T")

logger = logging.getLogger("channel_layer_pg.loops")
claims_logger = logging.getLogger("channel_layer_pg.claims")

# Calls a loop other than the main thread's makes through the I/O thread before it gets a
# backend of its own; see the module docstring for why this many.
DIRECT_AFTER_CALLS = 100

# How often close(), waiting for work on another thread's loop, looks whether that loop was
# closed under it (closed without ending its async generators, so nothing else would say).
_LIVENESS_CHECK = 1.0


class EventLoops:
    """The backends of one layer: one per loop served directly, and the I/O thread's.

    Thread-safe: calls arrive from every thread that runs a loop. ``new_backend(use_given_engine)``
    makes a backend for the calling loop; the application's own engine (if it gave one) goes
    to the main thread's loop only, since a pool cannot cross loops.
    """

    def __init__(self, name: str, new_backend: Callable[[bool], LoopBackend]) -> None:
        self._new_backend = new_backend
        self._io = IoThread(name)
        self._io_served: _Served | None = None
        # Replaced, never changed in place: route() and wake_readers() read it without the lock.
        self._direct: dict[asyncio.AbstractEventLoop, _Served] = {}
        # Calls made through the I/O thread so far by loops not served directly (yet).
        self._hops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._closed = False

    @property
    def direct_count(self) -> int:
        """How many loops are served directly now (the I/O thread's not counted)."""
        return len(self._direct)

    def route(self) -> tuple[LoopBackend, IoThread | None]:
        """The backend for the calling loop, and the I/O thread if the call must hop there."""
        loop = asyncio.get_running_loop()
        served = self._direct.get(loop)
        if served is not None:
            return served.backend, None
        if self._closed:
            raise LayerClosedError("this channel layer was closed; create a new one")
        if _made_for_one_call(loop):
            return self._io_route()
        main_thread = threading.current_thread() is threading.main_thread()
        with self._lock:
            if self._closed:
                raise LayerClosedError("this channel layer was closed; create a new one")
            if not main_thread:
                hops = self._hops.get(loop, 0)
                if hops < DIRECT_AFTER_CALLS:
                    self._hops[loop] = hops + 1
                    return self._io_route_locked()
                del self._hops[loop]
                self._end_io_lingering()
            live = self._drop_abandoned()
            served = _Served(loop, self._new_backend(main_thread))
            self._direct = {**live, loop: served}
        # On this loop, outside the lock: it registers with the loop, which ends it when it ends.
        served.watch(self._until_loop_ends(served))
        return served.backend, None

    def let_go(self) -> None:
        """The layer was collected without close(): end the I/O thread's backend, then the thread.

        Called by the layer's finalizer, on whatever thread collected it: nothing is awaited.
        The liveness lock goes with the I/O thread's LISTEN connection, which is right: nobody
        can receive on the layer's channels any more. Loops served directly end their own
        backends as they end.
        """
        with self._lock:
            self._closed = True
            io_served, self._io_served = self._io_served, None
        if io_served is not None:
            logger.debug("the channel layer was collected without close(); closing its I/O thread")
            self._io.stop_soon(_let_go_of(io_served))
        else:
            self._io.stop_soon(None)

    async def hold_liveness(self) -> None:
        """Take the process's liveness lock on the I/O thread's backend, held until close().

        There, not on the calling loop: a loop served directly may end (``asyncio.run`` in a
        script) while the layer, its channels and their memberships live on, and the I/O
        thread lives exactly as long as the layer.
        """
        backend, io = self._io_route()
        await io.run(backend.hold_liveness())

    def _io_route(self) -> tuple[LoopBackend, IoThread]:
        with self._lock:
            if self._closed:
                raise LayerClosedError("this channel layer was closed; create a new one")
            return self._io_route_locked()

    def _io_route_locked(self) -> tuple[LoopBackend, IoThread]:
        if self._io_served is None:
            backend = self._new_backend(False)
            # Made here, not on the I/O thread: route() must answer now. The backend opens
            # nothing until its first statement, which runs there.
            self._io_served = _Served(None, backend)
        return self._io_served.backend, self._io

    def _end_io_lingering(self) -> None:
        """The I/O thread's readers of a loop now served directly need not linger for it.

        Lingering, each would be woken by every NOTIFY of its channels, on another thread,
        for receives that now run elsewhere.
        """
        io_loop = self._io.running_loop
        if self._io_served is not None and io_loop is not None:
            try:
                io_loop.call_soon_threadsafe(self._io_served.backend.end_lingering)
            except RuntimeError:
                pass  # the I/O thread is stopping

    def _drop_abandoned(self) -> dict[asyncio.AbstractEventLoop, _Served]:
        """The served loops still open; those closed under the layer are logged and dropped."""
        live = {}
        for loop, served in self._direct.items():
            if loop.is_closed():
                served.abandon(loop)
            else:
                live[loop] = served
        return live

    async def _until_loop_ends(self, served: _Served) -> AsyncGenerator[None, None]:
        """Suspended on the served loop until that loop ends its async generators, as it closes."""
        try:
            yield
        finally:
            served.unwatch()  # running now: release() must not close it from inside
            if not served.released:
                loop = asyncio.get_running_loop()
                with self._lock:
                    ours = self._direct.get(loop) is served
                    if ours:
                        self._direct = {other: s for other, s in self._direct.items() if other is not loop}
                await served.stop_receiving(LayerClosedError("the event loop ended"))
                await served.release()
                if ours:
                    # Routine for sync callers and asyncio.run() scripts: nothing to act on.
                    logger.debug(
                        "the event loop %r ended before the channel layer was closed; closed its connections",
                        loop,
                    )

    def wake_readers(self, queue: str, channels: Sequence[str] | None = None) -> None:
        """Rows of ``queue`` (for ``channels``, if known) were buffered: readers on every loop
        should look (thread-safe)."""
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, backend in self._backends():
            if loop is current:
                backend.wake_reader(queue, channels)
            elif not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(backend.wake_reader, queue, channels)
                except RuntimeError:
                    pass  # closed since: its receives are gone with it

    def _backends(self) -> list[tuple[asyncio.AbstractEventLoop, LoopBackend]]:
        backends = [(loop, served.backend) for loop, served in self._direct.items()]
        io_loop, io_served = self._io.running_loop, self._io_served
        if io_served is not None and io_loop is not None:
            backends.append((io_loop, io_served.backend))
        return backends

    async def close(self, error: BaseException, unreceived: Callable[[], Sequence[Claimed]]) -> None:
        """Close every backend on its own loop, then stop the I/O thread; once only.

        First every loop stops receiving, so no claim is left running anywhere; then the rows
        claimed for normal channels that no receive took (``unreceived()``) go back to the
        table for other processes, through the first backend still able to; then each
        backend releases its connections.
        """
        with self._lock:
            self._closed = True
            direct, self._direct = self._direct, {}
            io_served, self._io_served = self._io_served, None
        io_loop = self._io.running_loop
        targets: list[tuple[asyncio.AbstractEventLoop, _Served]] = []
        for loop, served in direct.items():
            if loop.is_closed():
                served.abandon(loop)
            elif loop.is_running():
                targets.append((loop, served))
            # A loop neither closed nor running ends its backend when it ends.
        if io_served is not None and io_loop is not None:
            targets.append((io_loop, io_served))
        stopped = [
            (loop, served) for loop, served in targets if await _run_on(loop, served.stop_receiving(error))
        ]
        rows = unreceived()
        if rows and stopped:
            loop, served = stopped[0]
            await _run_on(loop, served.backend.put_back(rows))
        elif rows:
            claims_logger.warning(
                "%d claimed messages no receive took are lost: no event loop of this layer is "
                "running to put them back in the table",
                len(rows),
            )
        for loop, served in targets:
            await _run_on(loop, served.release())
        await self._io.stop()


async def _let_go_of(served: _Served) -> None:
    await served.stop_receiving(LayerClosedError("the channel layer was collected without close()"))
    await served.release()


def _made_for_one_call(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether asgiref's async_to_sync made ``loop`` to run one call (see the module docstring)."""
    # Not imported here: if nothing imported asgiref.sync, no loop is one of its.
    sync = sys.modules.get("asgiref.sync")
    executors = getattr(getattr(sync, "AsyncToSync", None), "loop_thread_executors", None)
    return isinstance(executors, dict) and loop in executors


class _Served:
    """A backend and the loop it serves (None for the I/O thread's, made before its loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None, backend: LoopBackend) -> None:
        self.loop = loop
        self.backend = backend
        self.released = False
        self._stopped = False
        self._lock: asyncio.Lock | None = None
        self._watcher: AsyncGenerator[None, None] | None = None

    def watch(self, watcher: AsyncGenerator[None, None]) -> None:
        """Start ``watcher`` on the running loop: the loop closes it when it ends."""
        self._watcher = watcher
        # Stepped by hand, not awaited: route() is not a coroutine. The first step registers
        # the generator with the running loop (asyncio's firstiter hook) and runs it to its
        # yield without suspending, so it ends here with StopIteration.
        try:
            watcher.asend(None).send(None)
        except StopIteration:
            pass

    async def stop_receiving(self, error: BaseException) -> None:
        async with self._guard():
            if not self._stopped:
                await self.backend.stop_receiving(error)
                self._stopped = True

    async def release(self) -> None:
        async with self._guard():
            if not self.released:
                await self.backend.release()
                self.released = True
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            # Closed now, on its loop, rather than when collected: a collected generator's
            # closing would be scheduled on its loop at some later turn.
            await watcher.aclose()

    def abandon(self, loop: asyncio.AbstractEventLoop) -> None:
        """``loop`` was closed under the layer: drop its backend's connections without it."""
        if not self.released:
            self.released = True
            self._watcher = None
            self.backend.abandon(loop)
            logger.debug(
                "the event loop %r was closed without ending its async generators or closing the "
                "channel layer; dropped its connections",
                loop,
            )

    def unwatch(self) -> None:
        self._watcher = None

    def _guard(self) -> asyncio.Lock:
        # close() (from another thread) and the loop's own end may both get here on this loop:
        # one at a time, and each step once. A step a cancel cut short runs again.
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock


async def _run_on(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, None]) -> bool:
    """Run ``coroutine`` on ``loop`` and wait for it; False if that loop ended first.

    A loop that ends meanwhile cancels the coroutine (asyncio.run cancels every task of its
    loop) and then ends its backend itself; one closed outright never runs it.
    """
    if loop is asyncio.get_running_loop():
        await coroutine
        return True
    try:
        future = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, loop))
    except RuntimeError:  # closed since it was found running
        coroutine.close()
        return False
    while True:
        done, _ = await asyncio.wait({future}, timeout=_LIVENESS_CHECK)
        if done:
            break
        if loop.is_closed():
            future.cancel()
            return False
    if future.cancelled():
        return False
    future.result()
    return True
