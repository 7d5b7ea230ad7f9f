"""Receiving from one queue on one event loop: waiting receivers and a claim loop.

A queue is a normal channel, or the non-local part of this layer's process-local channels
("specific.abc!"), so every process-local channel a layer made with one new_channel() prefix
is served by one reader and one claiming statement. Rows are claimed only for channels that
have a receiver waiting, at most as many as there are waiters, so the shared buffer holds only
what a cancelled receiver left behind or the few rows a batch claimed beyond its channel's
waiters.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence

from ..errors import DatabaseUnreachableError, StatementRejectedError
from ..faults import FaultHooks
from ..local import Claimed, ClaimedBuffer, Waiters, Wakeup
from ..tasks import start_task
from .backoff import Backoff
from .known_empty import KnownEmpty
from .listener import Listener, NotificationsNotDelivered

logger = logging.getLogger("channel_layer_pg.claims")

# A safety net under NOTIFY: a reader with waiters looks at the table at least this often,
# so even a wake-up lost to a broken connection costs seconds, never a stuck receive.
POLL_INTERVAL = 5.0
# How long a reader stays subscribed with nobody waiting before it UNLISTENs and ends.
IDLE_LINGER = 30.0
# Waits between attempts while the database is unreachable.
_BACKOFF_START = 0.1
_BACKOFF_MAX = 5.0

# Claims rows of a queue for channels, at most a number of them. The reader always runs it in
# a task that nothing cancels: the rows it claims exist only in its result.
Claim = Callable[[str, Sequence[str], int], Awaitable[Sequence[Claimed]]]


class QueueReader:
    def __init__(
        self,
        queue: str,
        topic: str,
        listener: Listener,
        claim: Claim,
        buffer: ClaimedBuffer,
        on_buffered: Callable[[str], None],
        on_idle: Callable[[QueueReader], None],
        database_reached: Callable[[], bool],
        faults: FaultHooks | None = None,
    ) -> None:
        self.queue = queue
        self._faults = faults
        self._poll_interval = POLL_INTERVAL if faults is None else faults.poll_interval or POLL_INTERVAL
        self._linger = IDLE_LINGER if faults is None else faults.reader_linger or IDLE_LINGER
        # Set by end_linger(): the next time nobody waits, unsubscribe at once.
        self._linger_ended = False
        self._database_reached = database_reached
        self._topic = topic
        self._listener = listener
        self._claim = claim
        self._buffer = buffer
        self._on_buffered = on_buffered
        self._on_idle = on_idle
        self._waiters = Waiters(None if faults is None else faults.handed_over)
        self._wakeup = Wakeup()
        self._task: asyncio.Task[None] | None = None
        self._backoff = Backoff(_BACKOFF_START, _BACKOFF_MAX)
        # The kind of failure being ridden out now, if any: logged when it starts, changes
        # and ends, not at every retry, since a receive may wait out a read-only server for hours.
        self._trouble: type[BaseException] | None = None
        # At most one claim per queue is in flight, the reader's or a receive's own, so rows
        # reach their receivers in id order even when a claimer is cancelled.
        self._inline_claim: asyncio.Future[Sequence[Claimed]] | None = None
        self._reader_claim: asyncio.Future[Sequence[Claimed]] | None = None
        self._closed_by: BaseException | None = None
        self._known_empty = KnownEmpty(self._poll_interval)
        self._wakes = 0  # counts wake() calls, to tell whether one came during a claim
        self._listening = False

    async def receive(self, channel: str) -> Claimed:
        """The next message for ``channel``; cancelling never loses one."""
        self._linger_ended = False  # in use again: lingering pays off
        buffered = self._buffer.take(channel)
        if buffered is not None:
            return buffered
        if (
            not self._waiters
            and self._inline_claim is None
            and self._reader_claim is None
            and channel not in self._known_empty
        ):
            # Nobody else waits here: claim in this task rather than waking the reader task,
            # which saves a few event-loop hops per message for a consumer that keeps up.
            claimed = await self._claim_inline(channel)
            if claimed is not None:
                return claimed
            if self._closed_by is not None:
                # close() came while this receive was claiming, too late to fail its waiter.
                raise self._closed_by
        waiter: asyncio.Future[Claimed] = asyncio.get_running_loop().create_future()
        self._waiters.add(channel, waiter)
        self._ensure_running()
        # A new waiter may want a channel the last claim did not ask for: look again.
        self._wakeup.set()
        try:
            return await waiter
        except asyncio.CancelledError:
            self._waiters.remove(channel, waiter)
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Delivered to us just as we were cancelled: it goes, first in line, to the
                # next receive on this channel.
                self.hand_back(waiter.result())
            raise

    async def _claim_inline(self, channel: str) -> Claimed | None:
        """The oldest message for ``channel`` if there is one now, else None."""
        # A task of its own, so that the claimed row outlives a cancel of this receive. It
        # hands its outcome over itself: through asyncio.shield the receive resumed a turn of
        # the event loop later (store.db.StatementRunner does the same for statements).
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[Sequence[Claimed]] = loop.create_future()
        wakes, listening = self._wakes, self._listening
        claim = start_task(loop, self._claim_into(outcome, channel))
        self._inline_claim = claim
        try:
            rows = await outcome
        except asyncio.CancelledError:
            # The claim stays "in flight" until its rows are handed back, so that no other
            # claim overtakes them. Ended already (the cancel came as its result did): hand
            # them back now rather than a turn of the loop later, when close() may have
            # looked in the buffer for the last time.
            if claim.done():
                self._inline_claim_orphaned(claim)
            else:
                claim.add_done_callback(self._inline_claim_orphaned)
            raise
        except Exception:
            # The reader's round handles failures (riding out an outage, or failing the
            # receive at once): let it meet this one too.
            self._inline_claim_ended()
            return None
        self._inline_claim_ended()
        if not rows:
            self._note_empty([channel], wakes, listening)
        return rows[0] if rows else None

    async def _claim_into(
        self, outcome: asyncio.Future[Sequence[Claimed]], channel: str
    ) -> Sequence[Claimed]:
        """The inline claim's task: its rows, handed to ``outcome`` unless the receive is gone."""
        try:
            rows = await self._claim(self.queue, [channel], 1)
        except Exception as exc:
            if not outcome.done():
                outcome.set_exception(exc)
            return ()  # a failed claim took nothing; the receive hears of the failure
        except BaseException:
            if not outcome.done():
                outcome.cancel()
            raise
        if not outcome.done():
            outcome.set_result(rows)
        return rows

    def _inline_claim_orphaned(self, claim: asyncio.Future[Sequence[Claimed]]) -> None:
        if not claim.cancelled() and claim.exception() is None:
            for row in claim.result():
                self.hand_back(row)
        self._inline_claim_ended()

    def _reader_claim_orphaned(self, claim: asyncio.Future[Sequence[Claimed]]) -> None:
        # The reader task was cancelled (close()): its waiters have failed, so the rows go
        # to the buffer, from which the closing backend puts back what others can receive.
        if not claim.cancelled() and claim.exception() is None:
            self._dispatch(claim.result())
        self._reader_claim = None

    def _inline_claim_ended(self) -> None:
        self._inline_claim = None
        # The reader holds back for waiters while an inline claim is in flight: their turn now.
        # With none, the reader is lingering and has nothing to do; waking it anyway would cost
        # a turn of its loop per message for a consumer that keeps claiming inline.
        if self._waiters:
            self._wakeup.set()

    def hand_back(self, row: Claimed) -> None:
        """Return a message whose receiver was cancelled to the front of its channel's line."""
        if not self._waiters.give(row):
            self._buffer.put_front(row)
            self._on_buffered(self.queue)

    def end_linger(self) -> None:
        """Unsubscribe as soon as nobody waits, rather than linger for the next receive.

        For a reader whose receives have moved to another loop: lingering, it would only be
        woken by every NOTIFY meant for the reader that took over.
        """
        self._linger_ended = True
        self._wakeup.set()

    def wake(self) -> None:
        """The table may hold something new (a NOTIFY came, or the listener reconnected): look."""
        self._wakes += 1
        self._known_empty.forget()
        # With nobody waiting there is nothing to claim for: the next receive looks at the
        # table itself. Skipping the wake saves the lingering reader a turn per NOTIFY.
        if self._waiters:
            self._wakeup.set()

    def serve_buffered(self, channels: Iterable[str] | None = None) -> None:
        """Rows for this queue were put in the shared buffer: hand them to waiting receives.

        Called on the reader's own loop. With ``channels`` (the channels the rows are for),
        their waiting receives get them here and now: a group_send to 200 of a process's own
        channels then costs no turn of the reader task and no pass over every waiting channel.
        Without, the reader looks at every channel it waits on, on its next turn.

        Unlike wake(), this says nothing about the table, so channels a claim found empty there
        stay known to be empty: a group_send to a process's own local channels, delivered in
        memory, would otherwise cost a claim that finds nothing.
        """
        if channels is not None:
            for channel in channels:
                self._serve_channel(channel)
        elif self._waiters:
            self._wakeup.set()

    def _note_empty(self, channels: Sequence[str], wakes: int, listening: bool) -> None:
        # Only if LISTEN was in effect before the claim began and no wake came meanwhile: a
        # message committed after the claim's snapshot then always brings a NOTIFY later.
        if listening and self._listening and wakes == self._wakes:
            self._known_empty.note(channels, asyncio.get_running_loop().time())

    def fail_waiters(self, exc: BaseException) -> None:
        self._waiters.fail(exc)

    async def close(self, exc: BaseException) -> list[asyncio.Future[Sequence[Claimed]]]:
        """Fail the waiters and stop the task; the claims still in flight.

        Each of those hands its rows to the buffer when it ends: the caller waits for them
        before it looks there for rows to put back.
        """
        self._closed_by = exc
        self.fail_waiters(exc)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return [claim for claim in (self._inline_claim, self._reader_claim) if claim is not None]

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"channel_layer_pg reader {self.queue}"
            )

    async def _run(self) -> None:
        # An inline claim in flight keeps the reader: if it finds nothing, its receive waits
        # here, and a reader the backend has forgotten would never be woken.
        while self._waiters or self._inline_claim is not None:
            # LISTEN before the first look at the table: a message committed after that
            # look then always finds us listening.
            try:
                await self._listener.subscribe(self._topic, self.wake)
            except Exception as exc:
                if not await self._outlast(exc):
                    return
                continue
            self._listening = True
            try:
                await self._serve()
            finally:
                self._listening = False
                self._known_empty.forget()
                await self._listener.unsubscribe(self._topic, self.wake)
            # No await between this check and the end of the task, so a receive that
            # arrived during UNLISTEN is served by another round, never stranded.
        self._on_idle(self)

    async def _serve(self) -> None:
        """Claim for waiters until none has come for IDLE_LINGER seconds (or the fault hooks')."""
        while True:
            self._wakeup.clear()
            self._serve_from_buffer()
            if not self._waiters:
                if self._linger_ended and self._inline_claim is None:
                    return
                # Stay subscribed a while: a consumer calls receive again right after each
                # message, and LISTEN/UNLISTEN per message would cost a round trip each.
                if (
                    not await self._wakeup.wait(self._linger)
                    and not self._waiters
                    and self._inline_claim is None
                ):
                    return
                continue
            if self._inline_claim is not None:
                await self._wakeup.wait(self._poll_interval)
                continue
            wanted = self._waiters.wanted(skipping=self._known_empty)
            if not wanted:
                # Nothing to claim until a wake says otherwise; the poll is the net under a
                # wake-up lost with a dropped connection, or a row skipped while another claim
                # held it (which brings no NOTIFY when that claim leaves it).
                remaining = self._known_empty.until_poll(asyncio.get_running_loop().time())
                if remaining <= 0 or not await self._wakeup.wait(remaining):
                    self._known_empty.forget()
                continue
            wakes = self._wakes
            claim = asyncio.ensure_future(self._claim(self.queue, list(wanted), sum(wanted.values())))
            self._reader_claim = claim
            try:
                # Shielded: a claimed row exists only in this statement's result, so the
                # statement must finish and its rows reach a receiver or the buffer even if
                # we are cancelled.
                rows = await asyncio.shield(claim)
            except asyncio.CancelledError:
                claim.add_done_callback(self._reader_claim_orphaned)
                raise
            except Exception as exc:
                self._reader_claim = None
                await self._outlast(exc)
                continue
            self._reader_claim = None
            self._recovered()
            if rows:
                self._dispatch(rows)
            else:
                self._note_empty(list(wanted), wakes, listening=True)

    async def _outlast(self, exc: Exception) -> bool:
        """Wait out a passing failure and return True, or fail the waiters and return False.

        Passing: a statement the server rolled back (a timeout, a read-only or full server,
        a deadlock: the rows it would have claimed are still in the table), and a lost
        database that was reachable before. Waiting receives keep waiting through either, with
        no bound of their own (a receive has none; its caller's timeout or cancel is the bound),
        trying again at most every _BACKOFF_MAX seconds, and complete when their message comes.
        A database never reached is a mistake in the settings, which they hear about at once.
        """
        passing = isinstance(exc, StatementRejectedError) or (
            isinstance(exc, DatabaseUnreachableError)
            and not isinstance(exc, NotificationsNotDelivered)  # a setting to fix, not an outage
            and self._database_reached()
        )
        if passing:
            delay = self._backoff.next()
            if type(exc) is not self._trouble:
                self._trouble = type(exc)
                logger.warning(
                    "receiving from %s failed (%s); retrying every %g s or sooner until it works",
                    self.queue,
                    exc,
                    _BACKOFF_MAX,
                )
            await asyncio.sleep(delay)
            return True
        logger.warning("receiving from %s failed: %s", self.queue, exc)
        self.fail_waiters(exc)
        return False

    def _recovered(self) -> None:
        self._backoff.reset()
        if self._trouble is not None:
            logger.info("receiving from %s works again", self.queue)
            self._trouble = None

    def _serve_from_buffer(self) -> None:
        # A receiver on another loop may have left rows behind for channels waited on here.
        # Usually the buffer is empty, and a pass over every waiting channel would find nothing.
        if self._buffer:
            for channel in self._waiters.channels():
                self._serve_channel(channel)

    def _serve_channel(self, channel: str) -> None:
        while self._waiters.waiting(channel) and self._buffer.holds(channel):
            row = self._buffer.take(channel)
            if row is None or not self._waiters.give(row):
                if row is not None:
                    self._buffer.put_front(row)
                return

    def _dispatch(self, rows: Sequence[Claimed]) -> None:
        extra = False
        for row in sorted(rows, key=lambda r: r.id):
            if not self._waiters.give(row):
                self._buffer.put_back(row)
                extra = True
        if extra:
            self._on_buffered(self.queue)
