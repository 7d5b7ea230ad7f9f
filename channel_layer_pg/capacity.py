"""Per-channel capacities: the ``channel_capacity`` patterns, matched in Python and in SQL.

A send matches its channel in Python (``LayerConfig.capacity_for``). A group_send learns
its members only inside the statement that stores the message, so PostgreSQL matches them
there, with each pattern translated to a PostgreSQL regular expression that matches the same
names. Globs translate exactly (tests/test_statements.py compares the two engines on random
globs and names); a glob with a reversed range (``[z-a]``, which fnmatch drops) is refused.
A compiled regex is used as written, anchored at the start as ``re.match`` anchors it; the
constructs whose meaning differs between the two engines are refused here, with the option
named, rather than matched differently later.
"""

from __future__ import annotations

import fnmatch
import re
import warnings
from collections.abc import Callable, Mapping
from typing import NamedTuple


class ChannelCapacity(NamedTuple):
    pattern: re.Pattern[str]
    capacity: int
    sql_pattern: str  # the same set of channel names, as a PostgreSQL regular expression


# Python-only syntax, or syntax PostgreSQL reads differently: named groups, \b and \B (a
# backspace and an error there), scoped flags and flags past the start, atomic groups,
# possessive quantifiers, "{,n}" (a literal in PostgreSQL), POSIX classes and collating
# elements inside a set ("[[:alpha:]]" is a set of characters to Python).
_NOT_PORTABLE = re.compile(
    r"\(\?P|\\[bB]|\(\?[aiLmsux-]+:|(?<!^)\(\?[aiLmsux-]+\)|\(\?>|[*+?}]\+|\{,|\[[:.=]"
)
_LEADING_FLAGS = re.compile(r"^\(\?[aiLmsux]+\)")
# Flags PostgreSQL can apply as embedded options at the start of the expression.
_EMBEDDED_OPTIONS = ((re.IGNORECASE, "i"), (re.VERBOSE, "x"))


def parse_channel_capacity(
    value: object, *, positive_int: Callable[[str, object], int]
) -> tuple[ChannelCapacity, ...]:
    """Check ``channel_capacity`` (pattern -> int) and compile each pattern for both engines.

    ``positive_int(name, value)`` checks each capacity, naming the option in its error.
    """
    if not isinstance(value, Mapping):
        raise TypeError(f"channel_capacity must be a dict of pattern to int, not {type(value).__name__}")
    rules = []
    for pattern, capacity in value.items():
        if isinstance(pattern, str):
            with warnings.catch_warnings():
                # "Possible nested set": fnmatch leaves a "[" inside a set as it is, and the
                # re module warns that a later Python may read "[[" differently.
                warnings.simplefilter("ignore", FutureWarning)
                compiled = re.compile(fnmatch.translate(pattern))
            sql_pattern = _glob_to_sql(pattern)
        elif isinstance(pattern, re.Pattern):
            compiled, sql_pattern = pattern, _regex_to_sql(pattern)
        else:
            raise TypeError(
                f"channel_capacity keys must be glob strings or compiled regexes, not {pattern!r}"
            )
        limit = positive_int(f"channel_capacity[{pattern!r}]", capacity)
        rules.append(ChannelCapacity(compiled, limit, sql_pattern))
    return tuple(rules)


def _regex_to_sql(pattern: re.Pattern[str]) -> str:
    if not isinstance(pattern.pattern, str):
        raise TypeError(f"channel_capacity regexes must be str patterns, not {pattern.pattern!r}")
    if _NOT_PORTABLE.search(pattern.pattern):
        raise ValueError(
            f"channel_capacity pattern {pattern.pattern!r} uses syntax PostgreSQL reads differently "
            "(named groups, \\b, \\B, inline flags past the start): group_send matches patterns in "
            "PostgreSQL, so write it without them, or as a glob"
        )
    options = "".join(letter for flag, letter in _EMBEDDED_OPTIONS if pattern.flags & flag)
    # Leading inline flags are in pattern.flags already; PostgreSQL takes them only up front.
    body = _LEADING_FLAGS.sub("", pattern.pattern)
    return (f"(?{options})" if options else "") + f"^(?:{body})"


def _glob_to_sql(glob: str) -> str:
    """A PostgreSQL regular expression that matches exactly the names fnmatch matches."""
    parts, i = ["^"], 0
    while i < len(glob):
        char = glob[i]
        i += 1
        if char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        elif char == "[":
            # As fnmatch reads a set: "!" first negates, "]" first (or after "!") is literal.
            j = i + 1 if glob[i : i + 1] == "!" else i
            j += 1 if glob[j : j + 1] == "]" else 0
            end = glob.find("]", j)
            if end < 0:
                parts.append("\\[")
                continue
            body, i = glob[i:end], end + 1
            negate = body.startswith("!")
            parts.append("[" + ("^" if negate else "") + _set_body(glob, body[1:] if negate else body) + "]")
        else:
            parts.append(re.escape(char))
    return "".join(parts) + "$"


def _set_body(glob: str, body: str) -> str:
    """A glob set's members, escaped for a PostgreSQL bracket expression."""
    for low, high in re.findall(r"(.)-(.)", body):
        if low > high:
            raise ValueError(
                f"channel_capacity glob {glob!r} has a reversed range {low}-{high}, which matches nothing"
            )
    # A backslash escapes in a PostgreSQL bracket expression; "[" may open "[:", "[." or "[="
    # there; "^" first negates. In a glob each is the character itself.
    escaped = "".join("\\" + char if char in "\\[" else char for char in body)
    return "\\" + escaped if escaped.startswith("^") else escaped
