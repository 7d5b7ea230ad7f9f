"""The AppConfig: connects the post_migrate handler and registers the checks."""

from __future__ import annotations

from django.apps import AppConfig
from django.core import checks
from django.db.models.signals import post_migrate


# Django ships no type hints, so its base classes are Any to mypy.
class ChannelLayerPgConfig(AppConfig):  # type: ignore[misc]
    name = "channel_layer_pg.contrib.django"
    label = "channel_layer_pg"
    verbose_name = "PostgreSQL channel layer"

    def ready(self) -> None:
        from .checks import check_layer_config, check_layer_schema
        from .layers import migrate_after_django

        # dispatch_uid: a project that imports the app twice still migrates once.
        post_migrate.connect(migrate_after_django, sender=self, dispatch_uid="channel_layer_pg.migrate")
        checks.register(check_layer_config)
        checks.register(check_layer_schema, checks.Tags.database)
