"""A PostgreSQL channel layer for Django Channels and any ASGI application."""

from .errors import (
    ChannelFull,
    ChannelLayerError,
    DatabaseUnreachableError,
    DecryptionError,
    LayerClosedError,
    SchemaMissingError,
)
from .layer import PostgresChannelLayer
from .stats import LayerStats
from .store.migrate import migrate

__all__ = [
    "ChannelFull",
    "ChannelLayerError",
    "DatabaseUnreachableError",
    "DecryptionError",
    "LayerClosedError",
    "LayerStats",
    "PostgresChannelLayer",
    "SchemaMissingError",
    "migrate",
]
