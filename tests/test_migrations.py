"""The schema: Alembic from a checkout, and the migrate command of the installed package."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from channel_layer_pg import PostgresChannelLayer, migrate
from channel_layer_pg.store.schema import VERSION_TABLE
from tests.conftest import connect
from tests.helpers import TIMEOUT, receive

ROOT = Path(__file__).resolve().parent.parent


async def run(*command: str, url: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=ROOT,
        env={**os.environ, "CHANNEL_LAYER_PG_URL": url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), TIMEOUT * 3)
    return process.returncode or 0, output.decode()


async def tables(url: str) -> set[str]:
    conn = await connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {row["tablename"] for row in rows}


async def test_alembic_upgrade_head_and_downgrade_base_from_a_checkout(empty_database_url: str) -> None:
    code, output = await run(sys.executable, "-m", "alembic", "upgrade", "head", url=empty_database_url)
    assert code == 0, output
    assert await tables(empty_database_url) == {
        "channel_layer_pg_message",
        "channel_layer_pg_group_member",
        VERSION_TABLE,
    }
    code, output = await run(sys.executable, "-m", "alembic", "downgrade", "base", url=empty_database_url)
    assert code == 0, output
    assert await tables(empty_database_url) == {VERSION_TABLE}


async def test_the_migrate_command_creates_a_working_schema(empty_database_url: str) -> None:
    code, output = await run(
        sys.executable, "-m", "channel_layer_pg", "migrate", "--url", empty_database_url, url=""
    )
    assert code == 0, output
    async with PostgresChannelLayer(url=empty_database_url) as layer:
        await layer.send("test.migrated", {"type": "ok"})
        assert await receive(layer, "test.migrated") == {"type": "ok"}


async def test_migrate_twice_changes_nothing_and_leaves_other_version_tables_alone(
    empty_database_url: str,
) -> None:
    conn = await connect(empty_database_url)
    try:
        await conn.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        await conn.execute("INSERT INTO alembic_version VALUES ('the_apps_own')")
        migrate(empty_database_url)
        migrate(empty_database_url)
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == "the_apps_own"
        assert await conn.fetchval(f"SELECT count(*) FROM {VERSION_TABLE}") == 1
    finally:
        await conn.close()
