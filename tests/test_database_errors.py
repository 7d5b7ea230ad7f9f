"""A missing schema or an unreachable database gives an error a user can act on."""

from __future__ import annotations

import logging
import re

import pytest
from sqlalchemy.engine import make_url

from channel_layer_pg import (
    DatabaseError,
    DatabaseUnreachableError,
    LayerClosedError,
    PostgresChannelLayer,
    SchemaMissingError,
    migrate,
)
from tests.conftest import connect
from tests.helpers import receive


async def test_a_missing_schema_names_the_command_that_creates_it(empty_database_url: str) -> None:
    layer = PostgresChannelLayer(url=empty_database_url)
    try:
        with pytest.raises(SchemaMissingError, match="channel_layer_pg migrate"):
            await layer.send("test.x", {"type": "x"})
        with pytest.raises(SchemaMissingError, match="do not exist"):
            await layer.check()
    finally:
        await layer.close()


async def test_an_unreachable_database_names_host_and_port() -> None:
    # Port 1 on loopback: nothing listens there, so the connection is refused at once.
    layer = PostgresChannelLayer(url="postgresql://someone:hunter2@127.0.0.1:1/db", connect_timeout=5)
    try:
        with pytest.raises(DatabaseUnreachableError, match=r"127\.0\.0\.1:1") as caught:
            await layer.send("test.x", {"type": "x"})
        assert "hunter2" not in str(caught.value)
        with pytest.raises(DatabaseUnreachableError, match=r"127\.0\.0\.1:1"):
            await layer.receive("test.x")
    finally:
        await layer.close()


async def test_async_with_checks_the_database_on_entry(empty_database_url: str) -> None:
    with pytest.raises(SchemaMissingError):
        async with PostgresChannelLayer(url=empty_database_url):
            pass  # pragma: no cover - never reached


async def test_a_failed_async_with_entry_leaves_no_connection_open(empty_database_url: str) -> None:
    layer = PostgresChannelLayer(url=empty_database_url)
    with pytest.raises(SchemaMissingError):
        async with layer:
            pass  # pragma: no cover - never reached
    with pytest.raises(LayerClosedError):
        await layer.send("test.x", {"type": "x"})


async def test_a_refused_connection_is_reported_at_once_without_retrying(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = make_url(database_url).set(database="no_such_database").render_as_string(hide_password=False)
    layer = PostgresChannelLayer(url=url)
    try:
        with pytest.raises(DatabaseUnreachableError, match="refused the connection"):
            await layer.send("test.x", {"type": "x"})
    finally:
        await layer.close()
    assert "retrying" not in caplog.text


async def test_a_statement_waits_out_an_unreachable_database_for_less_than_two_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="channel_layer_pg")
    layer = PostgresChannelLayer(url="postgresql://someone@127.0.0.1:1/db", connect_timeout=5)
    try:
        with pytest.raises(DatabaseUnreachableError):
            await layer.send("test.x", {"type": "x"})
    finally:
        await layer.close()
    waits = [float(wait) for wait in re.findall(r"retrying in (\d+\.\d+) s", caplog.text)]
    # Long enough to ride out a quick restart, short enough to hear of an outage promptly.
    assert len(waits) >= 3
    assert 1.7 <= sum(waits) <= 1.8  # 1.75 s, each wait logged rounded to 10 ms


async def test_any_other_refusal_by_the_server_is_a_layer_error_quoting_it(empty_database_url: str) -> None:
    # A trigger someone added to the table stands for any refusal the layer has no name for.
    migrate(empty_database_url)
    admin = await connect(empty_database_url)
    layer = PostgresChannelLayer(url=empty_database_url, prefix="refusal")
    try:
        await layer.send("test.kept", {"type": "stored before"})
        await admin.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'no more rows today' USING ERRCODE = 'P0001'; END $$"
        )
        await admin.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON channel_layer_pg_message "
            "FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
        with pytest.raises(DatabaseError, match=r"no more rows today \(SQLSTATE P0001\)") as caught:
            await layer.send("test.kept", {"type": "refused"})
        assert caught.value.__cause__ is not None
        assert await receive(layer, "test.kept") == {"type": "stored before"}
    finally:
        await layer.close()
        await admin.close()
