"""``manage.py migrate_channel_layer [NAME...]``: migrate layers whatever database they use.

``migrate`` brings to head the layers on a DATABASES alias; this command is for a layer on a
database of its own, and for going to a revision other than head. It reads the database
from CHANNEL_LAYERS, TLS parameters included, so no URL needs writing out by hand.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from channel_layer_pg.contrib.django.layers import entry_databases, layer_entries, migrate_to_head
from channel_layer_pg.store.migrate import migrate


# Django ships no type hints, so its base classes are Any to mypy.
class Command(BaseCommand):  # type: ignore[misc]
    help = "Bring the tables of this project's channel_layer_pg channel layers (every shard) to a revision."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("names", nargs="*", help="CHANNEL_LAYERS entries (default: all of this layer)")
        parser.add_argument("--revision", default="head", help="Alembic revision (default: head)")

    def handle(self, *args: Any, **options: Any) -> None:
        entries = dict(layer_entries())
        names = options["names"] or list(entries)
        unknown = [name for name in names if name not in entries]
        if unknown:
            raise CommandError(
                "no PostgresChannelLayer or ShardedChannelLayer in CHANNEL_LAYERS named "
                f"{', '.join(map(repr, unknown))}; "
                f"there are: {', '.join(map(repr, entries)) or 'none'}"
            )
        for name in names:
            try:
                layers = entry_databases(name, entries[name])
            except (TypeError, ValueError) as exc:
                raise CommandError(f"CHANNEL_LAYERS[{name!r}] CONFIG: {exc}") from None
            for layer in layers:  # each shard of a sharded layer
                if options["revision"] == "head":
                    # One level up from migrate's: asked by name, "already at head" is news too.
                    migrate_to_head(layer, verbosity=options["verbosity"] + 1, stdout=self.stdout)
                else:
                    migrate(layer.url, options["revision"], schema=layer.schema)
                    revision = options["revision"]
                    self.stdout.write(f"Migrated channel layer {name!r} at {layer.where} to {revision}")
