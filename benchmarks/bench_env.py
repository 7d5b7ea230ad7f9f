"""What the numbers depend on besides the layers: machine, versions, source revision, table state.

Printed above the table so that a run can be compared with another one, or reproduced.
"""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import sys
from importlib import metadata, util
from typing import Any

from bench_layers import Services

PACKAGES = ("channel-layer-pg", "channels", "channels-redis", "channels-postgres", "asyncpg", "psycopg")
# The layer's queue tables: insert-and-delete churn leaves dead rows only VACUUM removes.
OUR_TABLES = ("channel_layer_pg_message", "channel_layer_pg_group_member")


async def environment(services: Services, vacuum: bool) -> list[str]:
    lines = [
        f"machine: {os.cpu_count()} CPUs, {platform.platform()}",
        f"python: {platform.python_version()} ({sys.executable})",
        *await _postgres(services.pg_url, vacuum),
        f"redis: {await _redis_version(services.redis_url)}",
        "packages: " + ", ".join(_version(package) for package in PACKAGES),
        f"channel_layer_pg source: {_source_revision()}",
    ]
    return lines


def _version(package: str) -> str:
    try:
        return f"{package} {metadata.version(package)}"
    except metadata.PackageNotFoundError:
        return f"{package} (not installed)"


def _source_revision() -> str:
    """The git commit of the imported channel_layer_pg, and whether its tree has local changes."""
    spec = util.find_spec("channel_layer_pg")
    if spec is None or spec.origin is None:
        return "not installed"
    directory = os.path.dirname(spec.origin)
    try:
        described = subprocess.run(
            ["git", "-C", directory, "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        described = "not a git checkout"
    return f"{directory} ({described})"


async def _postgres(url: str, vacuum: bool) -> list[str]:
    """Server version and autovacuum, and the dead rows in our tables (after VACUUM if asked)."""
    try:
        conn = await connect(url)
    except Exception as exc:
        return [f"postgresql: unknown ({type(exc).__name__}: {_first_line(str(exc))})"]
    try:
        version = await conn.fetchval("SHOW server_version")
        autovacuum = await conn.fetchval("SHOW autovacuum")
        lines = [f"postgresql: {version}, autovacuum={autovacuum}"]
        present = [table for table in OUR_TABLES if await conn.fetchval("SELECT to_regclass($1)", table)]
        if vacuum:
            await vacuum_tables(conn, present)
        lines.append(
            f"our tables{' after VACUUM ANALYZE' if vacuum else ''}: " + await dead_rows(conn, present)
        )
        return lines
    finally:
        await conn.close()


async def connect(url: str) -> Any:
    """A plain asyncpg connection to ``url`` (any SQLAlchemy-style PostgreSQL URL)."""
    import asyncpg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return await asyncio.wait_for(
        asyncpg.connect(
            user=parsed.username,
            password=parsed.password or None,
            host=parsed.host,
            port=parsed.port,
            database=parsed.database,
        ),
        10,
    )


async def vacuum_tables(conn: Any, tables: tuple[str, ...] | list[str] = OUR_TABLES) -> None:
    """VACUUM (ANALYZE) ``tables``: clears the dead rows a server without autovacuum keeps."""
    for table in tables:
        await asyncio.wait_for(conn.execute(f"VACUUM (ANALYZE) {table}"), 120)


async def dead_rows(conn: Any, tables: list[str]) -> str:
    if not tables:
        return "not created yet"
    rows = await conn.fetch(
        "SELECT relname, n_live_tup, n_dead_tup FROM pg_stat_user_tables WHERE relname = ANY($1::text[])",
        tables,
    )
    # Statistics arrive with a delay and are estimates; enough to tell a bloated table.
    return ", ".join(f"{r['relname']} ~{r['n_live_tup']} live / ~{r['n_dead_tup']} dead rows" for r in rows)


async def _redis_version(url: str) -> str:
    try:
        import redis.asyncio as aioredis
    except ImportError:
        return "unknown (redis package not installed)"
    client = aioredis.from_url(url)
    try:
        info = await asyncio.wait_for(client.info("server"), 5)
        return str(info.get("redis_version", "unknown"))
    except Exception as exc:
        return f"unknown ({type(exc).__name__}: {_first_line(str(exc))})"
    finally:
        await client.aclose()


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""
