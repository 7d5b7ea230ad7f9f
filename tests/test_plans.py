"""The layer's statements find rows through indexes, even when planned on a near-empty table.

A queue table is empty most of the time, and VACUUM then records it as empty. A plan made on
such a table scans it whole, and asyncpg keeps each statement prepared, plan and all, for the
life of the connection: every send would then cost time in proportion to the backlog.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.sql.base import Executable

from channel_layer_pg import migrate
from channel_layer_pg.config import build_config
from channel_layer_pg.store import statements
from channel_layer_pg.store.db import create_engine
from channel_layer_pg.store.schema import group_member, message
from tests.conftest import connect

TABLES = ("channel_layer_pg_message", "channel_layer_pg_group_member")
EXPIRY_INDEXES = ("channel_layer_pg_message_expires_idx", "channel_layer_pg_group_member_expires_idx")

EXPIRY = timedelta(seconds=60)
# Sample arguments for each statement on the hot path, as the layer binds them.
HOT_STATEMENTS: dict[str, tuple[Executable, dict[str, Any]]] = {
    "SEND": (
        statements.SEND,
        {"prefix": "p", "queue": "q", "channel": "q", "capacity": 100, "expiry": EXPIRY,
         "payload": b"x", "topic": "t"},
    ),
    "SEND_MANY": (
        statements.SEND_MANY,
        {"prefix": "p", "expiry": EXPIRY, "queues": ["q", "r"], "channels": ["q", "r"],
         "capacities": [100, 100], "payloads": [b"x", b"y"], "topic_queues": ["q", "r"],
         "topics": ["t", "u"]},
    ),
    "CLAIM": (statements.CLAIM, {"prefix": "p", "queue": "s.a!", "channels": ["s.a!b"], "limit": 1}),
    "CLAIM_CHANNEL": (statements.CLAIM_CHANNEL, {"prefix": "p", "queue": "q", "limit": 1}),
    "GROUP_SEND": (
        statements.GROUP_SEND,
        {"prefix": "p", "group": "g", "own_suffix": ".a!", "capacity": 100, "capacity_patterns": [],
         "capacity_limits": [], "expiry": EXPIRY, "payload": b"x"},
    ),
}  # fmt: skip


@pytest.fixture
async def analyzed_empty_url(empty_database_url: str) -> AsyncIterator[str]:
    """A migrated database whose tables VACUUM ANALYZE has just recorded as empty, after use."""
    async with _analyzed_after_use(empty_database_url) as url:
        yield url


@asynccontextmanager
async def _analyzed_after_use(empty_database_url: str, *, backlog: bool = True) -> AsyncIterator[str]:
    """analyzed_empty_url: tables VACUUM ANALYZE has just recorded as empty, after use.

    Rows were stored and deleted first, as delivered messages and left groups are: VACUUM
    keeps the index pages they took, and the planner weighs an index scan by its pages.
    ``backlog``: then a short backlog in one queue and a group's members, else nothing.
    """
    migrate(empty_database_url)
    admin = await connect(empty_database_url)
    try:
        await admin.execute(
            "INSERT INTO channel_layer_pg_message (prefix, queue, channel, expires_at, payload) "
            "SELECT 'used', repeat('q', 100) || n, repeat('q', 100) || n, now() + interval '1 hour', '' "
            "FROM generate_series(1, 20000) AS n"
        )
        await admin.execute(
            "INSERT INTO channel_layer_pg_group_member (prefix, group_name, channel, expires_at) "
            "SELECT 'used', 'group-' || n % 100, 'specific.' || n || '!x', now() "
            "FROM generate_series(1, 20000) AS n"
        )
        for table in TABLES:
            await admin.execute(f"DELETE FROM {table}")
        if backlog:
            # A short backlog in one queue, the only one ANALYZE will see, and a group's members.
            await admin.execute(
                "INSERT INTO channel_layer_pg_message (prefix, queue, channel, expires_at, payload) "
                "SELECT 'p', 'q', 'q', now() + interval '1 hour', '' FROM generate_series(1, 100)"
            )
            await admin.execute(
                "INSERT INTO channel_layer_pg_group_member (prefix, group_name, channel, expires_at) "
                "SELECT 'p', 'g', 'member-' || n, now() + interval '1 hour' FROM generate_series(1, 100) AS n"
            )
        for table in TABLES:
            await admin.execute(f"VACUUM ANALYZE {table}")
    finally:
        await admin.close()
    yield empty_database_url


@pytest.fixture(params=["backlog after use", "empty after use", "never used"])
async def analyzed_url(request: pytest.FixtureRequest, empty_database_url: str) -> AsyncIterator[str]:
    """analyzed_empty_url's tables; the same with no row left at all when VACUUM ANALYZE ran
    (a queue table vacuumed while every message had been received); or tables that were
    empty and never used, so that PostgreSQL knows nothing of their size, as on a new
    installation. In each, every plan looks about as cheap as any other."""
    if request.param != "never used":
        backlog = request.param == "backlog after use"
        async with _analyzed_after_use(empty_database_url, backlog=backlog) as url:
            yield url
        return
    migrate(empty_database_url)
    admin = await connect(empty_database_url)
    try:
        for table in TABLES:
            await admin.execute(f"VACUUM ANALYZE {table}")
    finally:
        await admin.close()
    yield empty_database_url


def _leading_columns() -> dict[str, str]:
    """Each index of the layer's tables, by name, and the first column it is sorted by."""
    leading = {}
    for table in (message, group_member):
        leading[f"{table.name}_pkey"] = next(iter(table.primary_key.columns)).name
        for index in table.indexes:
            leading[str(index.name)] = next(iter(index.columns)).name
    return leading


def unbounded_index_scans(plan: str) -> list[str]:
    """The index scans in ``plan`` that read an index from end to end.

    A scan is bounded by an Index Cond on the index's first column, or by a Limit right above
    it (the newest id, read backward from the primary key's end). Any other scan reads every
    entry of its index, dead rows' entries included, and costs time in proportion to the
    table: one with no Index Cond, or one whose Index Cond is on a later column only (the
    ids, say, looked for in every queue of the (prefix, queue, id) index).
    """
    leading = _leading_columns()
    lines = plan.splitlines()
    unbounded = []
    for number, line in enumerate(lines):
        scan = re.search(r"Index (?:Only )?Scan (?:Backward )?using (\S+)", line)
        if scan is None:
            continue
        depth = len(line) - len(line.lstrip(" ->"))
        details = []
        for detail in lines[number + 1 :]:
            if "->" in detail or len(detail) - len(detail.lstrip()) <= depth:
                break
            details.append(detail)
        parent = next(
            (above for above in reversed(lines[:number]) if len(above) - len(above.lstrip(" ->")) < depth),
            "",
        )
        first = leading.get(scan.group(1), "")
        conditions = " ".join(detail for detail in details if "Index Cond:" in detail)
        if not re.search(rf"\({first} ", conditions) and "Limit" not in parent:
            unbounded.append(line.strip())
    return unbounded


async def plan_of_prepared(driver: Any, sql: str, arguments: list[Any], *, analyze: bool = False) -> str:
    """The generic plan of ``sql`` prepared on ``driver``'s session, as asyncpg prepares it.

    ``analyze`` runs it too (EXPLAIN ANALYZE), to show which parts of the plan ran: the
    caller rolls back what it changed.
    """
    # The plan PostgreSQL switches to after five calls, made once for any arguments: the one
    # a connection keeps, and the one that can be wrong for arguments it did not see.
    await driver.execute("SET plan_cache_mode = force_generic_plan")
    await driver.execute(f"PREPARE planned AS {sql}")
    try:
        (types,) = await driver.fetchrow(
            "SELECT parameter_types::text[] FROM pg_prepared_statements WHERE name = 'planned'"
        )
        # EXECUTE takes literals, not bound parameters: PostgreSQL quotes each argument.
        literals = [
            await driver.fetchval(f"SELECT quote_nullable(CAST($1 AS {type_}))", argument)
            for type_, argument in zip(types, arguments, strict=True)
        ]
        options = "ANALYZE, TIMING OFF, COSTS OFF" if analyze else "COSTS OFF"
        rows = await driver.fetch(f"EXPLAIN ({options}) EXECUTE planned({', '.join(literals)})")
        return "\n".join(row[0] for row in rows)
    finally:
        await driver.execute("DEALLOCATE planned")


@pytest.mark.parametrize("name", HOT_STATEMENTS)
async def test_hot_statements_use_indexes_on_a_table_recorded_as_empty(analyzed_url: str, name: str) -> None:
    statement, parameters = HOT_STATEMENTS[name]
    # A connection opened as the layer opens its own.
    engine, _ = create_engine(build_config({"url": analyzed_url}), use_given_engine=False)
    try:
        connection = await engine.connect()
        driver = (await connection.get_raw_connection()).driver_connection
        compiled = statement.compile(dialect=engine.dialect)  # type: ignore[attr-defined]
        arguments = [
            parameters[key] if key in parameters else compiled.params[key]
            for key in compiled.positiontup or ()
        ]
        plan = await plan_of_prepared(driver, str(compiled), arguments)
        await connection.close()
    finally:
        await engine.dispose()
    scanned = [table for table in TABLES if f"Seq Scan on {table}" in plan]
    assert not scanned, f"{name} scans {scanned} whole:\n{plan}"
    # An expiry index finds every unexpired row of every queue (or group), to be filtered and
    # sorted: as slow as scanning the table.
    by_expiry = [index for index in EXPIRY_INDEXES if f"using {index}" in plan]
    assert not by_expiry, f"{name} reads its rows by expiry ({by_expiry}):\n{plan}"
    # The prefix is the first column of every index a statement should use: a prefix in a
    # Filter means some index (the primary key, in id order) is walked from end to end.
    assert "Filter: ((prefix" not in plan, f"{name} walks an index, filtering by prefix:\n{plan}"
    walked = unbounded_index_scans(plan)
    assert not walked, f"{name} reads an index from end to end ({walked}):\n{plan}"


@pytest.mark.parametrize(("queue", "looked_up"), [("empty", False), ("q", True)])
async def test_a_send_looks_up_the_newest_id_only_for_a_queue_with_rows(
    analyzed_empty_url: str, queue: str, looked_up: bool
) -> None:
    # The newest ids are mostly rows already received, dead until VACUUM, and the lookup walks
    # back over them; a queue with no row has room whatever the newest id is.
    statement, parameters = HOT_STATEMENTS["SEND"]
    engine, _ = create_engine(build_config({"url": analyzed_empty_url}), use_given_engine=False)
    try:
        connection = await engine.connect()
        driver = (await connection.get_raw_connection()).driver_connection
        compiled = statement.compile(dialect=engine.dialect)  # type: ignore[attr-defined]
        # Room for one more in either queue ("q" holds 100 rows), so the send stores its row.
        bound = {**parameters, "queue": queue, "channel": queue, "capacity": 1000}
        arguments = [
            bound[key] if key in bound else compiled.params[key] for key in compiled.positiontup or ()
        ]
        transaction = driver.transaction()
        await transaction.start()
        try:
            plan = await plan_of_prepared(driver, str(compiled), arguments, analyze=True)
        finally:
            await transaction.rollback()
        await connection.close()
    finally:
        await engine.dispose()
    (newest,) = [line for line in plan.splitlines() if "Backward using channel_layer_pg_message_pkey" in line]
    assert ("never executed" not in newest) is looked_up, plan
    # The row was stored (PostgreSQL 18 prints row counts as "1.00").
    assert re.search(r"CTE Scan on inserted \(actual rows=1(\.00)? ", plan), plan


@pytest.mark.parametrize(("pending", "counted"), [(5, False), (120, True)])
async def test_a_group_send_counts_each_member_s_rows_only_when_its_process_queue_is_long(
    analyzed_empty_url: str, pending: int, counted: bool
) -> None:
    # 50 members in another process whose queue holds ``pending`` group rows naming them all,
    # behind 200 later rows elsewhere (so the id span cannot settle it): with fewer rows than
    # the capacity of 100, counting the queue's rows settles every member at once.
    members = [f"s.remote!m{n}" for n in range(50)]
    conn = await connect(analyzed_empty_url)
    try:
        await conn.execute(
            "INSERT INTO channel_layer_pg_group_member SELECT 'p', 'g', m, now() + interval '1 hour' "
            "FROM unnest($1::text[]) AS m",
            members,
        )
        await conn.execute(
            "INSERT INTO channel_layer_pg_message (prefix, queue, channel, recipients, expires_at, payload) "
            "SELECT 'p', 's.remote!', 's.remote!', $1, now() + interval '1 hour', 'x' "
            "FROM generate_series(1, $2)",
            members,
            pending,
        )
        await conn.execute(
            "INSERT INTO channel_layer_pg_message (prefix, queue, channel, expires_at, payload) "
            "SELECT 'p', 'other', 'other', now() + interval '1 hour', 'x' FROM generate_series(1, 200)"
        )
        statement, parameters = HOT_STATEMENTS["GROUP_SEND"]
        compiled = statement.compile(dialect=PGDialect_asyncpg())
        arguments = [
            parameters[key] if key in parameters else compiled.params[key]
            for key in compiled.positiontup or ()
        ]
        transaction = conn.transaction()
        await transaction.start()
        try:
            plan = await plan_of_prepared(conn, str(compiled), arguments, analyze=True)
        finally:
            await transaction.rollback()
    finally:
        await conn.close()
    assert re.search(r"loops=50\b", plan) is None, f"a subquery ran once per member:\n{plan}"
    # The aggregate under "CTE counts" gets no row unless the queue's rows were counted
    # (PostgreSQL 18 prints fractional row counts: rows=0.00).
    counts = plan[plan.index("CTE counts") :].splitlines()[1]
    assert (re.search(r"rows=0(\.0+)? ", counts) is None) is counted, plan
