"""Django's OPTIONS (libpq's connection parameters) as the layer applies them to asyncpg.

What each maps to is pinned on the config; what it does is shown on a real server. TLS has a
module of its own (test_django_tls.py): it needs a server of its own.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from channel_layer_pg import DatabaseUnreachableError, PostgresChannelLayer, migrate
from channel_layer_pg.config import build_config
from tests.conftest import connect
from tests.django_project import django_database
from tests.helpers import TIMEOUT, Sql, receive

MANAGED_POSTGRES_OPTIONS = {
    "sslmode": "verify-full",
    "sslrootcert": "/etc/ssl/rds.pem",
    "sslcert": "/etc/ssl/client.crt",
    "sslkey": "/etc/ssl/client.key",
    "sslpassword": "key secret",
    "connect_timeout": 5,
    "options": "-c search_path=app,public -c statement_timeout=30s --lock-timeout=5s",
    "application_name": "chat",
    "target_session_attrs": "read-write",
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 10000,
    "client_encoding": "UTF8",
    "pool": {"min_size": 2},
    "prepare_threshold": None,
    "server_side_binding": True,
}


def test_managed_postgresql_options_become_asyncpg_connect_args() -> None:
    config = build_config({"NAME": "app", "HOST": "db.example.com", "OPTIONS": MANAGED_POSTGRES_OPTIONS})

    dsn = make_url(config.connect_args["dsn"])
    assert dict(dsn.query) == {
        "sslrootcert": "/etc/ssl/rds.pem",
        "sslcert": "/etc/ssl/client.crt",
        "sslkey": "/etc/ssl/client.key",
        "sslpassword": "key secret",
        "target_session_attrs": "read-write",
    }
    assert {key: value for key, value in config.connect_args.items() if key != "dsn"} == {
        "ssl": "verify-full",
        "server_settings": {
            "search_path": "app,public",
            "statement_timeout": "30s",
            "lock_timeout": "5s",
            "application_name": "chat",
        },
    }
    assert config.connect_timeout == 5.0
    assert config.url is not None and config.url.query == {}


def test_a_url_query_carries_the_same_parameters_as_options() -> None:
    url = (
        "postgresql://app@db.example.com/app?sslmode=verify-ca&sslrootcert=/etc/ssl/ca.pem"
        "&options=-c%20search_path%3Dapp&connect_timeout=3&keepalives_idle=30"
    )
    config = build_config({"url": url})

    assert config.connect_args == {
        "ssl": "verify-ca",
        "dsn": "postgresql://?sslrootcert=%2Fetc%2Fssl%2Fca.pem",
        "server_settings": {"search_path": "app"},
    }
    assert config.connect_timeout == 3.0
    assert config.url is not None and config.url.query == {}


def test_listen_url_adds_its_parameters_to_the_database_s() -> None:
    config = build_config(
        {
            "NAME": "app",
            "HOST": "pgbouncer",
            "OPTIONS": {"sslmode": "verify-full", "sslrootcert": "/ca.pem", "options": "-c search_path=app"},
            "listen_url": "postgresql://app@db/app?sslcert=/client.crt&application_name=listener",
        }
    )

    listen = config.listen_connect_args
    assert listen["ssl"] == "verify-full"
    assert dict(make_url(listen["dsn"]).query) == {"sslrootcert": "/ca.pem", "sslcert": "/client.crt"}
    assert listen["server_settings"] == {"search_path": "app", "application_name": "listener"}


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"sslmode": "verify"}, r"OPTIONS\['sslmode'\] must be one of disable, allow, prefer, require"),
        ({"options": "-e"}, r"OPTIONS\['options'\] may hold only -c name=value settings, not '-e'"),
        ({"options": "-c search_path"}, r"expected -c name=value, got 'search_path'"),
        ({"connect_timeout": 0}, r"OPTIONS\['connect_timeout'\] must be a finite number of seconds > 0"),
        (
            {"gssencmode": "require"},
            r"OPTIONS\['gssencmode'\]='require' cannot apply: asyncpg does not",
        ),
        ({"channel_binding": "require"}, r"OPTIONS\['channel_binding'\]='require' cannot apply"),
        ({"client_encoding": "LATIN1"}, "asyncpg speaks UTF-8 only"),
        ({"require_auth": "scram-sha-256"}, r"OPTIONS\['require_auth'\] cannot apply"),
        ({"host": "db2"}, "give the database's host as HOST"),
        ({"sslmdoe": "require"}, "OPTIONS key 'sslmdoe' is not a libpq connection parameter"),
    ],
)
def test_options_that_cannot_apply_are_rejected_naming_why(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_config({"NAME": "app", "OPTIONS": options})


async def test_options_search_path_puts_and_finds_the_tables_in_that_schema(empty_database_url: str) -> None:
    admin = await connect(empty_database_url)
    try:
        await admin.execute("CREATE SCHEMA app")
        settings = django_database(empty_database_url, options="-c search_path=app")
        # What the Django app's migrate does with these settings, and the layer after it.
        migrate(make_url(empty_database_url).update_query_dict({"options": "-c search_path=app"}))
        async with PostgresChannelLayer(**settings, prefix="app") as layer:
            await layer.send("schema.app", {"type": "in.app"})
            assert await receive(layer, "schema.app") == {"type": "in.app"}
        tables = await admin.fetch(
            "SELECT table_schema FROM information_schema.tables WHERE table_name LIKE 'channel_layer_pg%'"
        )
    finally:
        await admin.close()
    assert {row["table_schema"] for row in tables} == {"app"}
    assert len(tables) == 3


async def test_application_name_names_the_layer_s_sessions(database_url: str, prefix: str, sql: Sql) -> None:
    name = f"chat-{prefix}"
    settings = django_database(database_url, application_name=name, keepalives=1, keepalives_idle=30)
    async with PostgresChannelLayer(**settings, prefix=prefix) as layer:
        await layer.send("named", {"type": "hello"})
        sessions = await sql("SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1", name)
    assert sessions[0]["n"] >= 1


async def test_target_session_attrs_reaches_the_driver(database_url: str, prefix: str) -> None:
    async with PostgresChannelLayer(
        **django_database(database_url, target_session_attrs="read-write"), prefix=prefix
    ) as layer:
        await layer.send("primary", {"type": "ok"})
    # The test server is a primary: asking for a standby finds none.
    standby_settings = django_database(database_url, target_session_attrs="standby")
    standby = PostgresChannelLayer(**standby_settings, prefix=prefix)
    try:
        # Retried for a while (a failover may be under way), then the layer's error.
        with pytest.raises(DatabaseUnreachableError, match="None of the hosts match the target attribute"):
            await standby.check()
    finally:
        await standby.close()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers: a PostgreSQL that hangs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


async def test_connect_timeout_bounds_each_attempt_on_a_server_that_never_answers(silent_server: int) -> None:
    settings = {"NAME": "app", "HOST": "127.0.0.1", "PORT": str(silent_server)}
    layer = PostgresChannelLayer(**settings, OPTIONS={"connect_timeout": 1})
    try:
        # Each attempt waits 1 s, not the layer's default 10 s, through its few retries.
        with pytest.raises(DatabaseUnreachableError, match="no answer within 1 s"):
            await asyncio.wait_for(layer.check(), 3 * TIMEOUT)
    finally:
        await layer.close()
