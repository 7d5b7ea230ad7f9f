"""The one place that makes layers: ours, channels_redis, channels_postgres, in-memory, and
channels_rabbitmq and channels-nats (made in ``brokers.py``).

Ours is imported through its public API only (``from channel_layer_pg import ...``), so the
same harness runs against any checkout put first on PYTHONPATH. The few internals a workload
needs (statements for EXPLAIN, the embedded server, settings to print) are reached through
``internal()``, which knows both the current and the earlier module names and fails with a
message saying which workload cannot run, never at import time.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import os
import subprocess
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from . import brokers
from .procs import worker_services

# Every layer that has the option gets it, so throughput workloads never lose messages (or
# raise ChannelFull) because a queue filled faster than its receiver drained it.
CAPACITY = 10_000
OURS, REDIS, CHANNELS_POSTGRES, INMEMORY = "ours", "redis", "channels_postgres", "inmemory"
RABBITMQ, NATS = "rabbitmq", "nats"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/bench"
DEFAULT_REDIS = "redis://127.0.0.1:6379"
RABBITMQ_ENV, NATS_ENV = "BENCH_RABBITMQ", "BENCH_NATS"

# What a workload may need that some layer lacks (Workload.needs, LayerSpec.lacks).
NORMAL = "normal channels"  # send/receive on a plain name, a work queue shared by processes
LOOPS = "other event loops"  # calls from a loop other than the one the layer was made on
SHARED = "shared state"  # a second instance, or another process, reaches this one's channels
GROUPS = "groups"


@dataclass(frozen=True)
class Services:
    """Where the external services are; all a layer factory needs besides the prefix."""

    pg_url: str
    redis_url: str = DEFAULT_REDIS
    rabbitmq_url: str = brokers.DEFAULT_RABBITMQ
    nats_url: str = brokers.DEFAULT_NATS

    def environment(self) -> dict[str, str]:
        """For a worker process, beside the database and Redis URLs procs passes itself;
        in its environment, never in argv, where ps would show a password."""
        return {RABBITMQ_ENV: self.rabbitmq_url, NATS_ENV: self.nats_url}

    @classmethod
    def in_worker(cls) -> Services:
        url, redis = worker_services()
        return cls(
            url,
            redis or DEFAULT_REDIS,
            os.environ.get(RABBITMQ_ENV, brokers.DEFAULT_RABBITMQ),
            os.environ.get(NATS_ENV, brokers.DEFAULT_NATS),
        )


def ours(url: str, prefix: str, **options: Any) -> Any:
    """channel_layer_pg's layer, from whichever checkout is on the path."""
    from channel_layer_pg import PostgresChannelLayer

    return PostgresChannelLayer(url=url, prefix=prefix, **options)


def imported_from() -> str:
    """The channel_layer_pg this process imports, and its git revision: the run's label."""
    spec = importlib.util.find_spec("channel_layer_pg")
    if spec is None or spec.origin is None:
        return "not installed"
    directory = os.path.dirname(spec.origin)
    try:
        described = subprocess.run(
            ["git", "-C", directory, "describe", "--always", "--dirty"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        described = "not a git checkout"
    return f"{directory} ({described})"


# Internal names across layouts: the current one first, then older ones.
_INTERNALS = {
    "CLAIM": ("channel_layer_pg.store.statements", "channel_layer_pg.statements"),
    "SEND": ("channel_layer_pg.store.statements", "channel_layer_pg.statements"),
    "send_parameters": (
        "channel_layer_pg.store.statements",
        "channel_layer_pg.store.fanout",
        "channel_layer_pg.fanout",
    ),
    "embedded_postgres": ("channel_layer_pg.embedded",),
}


def internal(name: str) -> Any:
    """An internal of channel_layer_pg, for the few workloads that measure one directly."""
    for module in _INTERNALS[name]:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise RuntimeError(f"this checkout of channel_layer_pg has no {name} in {' or '.join(_INTERNALS[name])}")


def describe_ours(layer: Any) -> str:
    # Private, read only to print: the defaults decide durability and pool size, which matter
    # when comparing with channels_postgres (whose commits are synchronous).
    config = getattr(layer, "_config", None)
    names = ("capacity", "expiry", "pool_size", "max_overflow", "synchronous_commit")
    return ", ".join(f"{name}={getattr(config, name)!r}" for name in names if hasattr(config, name))


# -- the peers --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSpec:
    name: str
    # A reason the layer cannot run here (package or service missing), or None if it can.
    unavailable: Callable[[Services], Awaitable[str | None]]
    # A fresh layer on the given prefix, made on the event loop that uses it first
    # (channels_rabbitmq needs a running loop and binds to it); it opens nothing yet.
    make: Callable[[Services, str], Any]
    describe: Callable[[Any], str]
    # Features (NORMAL, LOOPS, SHARED, GROUPS) the layer lacks, each with the reason: a
    # workload that needs one shows "n/a" for this layer, and the reason goes in the notes.
    lacks: dict[str, str] = field(default_factory=dict)


async def _ours_unavailable(services: Services) -> str | None:
    if importlib.util.find_spec("channel_layer_pg") is None:
        return "channel_layer_pg is not installed"
    layer = ours(services.pg_url, "benchcheck")
    try:
        await asyncio.wait_for(layer.check(), 15)  # says what is wrong: unreachable, no schema
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        await asyncio.wait_for(layer.close(), 15)
    return None


async def _redis_unavailable(services: Services) -> str | None:
    if importlib.util.find_spec("channels_redis") is None:
        return "channels_redis is not installed"
    import redis.asyncio as aioredis

    client = aioredis.from_url(services.redis_url)
    try:
        await asyncio.wait_for(client.ping(), 5)
    except Exception as exc:
        return f"Redis at {services.redis_url} does not answer: {exc}"
    finally:
        await client.aclose()
    return None


def _make_redis(services: Services, prefix: str) -> Any:
    from channels_redis.core import RedisChannelLayer

    return RedisChannelLayer(hosts=[services.redis_url], prefix=prefix, capacity=CAPACITY)


# channels_postgres reads its database through Django's settings, configured once per process.
_django_lock = threading.Lock()
_django_database: dict[str, Any] | None = None


def _django_settings(pg_url: str) -> dict[str, Any]:
    global _django_database
    with _django_lock:
        if _django_database is None:
            import django
            from django.conf import settings
            from sqlalchemy.engine import make_url

            url = make_url(pg_url)
            database = {
                "ENGINE": "django.db.backends.postgresql", "NAME": url.database or "postgres",
                "USER": url.username or "", "PASSWORD": url.password or "",
                "HOST": url.host or "", "PORT": str(url.port or ""),
            }  # fmt: skip
            # Its group_discard uses the ORM on the "channels_postgres" alias.
            settings.configure(
                DATABASES={"default": database, "channels_postgres": database},
                INSTALLED_APPS=["channels_postgres"],
                USE_TZ=True,
            )
            django.setup()
            _django_database = database
        return _django_database


def _migrate_channels_postgres(pg_url: str) -> None:
    from django.core.management import call_command

    _django_settings(pg_url)
    call_command("migrate", "channels_postgres", database="channels_postgres", verbosity=0)


async def _channels_postgres_unavailable(services: Services) -> str | None:
    missing = [n for n in ("channels_postgres", "django", "psycopg") if importlib.util.find_spec(n) is None]
    if missing:
        return f"not installed: {', '.join(missing)}"
    try:
        # Django refuses synchronous database work on a thread with a running event loop.
        await asyncio.wait_for(asyncio.to_thread(_migrate_channels_postgres, services.pg_url), 60)
    except Exception as exc:
        return f"cannot create its tables: {type(exc).__name__}: {exc}"
    return None


def _make_channels_postgres(services: Services, prefix: str) -> Any:
    database = _django_settings(services.pg_url)  # before its models are imported
    from channels_postgres.core import PostgresChannelLayer

    return PostgresChannelLayer(prefix=prefix, **database)


async def _inmemory_unavailable(_services: Services) -> str | None:
    return None if importlib.util.find_spec("channels") else "channels is not installed"


def _make_inmemory(_services: Services, _prefix: str) -> Any:
    from channels.layers import InMemoryChannelLayer

    return InMemoryChannelLayer(capacity=CAPACITY)


SPECS: dict[str, LayerSpec] = {
    spec.name: spec
    for spec in (
        LayerSpec(
            OURS,
            _ours_unavailable,
            lambda services, prefix: ours(services.pg_url, prefix, capacity=CAPACITY),
            describe_ours,
        ),
        LayerSpec(
            REDIS,
            _redis_unavailable,
            _make_redis,
            lambda layer: f"capacity={layer.capacity}, expiry={layer.expiry}, hosts={len(layer.hosts)}",
        ),
        LayerSpec(
            CHANNELS_POSTGRES,
            _channels_postgres_unavailable,
            _make_channels_postgres,
            lambda layer: (
                f"expiry={layer.expiry}, no capacity option, psycopg pool and synchronous_commit defaults"
            ),
        ),
        LayerSpec(
            INMEMORY,
            _inmemory_unavailable,
            _make_inmemory,
            lambda layer: f"capacity={layer.capacity}, expiry={layer.expiry}",
            lacks={SHARED: "its instances share nothing: messages never leave the instance"},
        ),
        LayerSpec(
            RABBITMQ,
            lambda services: brokers.rabbitmq_unavailable(services.rabbitmq_url),
            lambda services, _prefix: brokers.make_rabbitmq(services.rabbitmq_url, CAPACITY),
            brokers.describe_rabbitmq,
            lacks={NORMAL: brokers.RABBITMQ_NO_NORMAL, LOOPS: brokers.RABBITMQ_ONE_LOOP},
        ),
        LayerSpec(
            NATS,
            lambda services: brokers.nats_unavailable(services.nats_url),
            lambda services, prefix: brokers.make_nats(services.nats_url, prefix, CAPACITY),
            brokers.describe_nats,
        ),
    )
}


async def close_layer(name: str, layer: Any, timeout: float) -> None:
    """Release what the layer holds, by whichever method it has."""
    if name == CHANNELS_POSTGRES:
        # One pool per process in a module global, bound to the loop that made it: without
        # this a "fresh" layer would reuse the previous workload's pool.
        import channels_postgres.db as db

        pool, db.connection_pool = db.connection_pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 5)
            except Exception:  # a pool made on a loop that is gone cannot be closed; drop it
                pass
            except asyncio.CancelledError:
                # psycopg_pool's close() re-raises the cancellation of its own worker tasks;
                # only a cancellation of this task itself must go on.
                if cancelling():
                    raise
        return
    close = getattr(layer, "close", None) or getattr(layer, "close_pools", None)  # redis: close_pools
    if close is not None:
        await asyncio.wait_for(close(), timeout)


def cancelling() -> bool:
    """Whether the current task is being cancelled (not merely seeing another's CancelledError)."""
    task = asyncio.current_task()
    return task is not None and bool(getattr(task, "cancelling", lambda: 1)())
