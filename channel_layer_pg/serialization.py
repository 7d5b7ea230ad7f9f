"""Turning messages into stored bytes and back: a serializer, then optional Fernet encryption."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

import msgpack

from .errors import DecryptionError


class Serializer(Protocol):
    """Anything with ``dumps(dict) -> bytes`` and ``loads(bytes) -> dict`` can serialize messages."""

    def dumps(self, message: dict[str, Any]) -> bytes: ...

    def loads(self, data: bytes) -> dict[str, Any]: ...


class MsgpackSerializer:
    name = "msgpack"

    def dumps(self, message: dict[str, Any]) -> bytes:
        return msgpack.packb(message, use_bin_type=True)  # type: ignore[no-any-return]

    def loads(self, data: bytes) -> dict[str, Any]:
        # strict_map_key=False: whatever dumps accepted (int keys included) must load again.
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
            raise ValueError("symmetric_encryption_keys must hold at least one key")
        self._fernet = MultiFernet(fernets)
        self._invalid_token = InvalidToken

    def encrypt(self, data: bytes) -> bytes:
        return self._fernet.encrypt(data)

    def decrypt(self, data: bytes) -> bytes:
        try:
            return self._fernet.decrypt(data)
        except self._invalid_token:
            raise DecryptionError(
                "a stored message could not be decrypted with any of symmetric_encryption_keys: "
                "the sender used a key this layer does not have (or sent it unencrypted); "
                "the message was dropped"
            ) from None


def _fernet_key(key: str | bytes) -> bytes:
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, bytes) or not key:
        raise TypeError(f"each symmetric encryption key must be a non-empty str or bytes, not {key!r}")
    return base64.urlsafe_b64encode(hashlib.sha256(key).digest())


class Codec:
    """Message dict to stored bytes and back, with errors that name the offending value."""

    def __init__(self, serializer: Serializer, encryptor: Encryptor | None = None) -> None:
        self._serializer = serializer
        self._encryptor = encryptor

    def encode(self, message: object) -> bytes:
        if not isinstance(message, dict):
            raise TypeError(f"message must be a dict, not {type(message).__name__}")
        try:
            data = self._serializer.dumps(message)
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(self._describe_unencodable(message, exc)) from exc
        if self._encryptor is not None:
            data = self._encryptor.encrypt(data)
        return data

    def decode(self, data: bytes) -> dict[str, Any]:
        if self._encryptor is not None:
            data = self._encryptor.decrypt(data)
        return self._serializer.loads(data)

    def _describe_unencodable(self, message: dict[str, Any], exc: Exception) -> str:
        name = getattr(self._serializer, "name", type(self._serializer).__name__)
        for path, value in _leaves(message, "message"):
            try:
                self._serializer.dumps({"v": value})
            except (TypeError, ValueError, OverflowError):
                shown = repr(value)
                shown = shown if len(shown) <= 60 else shown[:57] + "..."
                return f"{path} = {shown} ({type(value).__name__}) cannot be encoded with {name}: {exc}"
        return f"message cannot be encoded with {name}: {exc}"


def _leaves(value: object, path: str) -> Iterator[tuple[str, object]]:
    """Every non-container value with a readable path, keys included, depth first."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                yield f"{path} key {key!r}", key
            yield from _leaves(item, f"{path}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}[{index}]")
    else:
        yield path, value
