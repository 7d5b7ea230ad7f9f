"""The layer's statements find rows through indexes, even when planned on a near-empty table.

A queue table is empty most of the time, and VACUUM then records it as empty. A plan made on
such a table scans it whole, and asyncpg keeps each statement prepared, plan and all, for the
life of the connection: every send would then cost time in proportion to the backlog.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.sql.base import Executable

from channel_layer_pg import migrate, statements
from channel_layer_pg.config import build_config
from channel_layer_pg.database import StatementRunner, create_engine
from tests.conftest import connect

TABLES = ("channel_layer_pg_message", "channel_layer_pg_group_member")

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
    "ENQUEUE": (
        statements.ENQUEUE,
        {"prefix": "p", "expiry": EXPIRY, "payload": b"x", "queues": ["q", "s.a!"],
         "channels": ["q", "s.a!"], "recipients": ["", "s.a!b s.a!c"], "capacities": [100, 100],
         "topics": ["t", "u"]},
    ),
    "CLAIM": (statements.CLAIM, {"prefix": "p", "queue": "s.a!", "channels": ["s.a!b"], "limit": 1}),
    "CLAIM_CHANNEL": (statements.CLAIM_CHANNEL, {"prefix": "p", "queue": "q", "limit": 1}),
    "GROUP_SEND": (
        statements.GROUP_SEND,
        {"prefix": "p", "group": "g", "own_suffix": ".a!", "capacity": 100, "expiry": EXPIRY,
         "payload": b"x"},
    ),
    "GROUP_MEMBERS": (statements.GROUP_MEMBERS, {"prefix": "p", "group": "g"}),
}  # fmt: skip


@pytest.fixture
async def analyzed_empty_url(empty_database_url: str) -> AsyncIterator[str]:
    """A migrated database whose tables VACUUM ANALYZE has just recorded as empty."""
    migrate(empty_database_url)
    admin = await connect(empty_database_url)
    try:
        for table in TABLES:
            await admin.execute(f"VACUUM ANALYZE {table}")
    finally:
        await admin.close()
    yield empty_database_url


@pytest.mark.parametrize("name", HOT_STATEMENTS)
async def test_hot_statements_use_indexes_on_a_table_recorded_as_empty(
    analyzed_empty_url: str, name: str
) -> None:
    statement, parameters = HOT_STATEMENTS[name]
    config = build_config({"url": analyzed_empty_url})
    engine, owns_engine = create_engine(config, use_given_engine=False)
    runner = StatementRunner(engine, config, owns_engine=owns_engine)
    # A connection from the layer's own pool, set up as every one of them is.
    held = await runner._connections.acquire()
    try:
        compiled = statement.compile(dialect=engine.dialect)  # type: ignore[attr-defined]
        arguments = [
            parameters[key] if key in parameters else compiled.params[key]
            for key in compiled.positiontup or ()
        ]
        async with held.driver.transaction():
            rows = await held.driver.fetch(f"EXPLAIN (COSTS OFF) {compiled}", *arguments)
        plan = "\n".join(row[0] for row in rows)
    finally:
        await runner._connections.release(held)
        await runner.close()
        await engine.dispose()
    scanned = [table for table in TABLES if f"Seq Scan on {table}" in plan]
    assert not scanned, f"{name} scans {scanned} whole:\n{plan}"
