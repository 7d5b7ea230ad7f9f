"""Isolation: what confining a role to its own messages costs on the hot path, per way of doing it.

    python benchmarks/bench.py isolation [--url URL] [--rounds 3] [--messages 2000]

In a throwaway database created on the server at ``--url`` (as a role that may create
databases and roles; dropped afterwards), one login role with only run-time privileges uses
the layer (its prefix is the role's name) on four copies of the tables:

- ``search_path``: the tables in public, as ``channel-layer-pg migrate`` makes them (no boundary);
- ``schema``: the tables in a schema of their own, through the ``schema`` option (a boundary when
  each application's role is granted only its schema);
- ``rls user``: row-level security on both tables, ``prefix = current_user``;
- ``rls map``: row-level security through a mapping table, ``EXISTS (role, prefix) granted``.

For each: the median round trip of one send then its receive (sequential, µs), and the
throughput of ``--messages`` messages sent by 8 tasks at once to one channel and received by
another task (msg/s). The variants alternate within each of ``--rounds`` rounds, so drift on a
shared machine falls on all of them alike; the table shows the median over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

from harness.cli import add_url, print_header
from harness.db import connect
from harness.layers import ours
from harness.table import render
from sqlalchemy.engine import make_url

TABLES = ("channel_layer_pg_message", "channel_layer_pg_group_member")
SENDERS, WARMUP = 8, 200
MAPPING = "channel_layer_pg_prefix_grant"


def _policies(schema: str, using: str) -> list[str]:
    statements = []
    for table in TABLES:
        statements += [
            f"ALTER TABLE {schema}.{table} ENABLE ROW LEVEL SECURITY",
            f"CREATE POLICY by_role ON {schema}.{table} USING ({using}) WITH CHECK ({using})",
        ]
    return statements


def _setup(role: str) -> dict[str, list[str]]:
    """Per variant, the SQL (run as the admin after migrating it) that confines ``role``."""
    granted = lambda schema: [  # noqa: E731
        f"GRANT USAGE ON SCHEMA {schema} TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(f'{schema}.{t}' for t in TABLES)} TO {role}",
    ]
    # The mapping's columns are named apart from the tables' so that "prefix" is the row's.
    mapped = f"EXISTS (SELECT FROM rls_map.{MAPPING} WHERE grantee = current_user AND granted = prefix)"
    return {
        "search_path": granted("public"),
        "schema": granted("app_schema"),
        "rls user": [*granted("rls_user"), *_policies("rls_user", "prefix = current_user")],
        "rls map": [
            *granted("rls_map"),
            f"CREATE TABLE rls_map.{MAPPING} (grantee name, granted text, PRIMARY KEY (grantee, granted))",
            f"INSERT INTO rls_map.{MAPPING} VALUES ('{role}', '{role}')",
            f"GRANT SELECT ON rls_map.{MAPPING} TO {role}",
            *_policies("rls_map", mapped),
        ],
    }


SCHEMAS = {"search_path": None, "schema": "app_schema", "rls user": "rls_user", "rls map": "rls_map"}


async def round_trip_us(layer: Any, count: int) -> float:
    times = []
    for n in range(count):
        started = time.perf_counter()
        await layer.send("iso.rt", {"type": "m", "n": n})
        await layer.receive("iso.rt")
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


async def throughput(layer: Any, count: int) -> float:
    async def send(part: range) -> None:
        for n in part:
            await layer.send("iso.tp", {"type": "m", "n": n})

    async def receive() -> None:
        for _ in range(count):
            await layer.receive("iso.tp")

    started = time.perf_counter()
    receiver = asyncio.create_task(receive())
    await asyncio.gather(*(send(range(i, count, SENDERS)) for i in range(SENDERS)))
    await asyncio.wait_for(receiver, 120)
    return count / (time.perf_counter() - started)


async def measure(url: str, schema: str | None, prefix: str, count: int) -> tuple[float, float]:
    options = {"schema": schema} if schema else {}
    async with ours(url, prefix, capacity=count + WARMUP, **options) as layer:
        await round_trip_us(layer, WARMUP)
        return await round_trip_us(layer, count), await throughput(layer, count)


async def forges(url: str, schema: str | None) -> str:
    """Whether the role can store a message under a prefix other than its own."""
    options = {"schema": schema} if schema else {}
    async with ours(url, "someone_else", **options) as layer:
        try:
            await layer.send("iso.forged", {"type": "forged"})
        except Exception as exc:
            return f"refused ({type(exc).__name__})"
        await layer.flush()
        return "stored"


async def run(args: argparse.Namespace) -> int:
    await print_header(args.url, args.label)
    from channel_layer_pg import migrate

    token = uuid.uuid4().hex[:8]
    database, role = f"clpg_isolation_{token}", f"clpg_iso_{token}"
    admin = await connect(args.url)
    await admin.execute(f"CREATE DATABASE {database}")
    await admin.execute(f"CREATE ROLE {role} LOGIN")
    db_url = make_url(args.url).set(database=database).render_as_string(hide_password=False)
    role_url = make_url(db_url).set(username=role, password=None).render_as_string(hide_password=False)
    try:
        for schema in SCHEMAS.values():
            await asyncio.to_thread(migrate, db_url, schema=schema)
        conn = await connect(db_url)
        try:
            for statements in _setup(role).values():
                for statement in statements:
                    await conn.execute(statement)
        finally:
            await conn.close()
        for name, schema in SCHEMAS.items():
            print(f"{name:>12}: a send under another prefix is {await forges(role_url, schema)}", flush=True)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in SCHEMAS}
        for r in range(args.rounds):
            for name, schema in SCHEMAS.items():
                results[name].append(await measure(role_url, schema, role, args.messages))
                rt, tp = results[name][-1]
                print(f"round {r + 1} {name:>12}: round trip {rt:6.0f} us, {tp:6.0f} msg/s", flush=True)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()
    base_rt = statistics.median(rt for rt, _ in results["search_path"])
    base_tp = statistics.median(tp for _, tp in results["search_path"])
    rows = []
    for name, samples in results.items():
        rt = statistics.median(s[0] for s in samples)
        tp = statistics.median(s[1] for s in samples)
        rows.append([name, f"{rt:.0f}", f"{rt / base_rt - 1:+.0%}", f"{tp:.0f}", f"{tp / base_tp - 1:+.0%}"])
    print(f"\nmedian of {args.rounds} rounds, {args.messages} messages each:")
    print(render(["tables", "round trip us", "vs public", "msg/s", "vs public"], rows))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.py isolation", description=__doc__.split("\n\n")[0])
    add_url(parser, help="a PostgreSQL server, as a role that may create databases and roles")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds, each measures every variant (default: 3)"
    )
    parser.add_argument("--messages", type=int, default=2000, help="messages per measurement (default: 2000)")
    return asyncio.run(run(parser.parse_args(argv)))
