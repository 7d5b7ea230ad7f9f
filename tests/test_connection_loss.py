"""Lost connections: killed sessions and server restarts cost latency, never messages."""

from __future__ import annotations

import asyncio

from sqlalchemy.engine import make_url

from channel_layer_pg import DatabaseUnreachableError
from channel_layer_pg.embedded import EmbeddedPostgres
from tests.helpers import TIMEOUT, LayerFactory, Sql, receive, without_the_poll

LAYER_SESSIONS = (
    "FROM pg_stat_activity WHERE application_name LIKE 'channel_layer_pg%' "
    "AND datname = current_database() AND pid <> pg_backend_pid()"
)


async def kill_layer_sessions(sql: Sql, *, only_listeners: bool = False, role: str | None = None) -> int:
    """Terminate the layer's server sessions, as a restart would, and wait until they are gone."""
    condition = " AND query LIKE 'LISTEN%'" if only_listeners else ""
    if role is not None:
        condition += f" AND usename = '{role}'"
    pids = [row["pid"] for row in await sql(f"SELECT pid {LAYER_SESSIONS}{condition}")]
    await sql("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", pids)
    # The layer reconnects at once, so wait for these sessions to end, not for none to exist.
    async with asyncio.timeout(TIMEOUT):
        # Polling the server for an observable state, bounded: no event exists for it.
        while (await sql("SELECT count(*) AS n FROM pg_stat_activity WHERE pid = ANY($1)", pids))[0]["n"]:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    return len(pids)


async def listening(sql: Sql) -> None:
    async with asyncio.timeout(TIMEOUT):
        # Polling the server for an observable state, bounded: no event exists for it.
        while not (await sql(f"SELECT count(*) AS n {LAYER_SESSIONS} AND query LIKE 'LISTEN%'"))[0]["n"]:  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_a_waiting_receive_completes_after_its_listen_connection_is_killed(
    make_layer: LayerFactory, sql: Sql
) -> None:
    # With the readers' poll an hour away, only the reconnect's own wake-up can deliver.
    receiver, sender = make_layer(fault_hooks=without_the_poll()), make_layer()
    receiving = asyncio.create_task(receiver.receive("test.survivor"))
    await listening(sql)
    assert await kill_layer_sessions(sql, only_listeners=True) == 1
    await sender.send("test.survivor", {"type": "after the kill"})
    assert await asyncio.wait_for(receiving, TIMEOUT) == {"type": "after the kill"}


async def test_sends_and_receives_work_after_every_pooled_session_is_killed(
    make_layer: LayerFactory, sql: Sql
) -> None:
    layer = make_layer(capacity=1000)
    # Many sends at once open many pooled connections: more dead ones than retry attempts.
    await asyncio.gather(*(layer.send("test.warm", {"type": "warm"}) for _ in range(100)))
    await layer.send("test.pool", {"type": "before"})
    assert await receive(layer, "test.pool") == {"type": "before"}
    assert await kill_layer_sessions(sql) >= 1
    await layer.send("test.pool", {"type": "after"})
    assert await receive(layer, "test.pool") == {"type": "after"}


async def test_messages_sent_while_the_listener_was_down_are_delivered(
    make_layer: LayerFactory, sql: Sql, runtime_role_url: str
) -> None:
    receiver, sender = make_layer(url=runtime_role_url, fault_hooks=without_the_poll()), make_layer()
    channel = await receiver.new_channel()
    receiving = asyncio.create_task(receiver.receive(channel))
    await listening(sql)
    role = make_url(runtime_role_url).username
    # Keep the receiver's listener from reconnecting while we send, so its NOTIFY is surely
    # lost: only looking at the table again after reconnecting can deliver the message.
    await sql(f'ALTER ROLE "{role}" NOLOGIN')
    try:
        # Every session of the receiver: a pooled one could otherwise become the new listener.
        await kill_layer_sessions(sql, role=role)
        await sender.send(channel, {"type": "sent during the outage"})
        await sender.send(channel, {"type": "second"})
    finally:
        await sql(f'ALTER ROLE "{role}" LOGIN')
    assert await asyncio.wait_for(receiving, TIMEOUT) == {"type": "sent during the outage"}
    assert await receive(receiver, channel) == {"type": "second"}


async def test_a_receiver_that_never_listened_still_rides_out_an_outage(
    make_layer: LayerFactory, sql: Sql, runtime_role_url: str
) -> None:
    receiver, sender = make_layer(url=runtime_role_url), make_layer()
    await sender.send("test.outage", {"type": "first"})
    # Found at once by the receive's own claim: no reader started, nothing LISTENed yet.
    assert await receive(receiver, "test.outage") == {"type": "first"}
    role = make_url(runtime_role_url).username
    await sql(f'ALTER ROLE "{role}" NOLOGIN')
    try:
        await kill_layer_sessions(sql, role=role)
        receiving = asyncio.create_task(receiver.receive("test.outage"))
        # The receive meets the outage; having reached the database before, it waits.
        done, _ = await asyncio.wait({receiving}, timeout=1.0)
        assert not done, f"the receive ended during the outage: {receiving}"
    finally:
        await sql(f'ALTER ROLE "{role}" LOGIN')
    await sender.send("test.outage", {"type": "after the outage"})
    assert await asyncio.wait_for(receiving, TIMEOUT) == {"type": "after the outage"}


async def test_a_server_restart_under_traffic_loses_nothing_that_was_stored(
    make_layer: LayerFactory, embedded: EmbeddedPostgres
) -> None:
    sender = make_layer(url=embedded.url, capacity=10_000)
    receiver = make_layer(url=embedded.url, capacity=10_000)
    stored: list[int] = []
    failed: list[int] = []  # lost mid-statement: may or may not have been stored
    got: list[int] = []
    halfway, all_in = asyncio.Event(), asyncio.Event()

    async def send_all() -> None:
        for n in range(400):
            try:
                await sender.send("test.restart", {"type": "n", "n": n})
                stored.append(n)
            except DatabaseUnreachableError:
                failed.append(n)
            if n == 100:
                halfway.set()

    async def receive_all() -> None:
        while True:
            got.append((await receiver.receive("test.restart"))["n"])
            if not sending.done() or set(stored) - set(got):
                continue
            all_in.set()

    sending = asyncio.create_task(send_all())
    receiving = asyncio.create_task(receive_all())
    try:
        await asyncio.wait_for(halfway.wait(), TIMEOUT)
        await asyncio.to_thread(embedded.restart)
        await asyncio.wait_for(sending, TIMEOUT * 3)
        await asyncio.wait_for(all_in.wait(), TIMEOUT * 3)
    finally:
        receiving.cancel()
        await asyncio.gather(receiving, return_exceptions=True)
    assert len(got) == len(set(got)), "a message was delivered twice"
    assert got == sorted(got), "messages were delivered out of order"
    assert set(stored) <= set(got) <= set(stored) | set(failed)
