"""Every exception the layer raises on purpose, each saying when it is raised."""

from __future__ import annotations

try:  # Django code catches channels.exceptions.ChannelFull; ours must be one.
    from channels.exceptions import ChannelFull as _ChannelsChannelFull
except ImportError:  # pragma: no cover - exercised only without Channels installed
    _ChannelsChannelFull = Exception  # type: ignore[assignment,misc,unused-ignore]

__all__ = [
    "ChannelFull",
    "ChannelLayerError",
    "DatabaseError",
    "DatabaseFullError",
    "DatabaseReadOnlyError",
    "DatabaseUnreachableError",
    "DecryptionError",
    "LayerClosedError",
    "MessageTooLarge",
    "PermissionDeniedError",
    "SchemaMissingError",
    "SchemaOutdatedError",
    "StatementRejectedError",
    "StatementTimeoutError",
    "TransactionConflictError",
    "UndecodableMessageError",
]


class ChannelLayerError(Exception):
    """Base class of the layer's own errors (besides ChannelFull, TypeError and ValueError)."""


class ChannelFull(_ChannelsChannelFull):  # type: ignore[misc,valid-type,unused-ignore]
    """Raised by ``send`` when the channel already holds ``capacity`` unexpired messages."""


class SchemaMissingError(ChannelLayerError):
    """Raised when the layer's tables do not exist in the database it was pointed at."""


class DatabaseUnreachableError(ChannelLayerError):
    """Raised when no connection to PostgreSQL can be opened; the message names host and port."""


class SchemaOutdatedError(SchemaMissingError):
    """Raised by ``ping`` when the tables are not at the migration head this package needs."""


class StatementRejectedError(ChannelLayerError):
    """Base of the errors below: the server rolled one statement back for a state that may pass.

    Nothing the statement would have stored or removed changed, so trying it again later is
    safe; a waiting ``receive`` does that itself, ``send`` and the others raise.
    """


class StatementTimeoutError(StatementRejectedError):
    """Raised when the server cancelled a statement: statement_timeout, lock_timeout, or a cancel."""


class DatabaseReadOnlyError(StatementRejectedError):
    """Raised when the server accepts no writes: a hot standby, or default_transaction_read_only."""


class DatabaseFullError(StatementRejectedError):
    """Raised when the server is out of disk space or memory for a statement."""


class TransactionConflictError(StatementRejectedError):
    """Raised when the server aborted a statement to resolve a deadlock or serialization failure."""


class DatabaseError(ChannelLayerError):
    """Raised when PostgreSQL refuses a layer statement for a reason none of the others name.

    The server's error is the ``__cause__``, and the message quotes it with its SQLSTATE.
    """


class PermissionDeniedError(DatabaseError):
    """Raised when the layer's role lacks a privilege a statement needs; the message names the grants."""


class DecryptionError(ChannelLayerError, ValueError):
    """Raised by ``receive`` when a stored message cannot be decrypted with any configured key."""


class UndecodableMessageError(ChannelLayerError, ValueError):
    """Raised by ``receive`` when the serializer cannot read a stored message (another serializer
    wrote it, or the row was altered); that message is dropped, the next receive gets the next."""


class MessageTooLarge(ChannelLayerError, ValueError):
    """Raised by ``send`` and ``group_send`` when the serialized message exceeds ``max_message_size``."""


class LayerClosedError(ChannelLayerError, RuntimeError):
    """Raised by calls on a layer after ``close()``, and by receives that ``close()`` interrupted."""
