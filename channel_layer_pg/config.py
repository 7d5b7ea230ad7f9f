"""The layer's options: checked once, with errors that name the option at fault."""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import URL

from .capacity import ChannelCapacity, parse_channel_capacity
from .database_url import (
    DJANGO_IGNORED_KEYS,
    DJANGO_KEYS,
    asyncpg_url,
    merge_connect_args,
    url_from_django,
)
from .faults import FaultHooks
from .naming import validate_group_name
from .serialization import Codec, Encryptor, resolve_serializer

URL_ENV_VAR = "CHANNEL_LAYER_PG_URL"

OPTION_NAMES = (
    "url",
    "listen_url",
    "engine",
    "prefix",
    "schema",
    "expiry",
    "group_expiry",
    "capacity",
    "channel_capacity",
    "symmetric_encryption_keys",
    "serializer",
    "max_message_size",
    "pool_size",
    "max_overflow",
    "pool_idle_timeout",
    "connect_timeout",
    "synchronous_commit",
    "close_timeout",
    "slow_statement_threshold",
    "fault_hooks",
)
_SYNCHRONOUS_COMMIT = ("off", "local", "remote_write", "on", "remote_apply")
DEFAULT_MAX_MESSAGE_SIZE = 2**20
# PostgreSQL stores at most 1 GB in one bytea value.
_MOST_MESSAGE_SIZE = 2**30 - 1
# Durations become timedeltas and PostgreSQL intervals, and expiries are added to the time
# now: a hundred years keeps every sum far inside both (datetime ends at year 9999).
_MOST_SECONDS = 100 * 365 * 86400
# Capacities are bound as PostgreSQL bigints.
_MOST_CAPACITY = 2**63 - 1


@dataclass(frozen=True)
class LayerConfig:
    url: URL | None
    engine: Any  # AsyncEngine | None; Any keeps this module free of the asyncio extension
    prefix: str
    expiry: timedelta
    group_expiry: timedelta | None
    capacity: int
    channel_capacity: tuple[ChannelCapacity, ...]
    codec: Codec
    pool_size: int
    max_overflow: int
    connect_timeout: float
    # None: left to the server, as it must be behind a transaction pooler (see listen_url).
    synchronous_commit: str | None
    connect_args: dict[str, Any] = field(default_factory=dict)
    # A direct PostgreSQL URL for LISTEN. Setting it says that the database URL is a pooler in
    # transaction mode (PgBouncer), where LISTEN, session settings and named prepared
    # statements do not survive from one transaction to the next.
    listen_url: URL | None = None
    listen_connect_args: dict[str, Any] = field(default_factory=dict)
    # Seconds a pooled connection may stay idle, and the LISTEN connection listen to nothing,
    # before it is closed (None: kept while the layer is open). A minute outlasts the pauses
    # of a layer in use (its cleanup alone runs every 30 s, so a quiet layer keeps one warm
    # connection) and lets an idle one give its server connections back, each a PostgreSQL
    # backend holding memory and one of max_connections, at the price of a new connection
    # (a few ms) after a quiet minute.
    pool_idle_timeout: float | None = 60.0
    # How long close() waits for each of: claims still running, putting back the messages
    # they claimed, statements still running. A lock held on the table (a migration, VACUUM
    # FULL) must not hold up a shutdown for its duration.
    close_timeout: float = 5.0
    # Statements slower than this are logged, by name: their parameters hold payloads. The
    # layer's statements take about a millisecond; a second means locks, I/O or a backlog.
    slow_statement_threshold: float = 1.0
    # A seam for the layer's own tests of failures and races (see faults.py); None in use.
    fault_hooks: FaultHooks | None = None
    # The PostgreSQL schema that holds the layer's tables (None: whichever search_path finds).
    # With a role per schema, PostgreSQL's privileges keep one application's messages from
    # another's; a prefix alone does not (see docs/isolation.md).
    schema: str | None = None

    @property
    def behind_pooler(self) -> bool:
        """Whether the layer's statements go through a transaction pooler."""
        return self.listen_url is not None

    def capacity_for(self, channel: str) -> int:
        for rule in self.channel_capacity:
            if rule.pattern.match(channel):
                return rule.capacity
        return self.capacity

    def capacity_parameters(self) -> dict[str, Any]:
        """The bound parameters of store.sql.capacity_of(): the same capacities, for SQL."""
        return {
            "capacity": self.capacity,
            "capacity_patterns": [rule.sql_pattern for rule in self.channel_capacity],
            "capacity_limits": [rule.capacity for rule in self.channel_capacity],
        }

    @property
    def safe_url(self) -> str:
        """The database URL with its password hidden, for logs, reprs and error messages."""
        url = self.url if self.url is not None else getattr(self.engine, "url", None)
        if url is None:
            return "<unknown>"
        # Shown as the user wrote it, without the driver the layer chose for them.
        return url.set(drivername=url.get_backend_name()).render_as_string(hide_password=True)

    @property
    def host_and_port(self) -> str:
        url = self.url if self.url is not None else getattr(self.engine, "url", None)
        if url is None:
            return "<unknown>"
        return f"{url.host or 'local socket'}:{url.port or 5432}"

    def for_listening(self) -> LayerConfig:
        """These settings as the LISTEN connection sees them: errors name the server it uses."""
        if self.listen_url is None:
            return self
        return replace(self, url=self.listen_url, engine=None)


def build_config(options: Mapping[str, Any]) -> LayerConfig:
    """Check every option (a typo is an error naming it) and derive the layer's settings."""
    _reject_unknown(options)
    django = {key: options[key] for key in DJANGO_KEYS if key in options}
    url, engine = options.get("url"), options.get("engine")
    given = [name for name, value in (("url", url), ("engine", engine)) if value is not None]
    if django:
        given.append("the Django keys " + ", ".join(django))
    if len(given) > 1:
        raise ValueError(f"give the database one way, not several: got {' and '.join(given)}")

    connect_args: dict[str, Any] = {}
    if engine is not None:
        _check_engine(engine)
        database_url = None
    elif django:
        database_url, connect_args = url_from_django(django)
    else:
        if url is None:
            url = os.environ.get(URL_ENV_VAR)
        if url is None:
            raise ValueError(
                "no database given: pass url='postgresql://user:password@host:port/db', the Django "
                f"keys NAME/USER/PASSWORD/HOST/PORT, engine=<AsyncEngine>, or set {URL_ENV_VAR}"
            )
        database_url, connect_args = asyncpg_url(url)

    # libpq's connect_timeout (OPTIONS, or the URL's query) is the layer's connect_timeout
    # unless that is given: it bounds the whole wait, retries included, not one attempt.
    libpq_timeout = connect_args.pop("timeout", None)
    listen_url: URL | None = None
    listen_connect_args: dict[str, Any] = {}
    if options.get("listen_url") is not None:
        listen_url, listen_own = asyncpg_url(options["listen_url"], option="listen_url")
        # Connected as the database is (TLS files, timeout, settings), with what listen_url's
        # own query says on top.
        listen_connect_args = merge_connect_args(connect_args, listen_own)
    synchronous_commit: str | None = _synchronous_commit(options.get("synchronous_commit", "off"))
    if listen_url is not None:
        if "synchronous_commit" in options:
            # A session setting cannot be applied through a transaction pooler: each statement
            # may run on another server connection. Silently running with the server's value
            # would break the durability the option asked for.
            raise ValueError(
                "synchronous_commit cannot be applied through a transaction pooler (listen_url is "
                "set): remove it and set it for the role or database instead, e.g. ALTER ROLE app "
                f"SET synchronous_commit = {synchronous_commit}, or in PgBouncer's connect_query"
            )
        synchronous_commit = None

    keys = options.get("symmetric_encryption_keys")
    if keys is not None and (isinstance(keys, (str, bytes)) or not hasattr(keys, "__iter__")):
        raise TypeError("symmetric_encryption_keys must be a list of keys, not a single key")
    prefix = _prefix(options.get("prefix", "asgi"))
    # "is not None", not truthiness: an empty list is a mistake (Encryptor says so), never
    # a quiet way to store messages unencrypted.
    codec = Codec(
        resolve_serializer(options.get("serializer", "msgpack")),
        Encryptor(keys) if keys is not None else None,
        prefix=prefix,
        max_message_size=_max_message_size(options.get("max_message_size", DEFAULT_MAX_MESSAGE_SIZE)),
    )
    return LayerConfig(
        url=database_url,
        engine=engine,
        prefix=prefix,
        expiry=_expiry(options.get("expiry", 60)),
        group_expiry=_group_expiry(options.get("group_expiry", 86400)),
        capacity=_capacity("capacity", options.get("capacity", 100)),
        channel_capacity=parse_channel_capacity(
            options.get("channel_capacity") or {}, positive_int=_capacity
        ),
        codec=codec,
        pool_size=positive_int("pool_size", options.get("pool_size", 10)),
        max_overflow=_non_negative_int("max_overflow", options.get("max_overflow", 10)),
        pool_idle_timeout=_optional_seconds("pool_idle_timeout", options.get("pool_idle_timeout", 60)),
        connect_timeout=_seconds("connect_timeout", options.get("connect_timeout", libpq_timeout or 10)),
        synchronous_commit=synchronous_commit,
        connect_args=connect_args,
        listen_url=listen_url,
        listen_connect_args=listen_connect_args,
        close_timeout=_seconds("close_timeout", options.get("close_timeout", 5)),
        slow_statement_threshold=_seconds(
            "slow_statement_threshold", options.get("slow_statement_threshold", 1)
        ),
        fault_hooks=_fault_hooks(options.get("fault_hooks")),
        schema=_schema(options.get("schema")),
    )


def with_option(config: LayerConfig, name: str, value: object) -> LayerConfig:
    """``config`` with ``expiry``, ``group_expiry`` or ``capacity`` set to ``value``, checked.

    A running layer takes these three by assignment (``layer.expiry = 3``), as channels_postgres's
    users are used to; the others shape connections and statements made at construction.
    """
    if name == "expiry":
        return replace(config, expiry=_expiry(value))
    if name == "group_expiry":
        return replace(config, group_expiry=_group_expiry(value))
    if name == "capacity":
        return replace(config, capacity=_capacity(name, value))
    raise ValueError(f"{name!r} cannot change on a running layer: pass it to the constructor")


def _reject_unknown(options: Mapping[str, Any]) -> None:
    known = (*OPTION_NAMES, *DJANGO_KEYS, *DJANGO_IGNORED_KEYS)
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"unknown PostgresChannelLayer option {name!r}{hint}")


def _check_engine(engine: object) -> None:
    from sqlalchemy.ext.asyncio import AsyncEngine

    if not isinstance(engine, AsyncEngine):
        raise TypeError(f"engine must be a SQLAlchemy AsyncEngine, not {type(engine).__name__}")
    if engine.dialect.driver != "asyncpg":
        raise ValueError(
            f"engine must use the asyncpg driver (postgresql+asyncpg://...), not {engine.dialect.driver!r}"
        )


def _prefix(value: object) -> str:
    try:
        return validate_group_name(value)
    except TypeError as exc:
        raise TypeError(str(exc).replace("group name", "prefix")) from None


def _expiry(value: object) -> timedelta:
    return timedelta(seconds=_seconds("expiry", value))


def _group_expiry(value: object) -> timedelta | None:
    seconds = _seconds("group_expiry", value, allow_zero=True)
    return timedelta(seconds=seconds) if seconds else None  # 0: memberships never lapse


def _schema(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"schema must be a str naming a PostgreSQL schema, not {value!r}")
    # PostgreSQL truncates longer identifiers, so two long names could name one schema.
    if not value or len(value.encode()) > 63 or "\x00" in value:
        raise ValueError(f"schema must be a PostgreSQL identifier of 1 to 63 bytes, not {value!r}")
    return value


def _seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {value!r}")
    if not (math.isfinite(value) and (0 <= value if allow_zero else 0 < value) and value <= _MOST_SECONDS):
        raise ValueError(
            f"{name} must be a finite number of seconds {'>= 0' if allow_zero else '> 0'} and at most "
            f"{_MOST_SECONDS} (100 years), not {value!r}"
        )
    return float(value)


def _optional_seconds(name: str, value: object) -> float | None:
    return None if value is None else _seconds(name, value)


def positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value!r}")
    return value


def _capacity(name: str, value: object) -> int:
    capacity = positive_int(name, value)
    if capacity > _MOST_CAPACITY:
        raise ValueError(f"{name} must be at most 2**63 - 1 (a PostgreSQL bigint), not {value!r}")
    return capacity


def _max_message_size(value: object) -> int | None:
    if value is None:
        return None
    size = positive_int("max_message_size", value)
    if size > _MOST_MESSAGE_SIZE:
        raise ValueError(
            f"max_message_size must be at most {_MOST_MESSAGE_SIZE} bytes (PostgreSQL stores at most "
            f"1 GB in one value), or None for no limit, not {value!r}"
        )
    return size


def _non_negative_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if value < 0:
        raise ValueError(f"{name} must not be negative, not {value!r}")
    return value


def _fault_hooks(value: object) -> FaultHooks | None:
    if value is not None and not isinstance(value, FaultHooks):
        raise TypeError(
            f"fault_hooks must be a channel_layer_pg.faults.FaultHooks or None, not {type(value).__name__}"
        )
    return value


def _synchronous_commit(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value not in _SYNCHRONOUS_COMMIT:
        raise ValueError(f"synchronous_commit must be one of {', '.join(_SYNCHRONOUS_COMMIT)}, not {value!r}")
    return str(value)
