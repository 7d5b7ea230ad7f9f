"""Plain asyncpg for what no layer should do: fill and empty tables, VACUUM, EXPLAIN, probes.

Also the header every command prints first: machine, versions, which channel_layer_pg was
imported, and the state of its tables, so that a run can be compared with another.
"""

from __future__ import annotations

import asyncio
import os
import platform
import re
import sys
from importlib import metadata
from typing import Any

from sqlalchemy.engine import make_url

from .layers import imported_from

TABLES = ("channel_layer_pg_message", "channel_layer_pg_group_member")
PACKAGES = (
    "channel-layer-pg", "channels", "channels-redis", "channels-postgres", "channels-rabbitmq",
    "channels-nats", "asyncpg", "psycopg",
)  # fmt: skip


async def connect(url: str, **options: Any) -> Any:
    """A plain asyncpg connection to ``url`` (any SQLAlchemy-style PostgreSQL URL)."""
    import asyncpg

    parsed = make_url(url)
    return await asyncio.wait_for(
        asyncpg.connect(
            user=parsed.username,
            password=parsed.password or None,
            host=parsed.query.get("host") or parsed.host,
            port=parsed.port,
            database=parsed.database,
            **options,
        ),
        10,
    )


async def vacuum(conn: Any, tables: tuple[str, ...] = TABLES) -> None:
    """VACUUM (ANALYZE): clears the dead rows a server without autovacuum keeps forever.

    Without giving the emptied pages back to the file system (TRUNCATE false): the workload
    that came first would otherwise pay for growing the table again, page by page, and
    only ours (whose tables these are) would pay it.
    """
    for table in tables:
        await asyncio.wait_for(conn.execute(f"VACUUM (ANALYZE, TRUNCATE false) {table}"), 300)


async def dead_rows(conn: Any) -> str:
    rows = await conn.fetch(
        "SELECT relname, n_live_tup, n_dead_tup FROM pg_stat_user_tables WHERE relname = ANY($1::text[])",
        list(TABLES),
    )
    # Estimates, and late: enough to tell a bloated table.
    return ", ".join(f"{r['relname']} ~{r['n_live_tup']} live / ~{r['n_dead_tup']} dead rows" for r in rows)


async def delete_prefix(conn: Any, prefix: str, *, like: bool = False) -> None:
    """Remove what a run left under ``prefix`` (a LIKE pattern with ``like``)."""
    for table in TABLES:
        await conn.execute(f"DELETE FROM {table} WHERE prefix {'LIKE' if like else '='} $1", prefix)


async def header(url: str, *, redis: str | None = None, vacuum_first: bool = False) -> list[str]:
    """What the numbers depend on besides the layers; printed above every run's figures."""
    lines = [
        f"machine: {os.cpu_count()} CPUs, {platform.platform()}",
        f"python: {platform.python_version()} ({sys.executable})",
        f"channel_layer_pg imported from: {imported_from()}",
    ]
    try:
        conn = await connect(url)
    except Exception as exc:
        lines.append(f"postgresql: unknown ({type(exc).__name__}: {first_line(exc)})")
    else:
        try:
            version, autovacuum = await conn.fetchrow(
                "SELECT current_setting('server_version'), current_setting('autovacuum')"
            )
            lines.append(f"postgresql: {version}, autovacuum={autovacuum}")
            if vacuum_first:
                await vacuum(conn)
            lines.append(
                f"our tables{' after VACUUM ANALYZE' if vacuum_first else ''}: {await dead_rows(conn)}"
            )
        finally:
            await conn.close()
    if redis is not None:
        lines.append(f"redis: {await _redis_version(redis)}")
    lines.append("packages: " + ", ".join(_version(package) for package in PACKAGES))
    return lines


def _version(package: str) -> str:
    try:
        return f"{package} {metadata.version(package)}"
    except metadata.PackageNotFoundError:
        return f"{package} (not installed)"


async def _redis_version(url: str) -> str:
    try:
        import redis.asyncio as aioredis
    except ImportError:
        return "unknown (redis package not installed)"
    client = aioredis.from_url(url)
    try:
        return str((await asyncio.wait_for(client.info("server"), 5)).get("redis_version", "unknown"))
    except Exception as exc:
        return f"unknown ({type(exc).__name__}: {first_line(exc)})"
    finally:
        await client.aclose()


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# -- probes -----------------------------------------------------------------------------------


async def explain_analyze(conn: Any, statement: Any, parameters: dict[str, Any]) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of one of the layer's statements, compiled as its driver runs it.

    ANALYZE executes the statement: a claim really deletes, a send really stores.
    """
    from sqlalchemy.dialects.postgresql.asyncpg import dialect

    compiled = statement.compile(dialect=dialect())
    values = {**compiled.params, **parameters}  # the statement's own literals, then ours
    rows = await conn.fetch(
        f"EXPLAIN (ANALYZE, BUFFERS) {compiled}", *(values[name] for name in compiled.positiontup or [])
    )
    # Cut short: filters spell out array parameters, 10,000 channel names long.
    return "\n".join(row[0] if len(row[0]) <= 300 else row[0][:299] + "…" for row in rows)


def execution_ms(plan: str) -> float | None:
    found = re.search(r"Execution Time: ([\d.]+) ms", plan)
    return float(found.group(1)) if found else None


async def wal_bytes(conn: Any) -> int | None:
    """WAL the whole server has written so far (pg_stat_wal, PostgreSQL 14 and later)."""
    try:
        return int(await conn.fetchval("SELECT wal_bytes FROM pg_stat_wal"))
    except Exception:
        return None


# The layer's pool sessions are named "channel_layer_pg", its LISTEN sessions "... listener <prefix>".
POOL_SESSIONS = "application_name = 'channel_layer_pg'"
LAYER_SESSIONS = f"({POOL_SESSIONS} OR application_name LIKE 'channel_layer_pg listener%')"


async def layer_connections(conn: Any, *, listeners: bool = True) -> int:
    """Server connections the layer holds on this database (with its LISTEN sessions, or not)."""
    sessions = LAYER_SESSIONS if listeners else POOL_SESSIONS
    return int(
        await conn.fetchval(
            f"SELECT count(*) FROM pg_stat_activity WHERE {sessions} AND datname = current_database()"
        )
    )


async def connections_by_database(conn: Any) -> str:
    """Who holds the server's connections: "bench 60, test 35, (background) 5 of 100"."""
    rows = await conn.fetch(
        "SELECT coalesce(datname, '(background)') AS db, count(*) AS n FROM pg_stat_activity "
        "GROUP BY 1 ORDER BY 2 DESC"
    )
    limit = await conn.fetchval("SHOW max_connections")
    return ", ".join(f"{row['db']} {row['n']}" for row in rows) + f" of max_connections {limit}"
