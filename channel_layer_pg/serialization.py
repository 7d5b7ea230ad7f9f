"""Turning messages into stored bytes and back: a serializer, then optional Fernet encryption
that seals each message for the channel or group it was sent to."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

import msgpack

from .errors import DecryptionError, MessageTooLarge, UndecodableMessageError
from .messages import is_well_formed, malformation


class Serializer(Protocol):
    """Anything with ``dumps(dict) -> bytes`` and ``loads(bytes) -> dict`` can serialize messages.

    The layer checks a message's keys and nesting (messages.py) before ``dumps``, never its
    values: ``dumps`` must raise TypeError or ValueError for a value ``loads`` cannot give back,
    or the receiver gets something else than was sent.
    """

    def dumps(self, message: dict[str, Any]) -> bytes: ...

    def loads(self, data: bytes) -> dict[str, Any]: ...


class MsgpackSerializer:
    name = "msgpack"

    def dumps(self, message: dict[str, Any]) -> bytes:
        return msgpack.packb(message, use_bin_type=True)  # type: ignore[no-any-return]

    def loads(self, data: bytes) -> dict[str, Any]:
        # strict_map_key=False: a message with non-str keys that some other sender stored still
        # loads, rather than failing the receive that already took it from the table.
        return msgpack.unpackb(data, raw=False, strict_map_key=False)  # type: ignore[no-any-return]


class JsonSerializer:
    name = "json"

    def dumps(self, message: dict[str, Any]) -> bytes:
        return json.dumps(message, separators=(",", ":"), allow_nan=False).encode()

    def loads(self, data: bytes) -> dict[str, Any]:
        return json.loads(data)  # type: ignore[no-any-return]


_SERIALIZERS: dict[str, type[MsgpackSerializer] | type[JsonSerializer]] = {
    "msgpack": MsgpackSerializer,
    "json": JsonSerializer,
}


def resolve_serializer(serializer: object) -> Serializer:
    if isinstance(serializer, str):
        try:
            return _SERIALIZERS[serializer]()
        except KeyError:
            raise ValueError(
                f"unknown serializer {serializer!r}: use 'msgpack', 'json' "
                "or an object with dumps() and loads()"
            ) from None
    if callable(getattr(serializer, "dumps", None)) and callable(getattr(serializer, "loads", None)):
        return serializer  # type: ignore[return-value]
    raise TypeError(
        f"serializer must be 'msgpack', 'json' or an object with dumps() and loads(), not {serializer!r}"
    )


# Every Fernet token starts with this: base64 of the version byte 0x80 and the top 28 bits of
# its 64-bit timestamp, zero until the year 4147. Consulted only once a payload failed to
# decode, to say why.
_FERNET_TOKEN_START = b"gAAAAA"
# Inside a token: this format byte, the binding's length (one byte), the binding, then the
# serialized message. A binding is b"c:<prefix>:<channel>" or b"g:<prefix>:<group>"; names
# hold no ":" and are under 100 characters, so it is unambiguous and fits the length byte.
_BOUND_FORMAT = 1


class Encryptor:
    """Fernet with key rotation: the first key encrypts, every key may decrypt."""

    def __init__(self, keys: Iterable[str | bytes]) -> None:
        try:
            from cryptography.fernet import Fernet, InvalidToken, MultiFernet
        except ImportError:  # pragma: no cover - depends on the installed extras
            raise ImportError(
                "symmetric_encryption_keys needs the 'cryptography' package: "
                "pip install 'channel-layer-pg[encryption]'"
            ) from None
        fernets = [Fernet(_fernet_key(key)) for key in keys]
        if not fernets:
            raise ValueError(
                "symmetric_encryption_keys must hold at least one key; leave it out (or None) "
                "to store messages unencrypted"
            )
        self._fernet = MultiFernet(fernets)
        self._invalid_token = InvalidToken

    def encrypt(self, data: bytes) -> bytes:
        return self._fernet.encrypt(data)

    def decrypt(self, data: bytes) -> bytes | None:
        """The plaintext, or None if no key decrypts ``data`` (or it is no token at all)."""
        try:
            return self._fernet.decrypt(data)
        except self._invalid_token:
            return None


def _fernet_key(key: str | bytes) -> bytes:
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, bytes) or not key:
        raise TypeError(f"each symmetric encryption key must be a non-empty str or bytes, not {key!r}")
    return base64.urlsafe_b64encode(hashlib.sha256(key).digest())


class Codec:
    """Message dict to stored bytes and back, with errors that name the offending value.

    With an encryptor, each message is sealed for where it is sent (its channel, or for a
    group_send its group) and under its prefix; decode() refuses one found elsewhere.

    ``max_message_size`` bounds the serialized message, before encryption (which makes it
    about a third larger): the same message is accepted or refused whether or not the layer
    encrypts. None lifts the bound.
    """

    def __init__(
        self,
        serializer: Serializer,
        encryptor: Encryptor | None,
        *,
        prefix: str,
        max_message_size: int | None = None,
    ) -> None:
        self._serializer = serializer
        self._serializer_name = getattr(serializer, "name", type(serializer).__name__)
        self._encryptor = encryptor
        self._prefix = prefix
        self._group_binding_start = f"g:{prefix}:".encode()
        self._fix = f"configure the same symmetric_encryption_keys on every process using prefix {prefix!r}"
        self.max_message_size = max_message_size

    def encode(self, message: object, *, channel: str | None = None, group: str | None = None) -> bytes:
        """``message`` as stored bytes; with encryption, for ``channel`` or ``group`` only."""
        if not isinstance(message, dict):
            raise TypeError(f"message must be a dict, not {type(message).__name__}")
        if not is_well_formed(message):
            raise malformation(message)
        try:
            data = self._serializer.dumps(message)
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(self._describe_unencodable(message, exc)) from exc
        if self.max_message_size is not None and len(data) > self.max_message_size:
            raise MessageTooLarge(
                f"message is {len(data)} bytes serialized, over max_message_size ({self.max_message_size} "
                "bytes): send a reference to large data (a URL, a database row) instead, or raise "
                "max_message_size"
            )
        if self._encryptor is not None:
            data = self._encryptor.encrypt(self._bound(data, channel, group))
        return data

    def decode(self, data: bytes, *, channel: str) -> dict[str, Any]:
        """The message in ``data``, received on ``channel``.

        DecryptionError if it cannot be trusted, UndecodableMessageError if the serializer
        cannot read it; either way the message is gone from the table.
        """
        if self._encryptor is None:
            if data.startswith(_FERNET_TOKEN_START):
                try:
                    return self._load(data, channel)
                except UndecodableMessageError:
                    raise DecryptionError(
                        f"a message on {channel!r} is encrypted but this layer has no "
                        f"symmetric_encryption_keys: {self._fix}; the message was dropped"
                    ) from None
            return self._load(data, channel)
        plain = self._encryptor.decrypt(data)
        if plain is None:
            if data.startswith(_FERNET_TOKEN_START):
                why = "was encrypted with a key that is not among this layer's symmetric_encryption_keys"
            else:
                why = "was stored unencrypted, by a process without symmetric_encryption_keys"
            raise DecryptionError(f"a message on {channel!r} {why}: {self._fix}; the message was dropped")
        length = plain[1] if len(plain) > 1 and plain[0] == _BOUND_FORMAT else -1
        binding = plain[2 : 2 + length]
        if length < 0 or len(binding) != length:
            raise DecryptionError(
                f"a message on {channel!r} decrypted but is not sealed for a channel or group: "
                f"the sender runs a different version of channel_layer_pg; the message was dropped"
            )
        if binding != f"c:{self._prefix}:{channel}".encode() and not binding.startswith(
            self._group_binding_start
        ):
            raise DecryptionError(
                f"a message found on {channel!r} under prefix {self._prefix!r} was sealed for "
                f"{_describe_binding(binding)}: its row was altered in the table; the message was dropped"
            )
        return self._load(plain[2 + length :], channel)

    def _load(self, data: bytes, channel: str) -> dict[str, Any]:
        # Whatever the serializer raises (msgpack's ExtraData, a UnicodeDecodeError, json's
        # errors, a custom serializer's own), the caller gets one layer error that says why.
        try:
            message = self._serializer.loads(data)
        except Exception as exc:
            raise UndecodableMessageError(
                f"a message on {channel!r} cannot be read with the {self._serializer_name} serializer "
                f"({type(exc).__name__}: {exc}): configure the same serializer on every process using "
                f"prefix {self._prefix!r}; the message was dropped"
            ) from exc
        if not isinstance(message, dict):
            raise UndecodableMessageError(
                f"a message on {channel!r} loaded as {type(message).__name__}, not a dict: configure the "
                f"same serializer on every process using prefix {self._prefix!r}; the message was dropped"
            )
        return message

    def _bound(self, data: bytes, channel: str | None, group: str | None) -> bytes:
        if (channel is None) == (group is None):
            raise TypeError("an encrypted message is sealed for one channel or one group: pass exactly one")
        binding = (f"c:{self._prefix}:{channel}" if group is None else f"g:{self._prefix}:{group}").encode()
        return bytes((_BOUND_FORMAT, len(binding))) + binding + data

    def _describe_unencodable(self, message: dict[str, Any], exc: Exception) -> str:
        name = self._serializer_name
        for path, value in _leaves(message, "message"):
            try:
                self._serializer.dumps({"v": value})
            except (TypeError, ValueError, OverflowError):
                shown = repr(value)
                shown = shown if len(shown) <= 60 else shown[:57] + "..."
                return f"{path} = {shown} ({type(value).__name__}) cannot be encoded with {name}: {exc}"
        return f"message cannot be encoded with {name}: {exc}"


def _describe_binding(binding: bytes) -> str:
    kind, _, rest = binding.decode(errors="replace").partition(":")
    prefix, _, name = rest.partition(":")
    return f"{'group' if kind == 'g' else 'channel'} {name!r} under prefix {prefix!r}"


def _leaves(value: object, path: str) -> Iterator[tuple[str, object]]:
    """Every non-container value with a readable path, depth first (keys are str by now)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _leaves(item, f"{path}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}[{index}]")
    else:
        yield path, value
