"""System checks: the layer's CONFIG (always), and its schema (with ``check --database``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.core import checks

from ...store.migrate import current_revision, migration_head, migration_revisions
from .layers import entry_databases, layer_databases, layer_entries


def check_layer_config(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Each CHANNEL_LAYERS CONFIG of this layer, checked as the layer will check it."""
    errors: list[checks.CheckMessage] = []
    for name, config in layer_entries():
        try:
            entry_databases(name, config)
        except (TypeError, ValueError) as exc:
            errors.append(
                checks.Error(
                    f"CHANNEL_LAYERS[{name!r}] CONFIG: {exc}",
                    obj=f"CHANNEL_LAYERS[{name!r}]",
                    id="channel_layer_pg.E001",
                )
            )
    return errors


def check_layer_schema(
    app_configs: Sequence[Any] | None = None, databases: Sequence[str] | None = None, **kwargs: Any
) -> list[checks.CheckMessage]:
    """The schema of each layer whose database is one of ``databases``, against head."""
    if not databases:
        return []  # connects: only when asked, as Django's own database checks
    head = migration_head()
    found: list[checks.CheckMessage] = []
    for layer in layer_databases():
        alias = next((alias for alias in databases if layer.is_on(alias)), None)
        if alias is None:
            continue
        fix = f"Run: python manage.py migrate --database {alias}"
        where = f"channel layer {layer.name!r} at {layer.where}"
        obj = f"CHANNEL_LAYERS[{layer.name!r}]"
        try:
            revision = current_revision(layer.url, schema=layer.schema)
        except Exception as exc:  # any failure to connect is the finding itself
            found.append(
                checks.Warning(
                    f"{where}: cannot read its schema revision: {type(exc).__name__}: {exc}",
                    hint="Check that the database is reachable with these settings.",
                    obj=obj,
                    id="channel_layer_pg.W004",
                )
            )
            continue
        if revision is None:
            message, check_id = f"{where}: the layer's tables are missing", "channel_layer_pg.W001"
        elif revision == head:
            continue
        elif revision in migration_revisions():
            message = f"{where}: schema at revision {revision}, behind {head}"
            check_id = "channel_layer_pg.W002"
        else:
            found.append(
                checks.Warning(
                    f"{where}: schema at revision {revision}, which this channel_layer_pg does not know",
                    hint="The database was migrated by a newer channel_layer_pg; upgrade this one.",
                    obj=obj,
                    id="channel_layer_pg.W003",
                )
            )
            continue
        found.append(checks.Warning(message, hint=fix, obj=obj, id=check_id))
    return found
