"""What a message must be before it is encoded, whatever the serializer.

The spec's messages are dicts with str keys; their values are nested dicts and lists of
plain values. Every serializer is held to that shape: str keys at every level (msgpack would
pack an int or tuple key, and json would turn an int key into a str, so neither would give
back what was sent) and at most MAX_DEPTH levels of nesting (a deeper message, or one that
contains itself, would otherwise end in a RecursionError somewhere between send and
receive). Which values a serializer can encode is its own business: serialization.Codec
names the one it refused.

The check runs on every send, so it comes in two parts: ``is_well_formed`` only says yes or
no and builds no paths, and only a message it refuses is walked again by ``malformation``
to say where the problem is (``message['a'][0] key (1, 2): keys must be str, not tuple``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# Levels of dicts and lists inside a message: far beyond what any application nests, and far
# below Python's recursion limit, which the serializers and this check run under.
MAX_DEPTH = 100

_SCALARS = frozenset({str, int, float, bool, bytes, type(None)})
_CONTAINERS = (dict, list, tuple)
# Past this length a list's element types are first checked all at once, in C: a long list
# of plain values (samples, ids) then costs about what packing it does.
_LONG = 8


def is_well_formed(message: dict[str, Any]) -> bool:
    """Whether every key in ``message`` is a str and it nests at most MAX_DEPTH levels."""
    return _well_formed(message, 0)


def _well_formed(value: dict[Any, Any] | list[Any] | tuple[Any, ...], depth: int) -> bool:
    if depth > MAX_DEPTH:
        return False
    items: Iterable[Any]
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                return False
        items = value.values()
    elif len(value) > _LONG and _SCALARS.issuperset(map(type, value)):
        return True
    else:
        items = value
    for item in items:
        # type() first: most values are plain, and the set lookup is the cheapest test of that.
        if type(item) in _SCALARS or not isinstance(item, _CONTAINERS):
            continue
        if not _well_formed(item, depth + 1):
            return False
    return True


def malformation(message: dict[str, Any]) -> TypeError | ValueError:
    """The error for a message ``is_well_formed`` refused, saying where the problem is.

    The walk visits what ``_well_formed`` visits in the same order, so it finds the same
    problem: a key that is not a str (TypeError), or nesting too deep (ValueError).
    """
    found = _first_problem(message, [], 0)
    if found is None:  # pragma: no cover - only for a message is_well_formed accepted
        return ValueError("message is malformed")
    return found


def _first_problem(value: Any, path: list[str], depth: int) -> TypeError | ValueError | None:
    if depth > MAX_DEPTH:
        return ValueError(
            f"{_render(path)} is nested more than {MAX_DEPTH} levels deep (a dict or list that "
            f"contains itself?): a message may nest dicts and lists at most {MAX_DEPTH} levels"
        )
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return TypeError(
                    f"{_render(path)} key {_shown(key)}: keys must be str, not {type(key).__name__}"
                )
            if isinstance(item, _CONTAINERS):
                found = _first_problem(item, [*path, f"[{key!r}]"], depth + 1)
                if found is not None:
                    return found
    else:
        for index, item in enumerate(value):
            if isinstance(item, _CONTAINERS):
                found = _first_problem(item, [*path, f"[{index}]"], depth + 1)
                if found is not None:
                    return found
    return None


def _render(path: list[str]) -> str:
    # A path a hundred levels deep says no more than its two ends do.
    if len(path) > 8:
        path = [*path[:4], "...", *path[-3:]]
    return "message" + "".join(path)


def _shown(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
