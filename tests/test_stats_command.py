"""``channel-layer-pg stats``: the layer's stats as tables, or as JSON with --json."""

from __future__ import annotations

import asyncio
import json

import pytest
from sqlalchemy.engine import make_url

from channel_layer_pg import PostgresChannelLayer
from channel_layer_pg.cli import main
from channel_layer_pg.config import URL_ENV_VAR


async def run_cli(*argv: str) -> int:
    # main() runs its own event loop (asyncio.run), so it runs in a thread of its own here.
    return await asyncio.to_thread(main, list(argv))


async def test_stats_prints_the_largest_channels_in_a_table(
    layer: PostgresChannelLayer, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(3):
        await layer.send("test.busy", {"type": "x"})
    await layer.send("test.idle", {"type": "x"})
    assert await run_cli("stats", "--url", database_url, "--prefix", layer.prefix, "--limit", "1") == 0
    lines = capsys.readouterr().out.splitlines()
    assert "messages: 4 queued" in "\n".join(lines)
    assert [line.split()[0] for line in lines if line.endswith("test.busy")] == ["3"]
    assert not [line for line in lines if line.endswith("test.idle")]
    assert "... and 1 more" in [line.strip() for line in lines]


async def test_stats_json_is_the_layers_stats_and_the_database(
    layer: PostgresChannelLayer, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await layer.send("test.json", {"type": "x"})
    await layer.group_add("room", "test.json")
    assert await run_cli("stats", "--url", database_url, "--prefix", layer.prefix, "--json") == 0
    printed = json.loads(capsys.readouterr().out)
    expected = (await layer.stats()).to_dict()
    # Ages grow between the two calls; everything else is the same.
    for data in (printed, expected):
        data.pop("oldest_message_age")
        for backlog in data["channels"]:
            backlog.pop("oldest_age")
    assert printed == {"database": make_url(database_url).render_as_string(hide_password=True), **expected}


async def test_stats_takes_the_url_from_the_environment(
    layer: PostgresChannelLayer,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(URL_ENV_VAR, database_url)
    assert await run_cli("stats", "--prefix", layer.prefix, "--json") == 0
    assert json.loads(capsys.readouterr().out)["prefix"] == layer.prefix


async def test_stats_without_a_url_says_how_to_give_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(URL_ENV_VAR, raising=False)
    assert await run_cli("stats") == 2
    assert f"--url postgresql://user:password@host:port/db or set {URL_ENV_VAR}" in capsys.readouterr().err


async def test_stats_on_a_database_without_the_schema_names_the_migrate_command(
    empty_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_cli("stats", "--url", empty_database_url) == 1
    assert "channel_layer_pg migrate" in capsys.readouterr().err


async def test_stats_never_prints_the_password(
    database_url: str, capsys: pytest.CaptureFixture[str], prefix: str
) -> None:
    # The test servers trust local connections, so any password gets in.
    url = make_url(database_url).set(password="pw-never-shown").render_as_string(hide_password=False)
    assert await run_cli("stats", "--url", url, "--prefix", prefix) == 0
    assert await run_cli("stats", "--url", url, "--prefix", prefix, "--json") == 0
    captured = capsys.readouterr()
    assert "pw-never-shown" not in captured.out + captured.err
