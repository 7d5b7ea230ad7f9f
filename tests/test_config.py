"""Options: the three ways to give the database, and errors that name the option at fault."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from channel_layer_pg import PostgresChannelLayer
from channel_layer_pg.config import URL_ENV_VAR, build_config
from tests.helpers import receive


def test_a_misspelt_option_is_named_with_a_suggestion() -> None:
    with pytest.raises(
        TypeError, match=r"unknown PostgresChannelLayer option 'capcity'; did you mean 'capacity'"
    ):
        PostgresChannelLayer(url="postgresql://localhost/db", capcity=10)


def test_django_database_keys_become_an_asyncpg_url() -> None:
    config = build_config(
        {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "app",
            "USER": "web",
            "PASSWORD": "pa:ss@word",
            "HOST": "db.internal",
            "PORT": "5433",
            "OPTIONS": {"sslmode": "require", "application_name": "chat"},
        }
    )
    assert config.url is not None
    assert config.url.drivername == "postgresql+asyncpg"
    assert (config.url.host, config.url.port, config.url.database) == ("db.internal", 5433, "app")
    assert config.url.password == "pa:ss@word"
    assert config.connect_args == {"ssl": "require", "server_settings": {"application_name": "chat"}}
    assert "pa:ss@word" not in config.safe_url


def test_a_whole_django_databases_entry_is_accepted() -> None:
    # CONFIG = {**DATABASES["default"], ...} brings keys that mean nothing to a channel layer.
    build_config({"NAME": "app", "HOST": "h", "ATOMIC_REQUESTS": False, "CONN_MAX_AGE": 60, "TEST": {}})


def test_a_non_postgresql_django_engine_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"ENGINE 'django\.db\.backends\.mysql' is not PostgreSQL"):
        build_config({"ENGINE": "django.db.backends.mysql", "NAME": "app"})


def test_an_unsupported_django_option_is_named() -> None:
    with pytest.raises(ValueError, match="OPTIONS key 'sslmdoe'"):
        build_config({"NAME": "app", "OPTIONS": {"sslmdoe": "require"}})


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@h/db",
        "postgres://u@h/db",
        "postgresql+psycopg://u@h/db",
        "postgresql+asyncpg://u@h/db",
    ],
)
def test_any_postgresql_url_gets_the_asyncpg_driver(url: str) -> None:
    config = build_config({"url": url})
    assert config.url is not None and config.url.drivername == "postgresql+asyncpg"


def test_libpq_sslmode_in_a_url_becomes_asyncpg_ssl() -> None:
    config = build_config({"url": "postgresql://u@h/db?sslmode=verify-full"})
    assert config.connect_args == {"ssl": "verify-full"}
    assert config.url is not None and "sslmode" not in config.url.query


def test_a_url_for_another_database_is_rejected() -> None:
    with pytest.raises(ValueError, match="must point at PostgreSQL"):
        build_config({"url": "mysql://u@h/db"})


def test_the_environment_variable_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(URL_ENV_VAR, "postgresql://from-env/db")
    config = build_config({})
    assert config.url is not None and config.url.host == "from-env"


def test_no_database_at_all_says_how_to_give_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(URL_ENV_VAR, raising=False)
    with pytest.raises(ValueError, match=f"no database given.*{URL_ENV_VAR}"):
        build_config({})


def test_giving_the_database_twice_is_an_error() -> None:
    with pytest.raises(ValueError, match="not several"):
        build_config({"url": "postgresql://h/db", "NAME": "db"})


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("capacity", 0, ValueError),
        ("capacity", "100", TypeError),
        ("expiry", -1, ValueError),
        ("group_expiry", "soon", TypeError),
        ("prefix", "bad prefix", TypeError),
        ("channel_capacity", {"x.*": 0}, ValueError),
        ("channel_capacity", {3: 1}, TypeError),
        ("serializer", "pickle", ValueError),
        ("serializer", object(), TypeError),
        ("pool_size", 0, ValueError),
        ("close_timeout", 0, ValueError),
        ("close_timeout", "5", TypeError),
        ("slow_statement_threshold", -1, ValueError),
        ("fault_hooks", object(), TypeError),
    ],
)
def test_bad_option_values_name_the_option(option: str, value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match=option.split("_")[0]):
        build_config({"url": "postgresql://h/db", option: value})


@pytest.mark.parametrize(
    ("option", "value", "error", "problem"),
    [
        ("expiry", float("inf"), ValueError, "a finite number of seconds > 0"),
        ("expiry", float("nan"), ValueError, "a finite number of seconds > 0"),
        ("expiry", 0, ValueError, "a finite number of seconds > 0"),
        ("expiry", 10**12, ValueError, "at most 3153600000"),
        ("group_expiry", float("inf"), ValueError, "a finite number of seconds >= 0"),
        ("group_expiry", -1, ValueError, "a finite number of seconds >= 0"),
        ("connect_timeout", float("nan"), ValueError, "a finite number of seconds > 0"),
        ("pool_idle_timeout", float("inf"), ValueError, "a finite number of seconds > 0"),
        ("close_timeout", float("inf"), ValueError, "a finite number of seconds > 0"),
        ("slow_statement_threshold", float("nan"), ValueError, "a finite number of seconds > 0"),
        ("capacity", 2**63, ValueError, r"at most 2\*\*63 - 1"),
        ("channel_capacity", {"x.*": 2**63}, ValueError, r"at most 2\*\*63 - 1"),
        ("max_message_size", 0, ValueError, "at least 1"),
        ("max_message_size", 2**30, ValueError, "at most 1073741823 bytes"),
        ("max_message_size", "1MB", TypeError, "an int"),
        ("max_message_size", True, TypeError, "an int"),
    ],
)
def test_option_values_out_of_range_are_refused_naming_the_option(
    option: str, value: object, error: type[Exception], problem: str
) -> None:
    with pytest.raises(error, match=rf"^{option}(\[.*\])? must be .*{problem}.*, not "):
        build_config({"url": "postgresql://h/db", option: value})


BAD_TIMEOUT = r"OPTIONS\['connect_timeout'\] must be a finite number of seconds > 0"


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("OPTIONS", {"connect_timeout": "inf"}, BAD_TIMEOUT),
        ("OPTIONS", {"connect_timeout": "soon"}, BAD_TIMEOUT),
        ("OPTIONS", {"connect_timeout": -1}, BAD_TIMEOUT),
        ("PORT", "99999", "PORT must be a number from 1 to 65535"),
        ("PORT", -1, "PORT must be a number from 1 to 65535"),
    ],
)
def test_bad_django_numbers_name_the_key(key: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_config({"NAME": "app", key: value})


def test_django_connect_timeout_may_be_a_string_as_libpq_takes_it() -> None:
    # libpq's connect_timeout becomes the layer's, which bounds each connection attempt.
    assert build_config({"NAME": "app", "OPTIONS": {"connect_timeout": "7"}}).connect_timeout == 7.0


def test_max_message_size_defaults_to_one_mebibyte_and_none_lifts_it() -> None:
    assert build_config({"url": "postgresql://h/db"}).codec.max_message_size == 2**20
    assert build_config({"url": "postgresql://h/db", "max_message_size": None}).codec.max_message_size is None


def test_a_custom_serializer_object_is_used() -> None:
    class Reversed:
        def dumps(self, message: dict[str, object]) -> bytes:
            return repr(message).encode()[::-1]

        def loads(self, data: bytes) -> dict[str, object]:
            return eval(data[::-1].decode())

    config = build_config({"url": "postgresql://h/db", "serializer": Reversed()})
    payload = config.codec.encode({"type": "x"}, channel="test.x")
    assert config.codec.decode(payload, channel="test.x") == {"type": "x"}


async def test_an_application_engine_is_used_and_not_disposed(database_url: str, prefix: str) -> None:
    from channel_layer_pg.database_url import asyncpg_url

    engine = create_async_engine(asyncpg_url(database_url)[0])
    try:
        layer = PostgresChannelLayer(engine=engine, prefix=prefix)
        await layer.send("test.engine", {"type": "via app engine"})
        assert await receive(layer, "test.engine") == {"type": "via app engine"}
        await layer.close()
        async with engine.connect() as conn:  # still usable: the layer did not dispose it
            await conn.exec_driver_sql("SELECT 1")
    finally:
        await engine.dispose()


def test_engine_must_be_an_async_engine() -> None:
    with pytest.raises(TypeError, match="engine must be a SQLAlchemy AsyncEngine"):
        build_config({"engine": "postgresql://h/db"})


def test_listen_url_is_accepted_with_the_django_keys() -> None:
    # How a Django project behind PgBouncer configures it: the keys name PgBouncer.
    config = build_config(
        {"NAME": "app", "HOST": "pgbouncer", "PORT": "6432", "listen_url": "postgres://app@db:5432/app"}
    )
    assert config.url is not None and config.url.host == "pgbouncer"
    assert config.listen_url is not None and config.listen_url.drivername == "postgresql+asyncpg"
    assert (config.listen_url.host, config.listen_url.port) == ("db", 5432)


def test_listen_url_is_accepted_with_an_application_engine() -> None:
    engine = create_async_engine("postgresql+asyncpg://app@pgbouncer:6432/app")
    config = build_config({"engine": engine, "listen_url": "postgresql://app@db/app?sslmode=require"})
    assert config.listen_url is not None and config.listen_url.host == "db"
    assert config.listen_connect_args == {"ssl": "require"}


def test_a_bad_listen_url_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match="listen_url must point at PostgreSQL"):
        build_config({"url": "postgresql://h/db", "listen_url": "redis://h"})


def test_synchronous_commit_with_listen_url_is_an_error_saying_where_to_set_it() -> None:
    with pytest.raises(
        ValueError, match=r"synchronous_commit cannot be applied.*ALTER ROLE app SET synchronous_commit = on"
    ):
        build_config(
            {"url": "postgresql://h/db", "listen_url": "postgresql://h2/db", "synchronous_commit": "on"}
        )
