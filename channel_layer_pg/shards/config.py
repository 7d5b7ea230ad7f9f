"""The ``shards`` option: each shard's name and the connection options of its inner layer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..database_url import DJANGO_IGNORED_KEYS, DJANGO_KEYS, django_url, parse_url, safe_url

# Keys a shard's own entry may hold; every other option is the same for all shards.
SHARD_KEYS = ("name", "url", "listen_url", *DJANGO_KEYS)
# Options that say where a database is: per shard, never for the whole sharded layer.
CONNECTION_OPTIONS = ("url", "listen_url", "engine", *DJANGO_KEYS)


@dataclass(frozen=True)
class Shard:
    """One shard: its ring name and the options that connect its inner layer."""

    name: str
    options: Mapping[str, Any]


def parse_shards(value: object) -> list[Shard]:
    """Check the ``shards`` option: a list of URLs, Django DATABASES aliases or dicts."""
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
        raise TypeError(
            "shards must be a list, each a URL, a Django DATABASES alias or a dict with 'url' or the "
            f"Django keys NAME/USER/PASSWORD/HOST/PORT (and optionally 'name'), not {value!r}"
        )
    if not value:
        raise ValueError("shards must name at least one database")
    shards = [_shard(entry, index) for index, entry in enumerate(value)]
    names = [shard.name for shard in shards]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(
            f"two shards have the same name {duplicates[0]!r}: give each its own database, or a "
            "distinct 'name' if two really share one"
        )
    return shards


def _shard(entry: object, index: int) -> Shard:
    if isinstance(entry, str):
        if "://" in entry:
            # The URL without its password names the shard: stable, and safe in logs.
            return Shard(safe_url(parse_url(entry, option=f"shards[{index}]")), {"url": entry})
        return _django_alias(entry, index)
    if not isinstance(entry, Mapping):
        raise TypeError(f"shards[{index}] must be a URL, an alias or a dict, not {type(entry).__name__}")
    # A DATABASES entry as it stands is fine: the layer ignores Django's own keys (CONN_MAX_AGE, ...).
    unknown = sorted(set(entry) - {*SHARD_KEYS, *DJANGO_IGNORED_KEYS})
    if unknown:
        raise TypeError(
            f"shards[{index}] has the key {unknown[0]!r}: a shard's entry takes only "
            f"{', '.join(SHARD_KEYS)}; pass other options to the layer itself"
        )
    options = {key: entry[key] for key in entry if key != "name"}
    if "url" in options:
        derived = safe_url(parse_url(options["url"], option=f"shards[{index}]['url']"))
    elif any(key in options for key in DJANGO_KEYS):
        derived = safe_url(django_url({key: options[key] for key in DJANGO_KEYS if key in options}))
    else:
        raise ValueError(f"shards[{index}] names no database: give it 'url' or the Django keys NAME/HOST/...")
    name = entry.get("name", derived)
    if not isinstance(name, str) or not name:
        raise TypeError(f"shards[{index}]['name'] must be a non-empty str, not {name!r}")
    return Shard(name, options)


def _django_alias(alias: str, index: int) -> Shard:
    try:
        from django.conf import settings
    except ImportError:
        raise ValueError(
            f"shards[{index}] is {alias!r}, neither a URL (postgresql://...) nor, without Django "
            "installed, a DATABASES alias"
        ) from None
    databases = getattr(settings, "DATABASES", {}) or {}
    if alias not in databases:
        raise ValueError(f"shards[{index}] is {alias!r}: not a URL, and DATABASES has no such alias")
    database = databases[alias]
    return Shard(alias, {key: database[key] for key in DJANGO_KEYS if key in database})
