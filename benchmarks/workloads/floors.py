"""Floors: what the workloads cost with no layer at all, printed above the comparison table.

On a plain asyncpg connection with ``synchronous_commit=off`` (our layer's default): a
``SELECT 1`` round trip; an ``INSERT`` of one row into channel_layer_pg_message followed by a
``DELETE ... RETURNING`` of it (the least a send plus a receive through a table can cost); and
``async_to_sync`` of a coroutine that does nothing, from a plain thread (the least any sync
call can cost). Each is the median of 5 rounds of 400 calls, after 50 not timed, in ms. Two
layers that both sit a little above the same floor cannot be far apart in ratio.

The fan-out floor, in deliveries/s, is the least a delivery into a receiving task costs in
Python, with no layer and no server: FANOUT_MEMBERS tasks each awaiting ``get()`` on an
``asyncio.Queue`` of its own, and each of FANOUT_SENDS "group_sends" putting the same message
object into every queue (what channels_rabbitmq does once its one delivery per process has
arrived); the median of 5 rounds.

The cross-process floor, in msg/s, has the cross-process workload's shape with no layer: two
worker processes (``bench.py --worker floor-receive`` / ``floor-send``) on one asyncpg
connection each, with ``enable_seqscan=off`` as well (as the layer's). The sender runs
``SEND_NOTIFY`` (one row in, and a ``pg_notify``, in one statement, as the layer's send does)
``count`` times, each awaited; the receiver takes the oldest row with ``CLAIM_ONE`` (``FOR
UPDATE SKIP LOCKED``, as a queue shared by processes needs) until it finds none, then waits
for the next ``NOTIFY`` on the same connection ("listen"), or claims again at once without
LISTEN ("poll"). Measured in the receiver from its first to its last message, as the
workload is.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import async_to_sync
from harness.db import connect
from harness.procs import (
    STARTUP_TIMEOUT,
    Worker,
    command_reader,
    emit,
    next_command,
    stop_workers,
    worker_services,
)

PREFIX = "bench_floor"
# The floor a send plus a receive is measured against: one row in, then the oldest out.
INSERT_ONE = (
    "INSERT INTO channel_layer_pg_message (prefix, queue, channel, expires_at, payload) "
    "VALUES ($1, $2, $2, now() + interval '60 s', $3)"
)
DELETE_OLDEST = (
    "DELETE FROM channel_layer_pg_message WHERE id = (SELECT id FROM channel_layer_pg_message "
    "WHERE prefix = $1 AND queue = $2 ORDER BY id LIMIT 1) RETURNING payload"
)
# The cross-process floor's statements: a send that wakes listeners, a claim that leaves rows
# another claimer holds to it.
SEND_NOTIFY = (
    "WITH inserted AS (INSERT INTO channel_layer_pg_message (prefix, queue, channel, expires_at, payload) "
    "VALUES ($1, $2, $2, now() + interval '60 s', $3) RETURNING id) "
    "SELECT count(pg_notify($4, '')) FROM inserted"
)
CLAIM_ONE = (
    "DELETE FROM channel_layer_pg_message WHERE id = (SELECT id FROM channel_layer_pg_message "
    "WHERE prefix = $1 AND queue = $2 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING payload"
)
CROSS_MODES = ("listen", "poll")
CROSS_MESSAGES = 2000
# About the size of the workload's messages once the layer has encoded them.
CROSS_PAYLOAD = b"\x83\xa4type\xadbench.message\xa1n\xcd\x03\xe8\xa4text\xd9d" + b"x" * 100


async def _median_ms(timed: Callable[[int], Awaitable[float]]) -> float:
    """Median ms per call over 5 rounds of 400; ``timed(n)`` makes n calls, returns the seconds."""
    await timed(50)  # not counted: prepared statements, caches
    return statistics.median([await timed(400) / 400 * 1000 for _ in range(5)])


def _calls(operation: Callable[[], Awaitable[Any]]) -> Callable[[int], Awaitable[float]]:
    async def timed(n: int) -> float:
        started = time.perf_counter()
        for _ in range(n):
            await operation()
        return time.perf_counter() - started

    return timed


def _sync_calls(n: int) -> float:
    """n calls of async_to_sync, in a thread with no event loop (asyncio.to_thread's)."""
    call = async_to_sync(_nothing)
    started = time.perf_counter()
    for _ in range(n):
        call()
    return time.perf_counter() - started


async def _nothing() -> None:
    return None


async def floors(pg_url: str, cross_messages: int = CROSS_MESSAGES) -> str:
    conn = await connect(pg_url)
    try:
        await conn.execute("SET synchronous_commit = off")
        queue, payload = f"{PREFIX}.q", b"\x81\xa4type\xa1x"

        async def insert_then_delete() -> None:
            await conn.execute(INSERT_ONE, PREFIX, queue, payload)
            await conn.fetchval(DELETE_OLDEST, PREFIX, queue)

        round_trip = await _median_ms(_calls(lambda: conn.fetchval("SELECT 1")))
        send_receive = await _median_ms(_calls(insert_then_delete))
    finally:
        try:
            await conn.execute("DELETE FROM channel_layer_pg_message WHERE prefix = $1", PREFIX)
        finally:
            await conn.close()
    sync_call = await _median_ms(lambda n: asyncio.to_thread(_sync_calls, n))
    try:
        rates = await cross_floor(pg_url, cross_messages)
        cross = (
            f"cross-process, {cross_messages} sequential INSERT + pg_notify in one process, DELETE … "
            f"RETURNING of the oldest row until none is left in another, waking on NOTIFY "
            f"{rates['listen']:,.0f} msg/s, claiming again at once without LISTEN {rates['poll']:,.0f} msg/s"
        )
    except Exception as exc:
        cross = f"cross-process not measured ({type(exc).__name__}: {exc})"
    fanout = await fanout_floor()
    return (
        f"floors (no layer): a round trip (SELECT 1) {round_trip:.2f} ms; INSERT then DELETE … RETURNING of "
        f"one row in the layer's table {send_receive:.2f} ms (the least a send plus a receive can cost); "
        f"async_to_sync of a coroutine that does nothing, from a plain thread {sync_call:.2f} ms "
        f"(the least a sync call can cost); fan-out to {FANOUT_MEMBERS} tasks through an asyncio.Queue each, "
        f"no layer, no server {fanout:,.0f} deliveries/s (the least a delivery into a receive costs); {cross}"
    )


# -- the fan-out floor ------------------------------------------------------------------------

FANOUT_MEMBERS, FANOUT_SENDS = 200, 100


async def fanout_floor() -> float:
    """Deliveries/s of FANOUT_SENDS puts into FANOUT_MEMBERS queues, each drained by a task."""

    async def round_of_sends() -> float:
        queues: list[asyncio.Queue[dict[str, Any]]] = [asyncio.Queue() for _ in range(FANOUT_MEMBERS)]

        async def member(queue: asyncio.Queue[dict[str, Any]]) -> None:
            for _ in range(FANOUT_SENDS):
                await queue.get()

        members = [asyncio.create_task(member(queue)) for queue in queues]
        await asyncio.sleep(0)  # every member waits in get() before the clock starts
        started = time.perf_counter()
        for n in range(FANOUT_SENDS):
            sent = {"type": "bench.message", "n": n}
            for queue in queues:
                queue.put_nowait(sent)
            await asyncio.sleep(0)  # one group_send after another, as the workload awaits each
        await asyncio.gather(*members)
        return FANOUT_MEMBERS * FANOUT_SENDS / (time.perf_counter() - started)

    await round_of_sends()  # not counted
    return statistics.median([await round_of_sends() for _ in range(5)])


# -- the cross-process floor ------------------------------------------------------------------


def cross_params(count: int, modes: tuple[str, ...] = CROSS_MODES, stall: float = 10.0) -> dict[str, Any]:
    """A floor run's worker parameters: its own queue, so nothing left over is counted."""
    return {"count": count, "modes": list(modes), "stall": stall, "queue": f"{PREFIX}.cross.{os.getpid()}"}


async def cross_floor(pg_url: str, count: int = CROSS_MESSAGES) -> dict[str, float]:
    """msg/s for each of CROSS_MODES, one receiver and one sender process for them all."""
    params = cross_params(count)
    # Both start at once: Python's start-up is most of the time this takes.
    receiver = await Worker.start("floor-receive", pg_url, **params)
    sender = await Worker.start("floor-send", pg_url, **params)
    rates: dict[str, float] = {}
    try:
        for mode in CROSS_MODES:
            await receiver.expect("ready", STARTUP_TIMEOUT)
            sender.command(command="send")
            rates[mode] = (await receiver.expect("result", params["stall"] + STARTUP_TIMEOUT))["rate"]
            await sender.expect("sent", params["stall"])
    finally:
        await stop_workers([receiver, sender], patience=5)
    return rates


async def _floor_connection() -> Any:
    # Set as on the layer's connections. Without enable_seqscan=off, a claim planned while the
    # table is empty (after a VACUUM) scans the table, and each of its dead rows, all run long.
    return await connect(
        worker_services()[0], server_settings={"synchronous_commit": "off", "enable_seqscan": "off"}
    )


async def floor_receive(params: dict[str, Any]) -> None:
    """For each mode: "ready", then claims until ``count`` messages came, and "result": the
    rate (msg/s), the claims that found nothing and the NOTIFYs that came. "progress" every
    100 messages, and "mark" at ``marks``, as the workload's receiver."""
    conn = await _floor_connection()
    queue = params["queue"]
    try:
        for mode in params["modes"]:
            await _receive_all(conn, mode, params)
    finally:
        try:
            await conn.execute(
                "DELETE FROM channel_layer_pg_message WHERE prefix = $1 AND queue = $2", PREFIX, queue
            )
        finally:
            await conn.close()


async def _receive_all(conn: Any, mode: str, params: dict[str, Any]) -> None:
    count, stall, queue, marks = params["count"], params["stall"], params["queue"], params.get("marks", ())
    woken = asyncio.Event()
    notified = 0

    def on_notify(*_: object) -> None:
        nonlocal notified
        notified += 1
        woken.set()

    if mode == "listen":
        await conn.add_listener(queue, on_notify)
    received = empty = 0
    first = last = 0.0
    started = time.perf_counter() + STARTUP_TIMEOUT  # the sender may still be starting
    emit(event="ready")
    while received < count:
        # Cleared before each claim: a NOTIFY that comes while it runs makes the wait below
        # return at once, so a row committed after the claim's snapshot is not missed.
        woken.clear()
        if await conn.fetchval(CLAIM_ONE, PREFIX, queue) is None:
            empty += 1
            if time.perf_counter() - (last or started) > stall:
                raise TimeoutError(f"no message for {stall:g} s after {received}/{count}")
            if mode == "listen":
                await asyncio.wait_for(woken.wait(), stall)
            continue
        received += 1
        last = time.perf_counter()
        first = first or last
        if received in marks:
            emit(event="mark", cpu=time.process_time(), at=time.monotonic())
        if received % 100 == 0:
            emit(event="progress", received=received)
    if mode == "listen":
        await conn.remove_listener(queue, on_notify)
    rate = (count - 1) / (last - first) if last > first else float("inf")
    emit(event="result", rate=rate, empty_claims=empty, notifies=notified)


async def floor_send(params: dict[str, Any]) -> None:
    """For each "send" command: ``count`` sequential sends, then "sent"."""
    conn = await _floor_connection()
    commands = await command_reader()
    count, stall, queue = params["count"], params["stall"], params["queue"]
    marks = params.get("marks", ())
    try:
        for _mode in params["modes"]:
            command = await next_command(commands, stall + STARTUP_TIMEOUT)
            if command.get("command") != "send":
                return
            for n in range(count):
                if n in marks:
                    emit(event="mark", cpu=time.process_time(), at=time.monotonic())
                await conn.fetchval(SEND_NOTIFY, PREFIX, queue, CROSS_PAYLOAD, queue)
            emit(event="sent", sent=count)
    finally:
        await conn.close()


WORKERS = {"floor-receive": floor_receive, "floor-send": floor_send}
