"""The database as a user names it: a URL, or Django's DATABASES keys, for the asyncpg driver."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

# The database keys channels_postgres users write (Django's DATABASES style), so that moving to
# this layer means changing BACKEND only.
DJANGO_KEYS = ("ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT", "OPTIONS")
# Keys of a Django DATABASES entry that mean nothing to a channel layer; accepted so that
# CONFIG={**DATABASES["default"], ...} works, and ignored.
DJANGO_IGNORED_KEYS = (
    "ATOMIC_REQUESTS",
    "AUTOCOMMIT",
    "CONN_MAX_AGE",
    "CONN_HEALTH_CHECKS",
    "DISABLE_SERVER_SIDE_CURSORS",
    "TIME_ZONE",
    "TEST",
    "PSYCOPG_OPTIONS",  # channels_postgres' psycopg pool settings; use pool_size instead
)
_POSTGRES_ENGINES = (
    "django.db.backends.postgresql",
    "django.db.backends.postgresql_psycopg2",
    "django.contrib.gis.db.backends.postgis",
)
# Django OPTIONS for PostgreSQL that only make sense to Django's own connections.
_IGNORED_DJANGO_OPTIONS = ("pool", "server_side_binding", "isolation_level", "assume_role")


def asyncpg_url(url: object, *, option: str = "url") -> tuple[URL, dict[str, Any]]:
    """``url`` for SQLAlchemy's asyncpg driver, and the connect args its query asked for.

    ``option`` is the name errors give the value: the option it came from.
    """
    if not isinstance(url, (str, URL)):
        raise TypeError(f"{option} must be a str or sqlalchemy URL, not {type(url).__name__}")
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(
            f"{option} is not a database URL; expected postgresql://user:password@host:port/db"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in ("postgresql", "postgres"):
        raise ValueError(
            f"{option} must point at PostgreSQL (postgresql://...), not {backend!r}: "
            f"{parsed.render_as_string(hide_password=True)}"
        )
    connect_args: dict[str, Any] = {}
    query = dict(parsed.query)
    # libpq spells it sslmode; asyncpg calls the same setting ssl.
    if "sslmode" in query:
        connect_args["ssl"] = query.pop("sslmode")
    return parsed.set(drivername="postgresql+asyncpg", query=query), connect_args


def url_from_django(django: Mapping[str, Any]) -> tuple[URL, dict[str, Any]]:
    """The URL and connect args that Django's ENGINE/NAME/USER/PASSWORD/HOST/PORT/OPTIONS name."""
    engine = django.get("ENGINE")
    if engine is not None and engine not in _POSTGRES_ENGINES:
        raise ValueError(f"ENGINE {engine!r} is not PostgreSQL; use one of {', '.join(_POSTGRES_ENGINES)}")
    port = django.get("PORT") or None
    try:
        port_number = int(port) if port is not None else None
    except ValueError:
        raise ValueError(f"PORT must be a number, not {port!r}") from None
    if port_number is not None and not 0 < port_number < 65536:
        raise ValueError(f"PORT must be a number from 1 to 65535, not {port!r}")
    url = URL.create(
        "postgresql+asyncpg",
        username=django.get("USER") or None,
        password=django.get("PASSWORD") or None,
        host=django.get("HOST") or None,
        port=port_number,
        database=django.get("NAME") or None,
    )
    connect_args: dict[str, Any] = {}
    server_settings: dict[str, str] = {}
    for key, value in (django.get("OPTIONS") or {}).items():
        if key == "sslmode":
            connect_args["ssl"] = value
        elif key == "connect_timeout":
            connect_args["timeout"] = _connect_timeout(value)
        elif key == "application_name":
            server_settings["application_name"] = str(value)
        elif key in _IGNORED_DJANGO_OPTIONS:
            continue
        else:
            raise ValueError(
                f"OPTIONS key {key!r} is not supported; supported: sslmode, connect_timeout, "
                "application_name (or pass url= with asyncpg's own parameters)"
            )
    if server_settings:
        connect_args["server_settings"] = server_settings
    return url, connect_args


def _connect_timeout(value: object) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]  # libpq's is a str or an int
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"OPTIONS['connect_timeout'] must be a finite number of seconds > 0, not {value!r}")
    return seconds
