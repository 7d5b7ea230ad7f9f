"""Where SQL computes what Python computes too, the two agree: queues, topics, capacities."""

from __future__ import annotations

import random
import re
import warnings
from typing import Any

import pytest
from sqlalchemy import Text, bindparam, select
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg

from channel_layer_pg.config import build_config
from channel_layer_pg.naming import non_local_name, topic_for
from channel_layer_pg.store import sql as sql_module
from tests.helpers import Sql

NAMES = [
    "chat",
    "chat.room-1",
    "specific.abc123!def",
    "specific.abc123!",
    "x.y!z_9.w",
    "http.response!c",
    "tiny.",
    "Tiny.one",
    "a[b",
    "roomy.x",
    "b.c",
]


async def _select(run: Sql, columns: list[Any], parameters: dict[str, Any]) -> list[Any]:
    compiled = select(*columns).compile(dialect=PGDialect_asyncpg())
    order = compiled.positiontup or []
    arguments = [parameters[key] if key in parameters else compiled.params[key] for key in order]
    (row,) = await run(str(compiled), *arguments)
    return list(row)


async def test_sql_names_the_same_queue_and_topic_as_python(sql: Sql) -> None:
    channel = bindparam("channel", type_=Text)
    for name in NAMES:
        queue, topic = await _select(
            sql,
            [sql_module.queue_of(channel), sql_module.topic_of(sql_module.queue_of(channel))],
            {"channel": name, "prefix": "pfx"},
        )
        assert (queue, topic) == (non_local_name(name), topic_for("pfx", non_local_name(name)))


CAPACITY_PATTERNS: list[dict[Any, int]] = [
    {"tiny.*": 1, re.compile(r"^roomy\."): 3},
    {"*!*": 7, "chat": 2},
    {"[!c]*": 4, "a[[]b": 5, "?.c": 6},
    {re.compile(r"tiny\.", re.IGNORECASE): 8, re.compile(r"specific\.\w+!$"): 9, re.compile("(?i)B"): 10},
]


@pytest.mark.parametrize("patterns", CAPACITY_PATTERNS, ids=lambda patterns: repr(list(patterns)))
async def test_sql_gives_every_channel_the_capacity_python_gives_it(
    sql: Sql, patterns: dict[Any, int]
) -> None:
    config = build_config({"url": "postgresql://localhost/x", "capacity": 100, "channel_capacity": patterns})
    channel = bindparam("channel", type_=Text)
    for name in NAMES:
        (capacity,) = await _select(
            sql, [sql_module.capacity_of(channel)], {"channel": name, **config.capacity_parameters()}
        )
        assert capacity == config.capacity_for(name), name


async def test_globs_match_the_same_names_in_postgresql_as_in_python(sql: Sql) -> None:
    pieces = [*"ab.-_!1*?[]^\\", "[!", "[^", "[a-b]", "[a-]", "[!]", "[-a]", "[!-]", "[[", "[:", "[=", "[."]
    chosen = random.Random(7)
    names = [
        "".join(chosen.choice("ab.-_!1[]:=^\\") for _ in range(chosen.randint(0, 6))) for _ in range(200)
    ]
    mismatches = []
    for _ in range(400):
        glob = "".join(chosen.choice(pieces) for _ in range(chosen.randint(1, 6)))
        try:
            (rule,) = build_config(
                {"url": "postgresql://localhost/x", "channel_capacity": {glob: 1}}
            ).channel_capacity
        except ValueError:
            continue  # a reversed range: refused, with the glob named
        rows = await sql("SELECT n, n ~ $1 AS matched FROM unnest($2::text[]) AS n", rule.sql_pattern, names)
        mismatches += [
            (glob, row["n"]) for row in rows if row["matched"] != bool(rule.pattern.match(row["n"]))
        ]
    assert not mismatches


def test_a_glob_with_a_reversed_range_is_refused() -> None:
    with pytest.raises(ValueError, match="reversed range"):
        build_config({"url": "postgresql://localhost/x", "channel_capacity": {"[z-a]*": 1}})


@pytest.mark.parametrize(
    "pattern",
    [r"(?P<room>chat)\.x", r"chat\b", r"a(?i:b)", r"(?>a)b", r"a*+", r"a{,3}", r"[[:alpha:]]+"],
)
def test_a_capacity_regex_postgresql_would_read_differently_is_refused(pattern: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # Python's own, on "[[": a nested set later
        compiled = re.compile(pattern)
    with pytest.raises(ValueError, match="channel_capacity pattern"):
        build_config({"url": "postgresql://localhost/x", "channel_capacity": {compiled: 1}})
