"""A PostgreSQL channel layer for Django Channels and any ASGI application."""

from .errors import (
    ChannelFull,
    ChannelLayerError,
    DatabaseFullError,
    DatabaseReadOnlyError,
    DatabaseUnreachableError,
    DecryptionError,
    LayerClosedError,
    SchemaMissingError,
    SchemaOutdatedError,
    StatementRejectedError,
    StatementTimeoutError,
    TransactionConflictError,
)
from .layer import PostgresChannelLayer
from .stats import LayerStats
from .store.migrate import migrate

__all__ = [
    "ChannelFull",
    "ChannelLayerError",
    "DatabaseFullError",
    "DatabaseReadOnlyError",
    "DatabaseUnreachableError",
    "DecryptionError",
    "LayerClosedError",
    "LayerStats",
    "PostgresChannelLayer",
    "SchemaMissingError",
    "SchemaOutdatedError",
    "StatementRejectedError",
    "StatementTimeoutError",
    "TransactionConflictError",
    "migrate",
]
