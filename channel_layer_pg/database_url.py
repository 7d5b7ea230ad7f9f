"""The database as a user names it: a URL, or Django's DATABASES keys, for the asyncpg driver.

Both forms carry libpq's connection parameters (a URL's query, a Django entry's OPTIONS), as
managed PostgreSQL services document them: sslmode=verify-full with sslrootcert, options=-c
search_path=app. Each becomes what asyncpg offers for it:

- sslmode becomes asyncpg's ``ssl`` keyword;
- the TLS files, target_session_attrs, Kerberos, passfile and service travel as a query-only
  DSN (``postgresql://?sslrootcert=...``) beside the keyword arguments: asyncpg reads them
  from a DSN with libpq's meaning, and the TLS files from nowhere else;
- connect_timeout becomes ``timeout`` (and config.py makes it the layer's connect_timeout);
  application_name and each ``-c name=value`` of options become session settings
  (``server_settings``).

Parameters asyncpg has no means for are accepted and ignored where they only tune the socket
(TCP keepalives) or no longer do anything (compression), and rejected, with the reason, where
ignoring them would connect, authenticate or encrypt differently from what was asked.
"""

from __future__ import annotations

import math
import urllib.parse
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
# OPTIONS that configure Django's own psycopg connection object, not the connection itself.
_DJANGO_ONLY_OPTIONS = (
    "pool",
    "server_side_binding",
    "isolation_level",
    "assume_role",
    "prepare_threshold",
    "cursor_factory",
    "context",
    "row_factory",
    "autocommit",
    "connection_factory",
)
# The database's own identity is given by the keys, so errors can name the server and the
# Django app can tell which DATABASES alias the layer shares.
_GIVEN_AS_KEYS = {
    "host": "HOST",
    "hostaddr": "HOST",
    "port": "PORT",
    "dbname": "NAME",
    "user": "USER",
    "password": "PASSWORD",
}

_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_ASYNCPG_DSN_PARAMETERS = (
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcrl",
    "sslnegotiation",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "target_session_attrs",
    "krbsrvname",
    "gsslib",
    "passfile",
    "service",
)
_NO_KEEPALIVE = "asyncpg has no TCP keepalive setting; its sockets keep the operating system's defaults"
_IGNORED = {
    "keepalives": _NO_KEEPALIVE,
    "keepalives_idle": _NO_KEEPALIVE,
    "keepalives_interval": _NO_KEEPALIVE,
    "keepalives_count": _NO_KEEPALIVE,
    "tcp_user_timeout": "asyncpg has no TCP user timeout setting",
    "fallback_application_name": "the layer always sets application_name, so a fallback never applies",
    "sslcompression": "PostgreSQL no longer compresses TLS; libpq ignores it too",
}
# Parameters accepted only with the values that connect as asyncpg does anyway.
_ONLY = {
    "client_encoding": (("utf8", "utf-8", "unicode"), "asyncpg speaks UTF-8 only"),
    "gssencmode": (("disable", "prefer"), "asyncpg does not encrypt with GSSAPI; use sslmode"),
    "channel_binding": (("disable", "prefer"), "asyncpg's SCRAM authentication does no channel binding"),
    "sslsni": (("1",), "asyncpg always sends the server name (SNI)"),
    "sslcertmode": (("allow",), "asyncpg sends a client certificate whenever sslcert names one"),
    "load_balance_hosts": (("disable",), "asyncpg tries the hosts in the order given"),
    "replication": (("0", "false", "off", "no"), "the layer's sessions are not replication connections"),
}
_UNSUPPORTED = {
    "sslcrldir": "asyncpg reads a CRL from one file only; use sslcrl",
    "requirepeer": "asyncpg does not check the peer of a unix socket",
    "require_auth": "asyncpg cannot be told which authentication methods to refuse",
    "gssdelegation": "asyncpg does not delegate GSSAPI credentials",
    "requiressl": "it is obsolete; use sslmode=require",
}
_MAPPED = ("sslmode", "connect_timeout", "application_name", "options")
LIBPQ_PARAMETERS = frozenset(
    (*_MAPPED, *_ASYNCPG_DSN_PARAMETERS, *_IGNORED, *_ONLY, *_UNSUPPORTED, *_GIVEN_AS_KEYS)
)


def asyncpg_url(url: object, *, option: str = "url") -> tuple[URL, dict[str, Any]]:
    """``url`` for SQLAlchemy's asyncpg driver, and the connect args its libpq parameters ask for.

    ``option`` is the name errors give the value: the option it came from. Query parameters
    that are not libpq's (``host`` for a socket directory, asyncpg's own keywords) are left
    in the URL, for SQLAlchemy to hand to asyncpg.
    """
    parsed = parse_url(url, option=option)
    query = dict(parsed.query)
    libpq = {
        key: query.pop(key) for key in list(query) if key in LIBPQ_PARAMETERS and key not in _GIVEN_AS_KEYS
    }
    connect_args = _connect_args(libpq, option=option)
    return parsed.set(drivername="postgresql+asyncpg", query=query), connect_args


def parse_url(url: object, *, option: str = "url") -> URL:
    """``url`` checked to be a PostgreSQL URL, as written (driver and query untouched)."""
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
            f"{option} must point at PostgreSQL (postgresql://...), not {backend!r}: {safe_url(parsed)}"
        )
    return parsed


def safe_url(url: str | URL) -> str:
    """``url`` for logs and messages, its password and sslpassword hidden."""
    parsed = make_url(url)
    if "sslpassword" in parsed.query:
        parsed = parsed.update_query_dict({"sslpassword": "***"})
    return parsed.render_as_string(hide_password=True)


def django_url(django: Mapping[str, Any]) -> URL:
    """The ``postgresql://`` URL, libpq parameters in its query, of a Django DATABASES entry."""
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
    options = django.get("OPTIONS") or {}
    if not isinstance(options, Mapping):
        raise TypeError(f"OPTIONS must be a dict, not {type(options).__name__}")
    query: dict[str, str] = {}
    for key, value in options.items():
        if key in _DJANGO_ONLY_OPTIONS:
            continue
        if key in _GIVEN_AS_KEYS:
            raise ValueError(f"OPTIONS key {key!r}: give the database's {key} as {_GIVEN_AS_KEYS[key]}")
        if key not in LIBPQ_PARAMETERS:
            raise ValueError(
                f"OPTIONS key {key!r} is not a libpq connection parameter the layer knows; see "
                "https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-PARAMKEYWORDS"
            )
        query[key] = _text(value)
    return URL.create(
        "postgresql",
        username=django.get("USER") or None,
        password=django.get("PASSWORD") or None,
        host=django.get("HOST") or None,
        port=port_number,
        database=django.get("NAME") or None,
        query=query,
    )


def url_from_django(django: Mapping[str, Any]) -> tuple[URL, dict[str, Any]]:
    """The URL and connect args that Django's ENGINE/NAME/USER/PASSWORD/HOST/PORT/OPTIONS name."""
    return asyncpg_url(django_url(django), option="OPTIONS")


def merge_connect_args(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` on top, parameter by parameter inside the DSN and the settings."""
    merged = {**base, **extra}
    for key, combine in (("dsn", _merge_dsn), ("server_settings", _merge_dicts)):
        if key in base and key in extra:
            merged[key] = combine(base[key], extra[key])
    return merged


def _connect_args(parameters: Mapping[str, object], *, option: str) -> dict[str, Any]:
    connect_args: dict[str, Any] = {}
    server_settings: dict[str, str] = {}
    dsn: dict[str, str] = {}
    for key, given in parameters.items():
        if isinstance(given, tuple):
            raise ValueError(f"{_named(option, key)} is given {len(given)} times")
        value = _text(given)
        if key == "sslmode":
            if value not in _SSLMODES:
                raise ValueError(
                    f"{_named(option, key)} must be one of {', '.join(_SSLMODES)}, not {value!r}"
                )
            connect_args["ssl"] = value
        elif key == "connect_timeout":
            connect_args["timeout"] = _timeout(value, name=_named(option, key))
        elif key == "application_name":
            server_settings["application_name"] = value
        elif key == "options":
            server_settings.update(_settings_from_options(value, name=_named(option, key)))
        elif key in _ASYNCPG_DSN_PARAMETERS:
            dsn[key] = value
        elif key in _ONLY:
            allowed, reason = _ONLY[key]
            if value.lower() not in allowed:
                raise ValueError(f"{_named(option, key)}={value!r} cannot apply: {reason}")
        elif key in _UNSUPPORTED:
            raise ValueError(f"{_named(option, key)} cannot apply: {_UNSUPPORTED[key]}")
        # Otherwise one of _IGNORED: libpq would connect the same way without it.
    if server_settings:
        connect_args["server_settings"] = server_settings
    if dsn:
        connect_args["dsn"] = "postgresql://?" + urllib.parse.urlencode(dsn)
    return connect_args


def _named(option: str, key: str) -> str:
    """How errors name a parameter: as Django's settings write it, or in a URL's query."""
    return f"OPTIONS[{key!r}]" if option == "OPTIONS" else f"{option} query parameter {key!r}"


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return value if isinstance(value, str) else str(value)


def _timeout(value: str, *, name: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    # libpq waits forever for 0; the layer's retries and errors rely on a bounded wait.
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{name} must be a finite number of seconds > 0, not {value!r}")
    return seconds


def _settings_from_options(value: str, *, name: str) -> dict[str, str]:
    """The session settings of libpq's ``options``: ``-c name=value`` and ``--name=value``."""
    tokens = _split_options(value)
    settings: dict[str, str] = {}
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token == "-c" and index + 1 < len(tokens):
            pair, index = tokens[index + 1], index + 2
        elif token.startswith("-c") and len(token) > 2:
            pair, index = token[2:], index + 1
        elif token.startswith("--"):
            pair, index = token[2:], index + 1
        else:
            # The layer merges these with its own session settings, which it can do by name.
            raise ValueError(f"{name} may hold only -c name=value settings, not {token!r}: {value!r}")
        setting_name, equals, setting = pair.partition("=")
        if not equals or not setting_name:
            raise ValueError(f"{name}: expected -c name=value, got {pair!r}")
        settings[setting_name.replace("-", "_")] = setting
    return settings


def _split_options(value: str) -> list[str]:
    """libpq's split of ``options``: at whitespace, where a backslash keeps the next character."""
    tokens: list[str] = []
    current: list[str] = []
    escaped = False
    for char in value:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char.isspace():
            if current:
                tokens.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        tokens.append("".join(current))
    return tokens


def _merge_dsn(base: str, extra: str) -> str:
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(base).query))
    query.update(urllib.parse.parse_qsl(urllib.parse.urlsplit(extra).query))
    return "postgresql://?" + urllib.parse.urlencode(query)


def _merge_dicts(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    return {**base, **extra}
