"""A PostgreSQL channel layer for Django Channels and any ASGI application."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .errors import (
        ChannelFull,
        ChannelLayerError,
        DatabaseError,
        DatabaseFullError,
        DatabaseReadOnlyError,
        DatabaseUnreachableError,
        DecryptionError,
        LayerClosedError,
        MessageTooLarge,
        PermissionDeniedError,
        SchemaMissingError,
        SchemaOutdatedError,
        StatementRejectedError,
        StatementTimeoutError,
        TransactionConflictError,
        UndecodableMessageError,
    )
    from .layer import PostgresChannelLayer
    from .shards import ShardedChannelLayer
    from .stats import LayerStats
    from .store.migrate import migrate

__all__ = [
    "ChannelFull",
    "ChannelLayerError",
    "DatabaseError",
    "DatabaseFullError",
    "DatabaseReadOnlyError",
    "DatabaseUnreachableError",
    "DecryptionError",
    "LayerClosedError",
    "LayerStats",
    "MessageTooLarge",
    "PermissionDeniedError",
    "PostgresChannelLayer",
    "SchemaMissingError",
    "SchemaOutdatedError",
    "ShardedChannelLayer",
    "StatementRejectedError",
    "StatementTimeoutError",
    "TransactionConflictError",
    "UndecodableMessageError",
    "migrate",
]

# Each public name is imported from its module on first use. pytest imports the package's
# plugin (channel_layer_pg.testing) in every run of every project that has the package
# installed; importing SQLAlchemy and asyncpg there would cost each such run about 0.3 s.
_MODULES = {
    "ChannelFull": ".errors",
    "ChannelLayerError": ".errors",
    "DatabaseError": ".errors",
    "DatabaseFullError": ".errors",
    "DatabaseReadOnlyError": ".errors",
    "DatabaseUnreachableError": ".errors",
    "DecryptionError": ".errors",
    "LayerClosedError": ".errors",
    "MessageTooLarge": ".errors",
    "PermissionDeniedError": ".errors",
    "SchemaMissingError": ".errors",
    "SchemaOutdatedError": ".errors",
    "StatementRejectedError": ".errors",
    "StatementTimeoutError": ".errors",
    "TransactionConflictError": ".errors",
    "UndecodableMessageError": ".errors",
    "PostgresChannelLayer": ".layer",
    "ShardedChannelLayer": ".shards",
    "LayerStats": ".stats",
    "migrate": ".store.migrate",
}


def __getattr__(name: str) -> object:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
