"""The project's CHANNEL_LAYERS entries that use this layer, their databases, and migrating them."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, TextIO

from django.conf import settings
from django.db import connections, router
from django.utils.module_loading import import_string
from sqlalchemy.engine import URL

from ...config import URL_ENV_VAR, build_config
from ...database_url import DJANGO_KEYS, django_url, parse_url, safe_url
from ...layer import PostgresChannelLayer
from ...shards import ShardedChannelLayer
from ...shards.config import CONNECTION_OPTIONS, parse_shards
from ...store.migrate import current_revision, migrate, migration_head

APP_LABEL = "channel_layer_pg"


@dataclass(frozen=True)
class LayerDatabase:
    """One CHANNEL_LAYERS entry of this layer and the database its CONFIG names."""

    name: str
    url: URL  # postgresql://, libpq parameters in the query, as the user wrote them
    schema: str | None = None  # the layer's schema option: where its tables are
    shard: str | None = None  # the shard's name, for a ShardedChannelLayer entry

    @property
    def where(self) -> str:
        """The database, and the schema if the layer names one, for messages."""
        where = safe_url(self.url) + (f" (schema {self.schema})" if self.schema else "")
        return f"shard {self.shard!r}: {where}" if self.shard is not None else where

    def is_on(self, alias: str) -> bool:
        """Whether this layer's database is the one DATABASES[alias] names now."""
        try:
            theirs = django_url(connections[alias].settings_dict)
        except (TypeError, ValueError):  # not PostgreSQL, or settings the layer would reject
            return False
        return _identity(self.url) == _identity(theirs)


def layer_entries() -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(name, CONFIG) of each CHANNEL_LAYERS entry whose BACKEND is this layer, sharded or not."""
    for name, entry in (getattr(settings, "CHANNEL_LAYERS", None) or {}).items():
        try:
            backend = import_string(entry.get("BACKEND", ""))
        except ImportError:
            continue
        if isinstance(backend, type) and issubclass(backend, (PostgresChannelLayer, ShardedChannelLayer)):
            yield name, entry.get("CONFIG") or {}


def layer_database(name: str, config: Mapping[str, Any]) -> LayerDatabase:
    """The database of one entry; TypeError or ValueError as the layer itself would raise."""
    schema = build_config(config).schema
    if config.get("engine") is not None:
        raise ValueError(
            f"channel layer {name!r} is given an engine, which names no database here; "
            "migrate it with channel_layer_pg.migrate(url)"
        )
    if config.get("url") is not None:
        return LayerDatabase(name, parse_url(config["url"]), schema)
    django = {key: config[key] for key in DJANGO_KEYS if key in config}
    if django:
        return LayerDatabase(name, django_url(django), schema)
    return LayerDatabase(name, parse_url(os.environ[URL_ENV_VAR], option=URL_ENV_VAR), schema)


def entry_databases(name: str, config: Mapping[str, Any]) -> list[LayerDatabase]:
    """The databases of one entry: its one, or each shard's of a sharded layer."""
    if "shards" not in config:
        return [layer_database(name, config)]
    common = {key: value for key, value in config.items() if key != "shards"}
    given = [key for key in CONNECTION_OPTIONS if key in common]
    if given:
        raise TypeError(f"a sharded layer takes its databases in shards=, not {given[0]!r}")
    return [
        replace(layer_database(name, {**common, **shard.options}), shard=shard.name)
        for shard in parse_shards(config["shards"])
    ]


def layer_databases() -> list[LayerDatabase]:
    """The databases of each entry whose CONFIG is valid (E001 reports the others)."""
    found = []
    for name, config in layer_entries():
        try:
            found.extend(entry_databases(name, config))
        except (TypeError, ValueError):
            continue
    return found


def migrate_to_head(layer: LayerDatabase, *, verbosity: int, stdout: TextIO) -> None:
    """Run the layer's Alembic migrations up to head, unless its schema is there already."""
    before = current_revision(layer.url, schema=layer.schema)
    if before == migration_head():
        if verbosity >= 2:
            stdout.write(f"  Channel layer {layer.name!r}: schema at head ({layer.where})\n")
        return
    migrate(layer.url, schema=layer.schema)
    if verbosity >= 1:
        stdout.write(
            f"  Migrated channel layer {layer.name!r} schema at {layer.where}"
            f" from {before or 'nothing'} to {migration_head()}\n"
        )


def migrate_after_django(using: str, verbosity: int = 1, **kwargs: Any) -> None:
    """post_migrate: bring to head the layers whose database is the alias just migrated."""
    if router.allow_migrate(using, APP_LABEL) is False:
        return
    stdout = kwargs.get("stdout") or sys.stdout
    for layer in layer_databases():
        if layer.is_on(using):
            migrate_to_head(layer, verbosity=verbosity, stdout=stdout)


def _identity(url: URL) -> tuple[str | None, int, str | None]:
    # A socket directory may be written as the host or as ?host=; libpq's default port is 5432.
    host = url.host or url.query.get("host") or None
    return (str(host) if host is not None else None, url.port or 5432, url.database)
