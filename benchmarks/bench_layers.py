"""The channel layers under comparison: how to tell if each can run, make one, and tear it down.

Each layer is described by a LayerSpec. The benchmark makes a fresh layer per workload (and per
worker process), so no workload sees connections, readers or buffers another one warmed up.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

# Every layer that supports it gets this capacity, so throughput workloads never lose messages
# (or raise ChannelFull) because a queue filled faster than its receiver drained it.
CAPACITY = 10_000

OURS = "ours"
REDIS = "redis"
CHANNELS_POSTGRES = "channels_postgres"
INMEMORY = "inmemory"


@dataclass(frozen=True)
class Services:
    """Where the external services are; all a layer factory needs besides the prefix."""

    pg_url: str
    redis_url: str


@dataclass(frozen=True)
class LayerSpec:
    name: str
    # A reason the layer cannot run here (package or service missing), or None if it can.
    unavailable: Callable[[Services], Awaitable[str | None]]
    # A fresh layer on the given prefix. Synchronous: constructors must not need a loop.
    make: Callable[[Services, str], Any]
    # The settings that matter for comparing it, read from a layer ``make`` returned.
    describe: Callable[[Any], str]
    # False for layers whose messages never leave the process (the in-memory layer).
    cross_process: bool = True


# -- ours -------------------------------------------------------------------------------------


async def _ours_unavailable(services: Services) -> str | None:
    if importlib.util.find_spec("channel_layer_pg") is None:
        return "channel_layer_pg is not installed"
    layer = _make_ours(services, "benchcheck")
    try:
        # check() fails with a message that says what is wrong (unreachable, no schema).
        await asyncio.wait_for(layer.check(), 15)
    except Exception as exc:  # any failure means "cannot benchmark it", with the reason
        return f"{type(exc).__name__}: {exc}"
    finally:
        await asyncio.wait_for(layer.close(), 15)
    return None


def _make_ours(services: Services, prefix: str) -> Any:
    from channel_layer_pg import PostgresChannelLayer

    return PostgresChannelLayer(url=services.pg_url, prefix=prefix, capacity=CAPACITY)


def _describe_ours(layer: Any) -> str:
    # Private, and read only to print it: the defaults decide durability and pool size, which
    # matter when comparing with channels_postgres (whose commits are synchronous).
    config = getattr(layer, "_config", None)
    names = ("capacity", "expiry", "pool_size", "max_overflow", "synchronous_commit")
    shown = [f"{name}={getattr(config, name)!r}" for name in names if hasattr(config, name)]
    return ", ".join(shown) + " (only capacity set by the benchmark)"


# -- channels_redis ---------------------------------------------------------------------------


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


def _describe_redis(layer: Any) -> str:
    return f"capacity={layer.capacity}, expiry={layer.expiry}, hosts={len(layer.hosts)}"


# -- channels_postgres ------------------------------------------------------------------------

# channels_postgres reads its database through Django's settings machinery; configured once per
# process, and its migrations run once per benchmark run (they are idempotent).
_django_lock = threading.Lock()
_django_database: dict[str, Any] | None = None


def django_database(pg_url: str) -> dict[str, Any]:
    """The Django DATABASES entry for ``pg_url``, configuring Django on first use."""
    global _django_database
    with _django_lock:
        if _django_database is None:
            import django
            from django.conf import settings
            from sqlalchemy.engine import make_url

            url = make_url(pg_url)
            database = {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": url.database or "postgres",
                "USER": url.username or "",
                "PASSWORD": url.password or "",
                "HOST": url.host or "",
                "PORT": str(url.port or ""),
            }
            # channels_postgres' group_discard uses the ORM on the "channels_postgres" alias.
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

    django_database(pg_url)
    call_command("migrate", "channels_postgres", database="channels_postgres", verbosity=0)


async def _channels_postgres_unavailable(services: Services) -> str | None:
    missing = [
        name for name in ("channels_postgres", "django", "psycopg") if importlib.util.find_spec(name) is None
    ]
    if missing:
        return f"not installed: {', '.join(missing)}"
    try:
        # Django refuses synchronous database work on a thread with a running event loop.
        await asyncio.wait_for(asyncio.to_thread(_migrate_channels_postgres, services.pg_url), 60)
    except Exception as exc:
        return f"cannot create its tables: {type(exc).__name__}: {exc}"
    return None


def _make_channels_postgres(services: Services, prefix: str) -> Any:
    # Importing channels_postgres.core imports its Django models: settings must come first.
    database = django_database(services.pg_url)
    from channels_postgres.core import PostgresChannelLayer

    return PostgresChannelLayer(prefix=prefix, **database)


async def reset_channels_postgres_pool() -> None:
    """Close channels_postgres' process-wide connection pool so the next layer starts fresh.

    channels_postgres keeps one pool per process in a module global, bound to the event loop
    that created it; without this a "fresh" layer would reuse the previous workload's pool.
    """
    import channels_postgres.db as db

    pool, db.connection_pool = db.connection_pool, None
    if pool is not None:
        try:
            await asyncio.wait_for(pool.close(), 5)
        except Exception:  # a pool made on a loop that is gone cannot be closed; drop it
            pass
        except asyncio.CancelledError:
            # psycopg_pool's close() re-raises the cancellation of its own worker tasks; only a
            # cancellation of this task itself must go on.
            if cancelling():
                raise


def cancelling() -> bool:
    """Whether the current task is being cancelled (as opposed to seeing another's CancelledError)."""
    task = asyncio.current_task()
    return task is not None and bool(getattr(task, "cancelling", lambda: 1)())


def _describe_channels_postgres(layer: Any) -> str:
    return f"expiry={layer.expiry}, no capacity option, psycopg pool and synchronous_commit defaults"


# -- Channels' in-memory layer ----------------------------------------------------------------


async def _inmemory_unavailable(_services: Services) -> str | None:
    if importlib.util.find_spec("channels") is None:
        return "channels is not installed"
    return None


def _make_inmemory(_services: Services, _prefix: str) -> Any:
    from channels.layers import InMemoryChannelLayer

    return InMemoryChannelLayer(capacity=CAPACITY)


def _describe_inmemory(layer: Any) -> str:
    return f"capacity={layer.capacity}, expiry={layer.expiry}"


SPECS: dict[str, LayerSpec] = {
    spec.name: spec
    for spec in (
        LayerSpec(OURS, _ours_unavailable, _make_ours, _describe_ours),
        LayerSpec(REDIS, _redis_unavailable, _make_redis, _describe_redis),
        LayerSpec(
            CHANNELS_POSTGRES,
            _channels_postgres_unavailable,
            _make_channels_postgres,
            _describe_channels_postgres,
        ),
        LayerSpec(INMEMORY, _inmemory_unavailable, _make_inmemory, _describe_inmemory, cross_process=False),
    )
}


async def close_layer(name: str, layer: Any, timeout: float) -> None:
    """Release what the layer holds, by whichever method it has."""
    if name == CHANNELS_POSTGRES:
        await reset_channels_postgres_pool()
        return
    # channels_redis spells it close_pools; ours and the in-memory layer have close().
    close = getattr(layer, "close", None) or getattr(layer, "close_pools", None)
    if close is not None:
        await asyncio.wait_for(close(), timeout)
