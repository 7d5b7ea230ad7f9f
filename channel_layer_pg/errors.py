"""Every exception the layer raises on purpose, each saying when it is raised."""

from __future__ import annotations

try:  # Django code catches channels.exceptions.ChannelFull; ours must be one.
    from channels.exceptions import ChannelFull as _ChannelsChannelFull
except ImportError:  # pragma: no cover - exercised only without Channels installed
    _ChannelsChannelFull = Exception  # type: ignore[assignment,misc,unused-ignore]

__all__ = [
    "ChannelFull",
    "ChannelLayerError",
    "DatabaseUnreachableError",
    "DecryptionError",
    "LayerClosedError",
    "SchemaMissingError",
]


class ChannelLayerError(Exception):
    """Base class of the layer's own errors (besides ChannelFull, TypeError and ValueError)."""


class ChannelFull(_ChannelsChannelFull):  # type: ignore[misc,valid-type,unused-ignore]
    """Raised by ``send`` when the channel already holds ``capacity`` unexpired messages."""


class SchemaMissingError(ChannelLayerError):
    """Raised when the layer's tables do not exist in the database it was pointed at."""


class DatabaseUnreachableError(ChannelLayerError):
    """Raised when no connection to PostgreSQL can be opened; the message names host and port."""


class DecryptionError(ChannelLayerError, ValueError):
    """Raised by ``receive`` when a stored message cannot be decrypted with any configured key."""


class LayerClosedError(ChannelLayerError, RuntimeError):
    """Raised by calls on a layer after ``close()``, and by receives that ``close()`` interrupted."""
