"""Channel and group names: validation, the process-local split, and NOTIFY topics."""

from __future__ import annotations

import functools
import hashlib
import re
import secrets

MAX_NAME_LENGTH = 100  # the spec: names are shorter than 100 characters

# Channels' BaseChannelLayer patterns, ending in \Z where Channels writes "$": "$" also matches
# before a trailing newline, which would let "chat\n" through. Anchored at both ends, so
# Channels' habit of calling .match() on them checks the whole name, as fullmatch does here.
CHANNEL_NAME_REGEX = re.compile(r"^[a-zA-Z\d\-_.]+(![\d\w\-_.]*)?\Z")
GROUP_NAME_REGEX = re.compile(r"^[a-zA-Z\d\-_.]+\Z")

# LISTEN/NOTIFY channel names are identifiers of at most 63 bytes; a hash keeps every valid
# channel name (and every prefix) inside that limit and free of anything that needs quoting.
TOPIC_PREFIX = "clpg_"
TOPIC_DIGEST_LENGTH = 32  # hex digits of the SHA-256 kept in a topic

# The pool's sessions are "channel_layer_pg" (store.db.create_engine); a listener adds its prefix.
LISTENER_APPLICATION_NAME = "channel_layer_pg listener"


def validate_channel_name(name: object) -> str:
    """Return ``name`` if it is a valid channel name, else raise ``TypeError`` saying why."""
    if not isinstance(name, str):
        raise TypeError(f"channel name must be a str, not {type(name).__name__}: {name!r}")
    if len(name) >= MAX_NAME_LENGTH:
        raise TypeError(f"channel name must be shorter than {MAX_NAME_LENGTH} characters: {name!r}")
    if not CHANNEL_NAME_REGEX.match(name):
        raise TypeError(
            f"invalid channel name {name!r}: use ASCII letters, digits, '-', '_' and '.', "
            "optionally followed by '!' and a local part"
        )
    return name


def validate_group_name(name: object) -> str:
    """Return ``name`` if it is a valid group name, else raise ``TypeError`` saying why."""
    if not isinstance(name, str):
        raise TypeError(f"group name must be a str, not {type(name).__name__}: {name!r}")
    if len(name) >= MAX_NAME_LENGTH:
        raise TypeError(f"group name must be shorter than {MAX_NAME_LENGTH} characters: {name!r}")
    if not GROUP_NAME_REGEX.match(name):
        raise TypeError(f"invalid group name {name!r}: use ASCII letters, digits, '-', '_' and '.'")
    return name


def non_local_name(channel: str) -> str:
    """The part of a channel that names its queue: up to and including ``!`` if there is one."""
    bang = channel.find("!")
    return channel if bang < 0 else channel[: bang + 1]


def is_process_local(channel: str) -> bool:
    return "!" in channel


# A layer instance's process id, the part of its process-local names before "!": "p" and 48
# random bits. Only ids of this shape are judged by the dead-process cleanup (store/liveness.py);
# any other name with "!" (written by hand, or by a layer that holds no liveness lock) is
# left to expire.
PROCESS_ID_HEX_DIGITS = 12
PROCESS_ID_PATTERN = rf"p[0-9a-f]{{{PROCESS_ID_HEX_DIGITS}}}"
PROCESS_ID_LENGTH = 1 + PROCESS_ID_HEX_DIGITS
# The bits of a liveness lock key that are the process id's (the rest is the namespace).
PROCESS_ID_BITS = 4 * PROCESS_ID_HEX_DIGITS
# The top 16 bits of every liveness lock key ("cl"): the 48 bits below are the process id's.
LIVENESS_LOCK_NAMESPACE = 0x636C


def new_process_id() -> str:
    return f"p{secrets.token_hex(PROCESS_ID_HEX_DIGITS // 2)}"


def liveness_lock_key(process_id: str) -> int:
    """The session-level advisory lock key (bigint form) a process holds while it is alive.

    The namespace in the top 16 bits keeps it apart from an application's own advisory locks
    unless it uses keys in that same 1/65536 of the key space (two-int locks never meet it);
    the 48 bits below are the process id's random bits, so no two live processes share a key.
    """
    if not re.fullmatch(PROCESS_ID_PATTERN, process_id):
        raise ValueError(f"not a process id: {process_id!r}")
    return (LIVENESS_LOCK_NAMESPACE << PROCESS_ID_BITS) | int(process_id[1:], 16)


def listener_application_name(prefix: str) -> str:
    """What a layer's LISTEN session calls itself in pg_stat_activity, so stats can find it.

    PostgreSQL keeps the first 63 bytes of an application_name; cutting it here keeps the
    name a listener sets and the name stats looks for the same for every prefix.
    """
    return f"{LISTENER_APPLICATION_NAME} {prefix}"[:63]


# Every send hashes its queue's name: a process sends to far fewer queues than this, mostly.
@functools.lru_cache(maxsize=4096)
def topic_for(prefix: str, queue: str) -> str:
    """The NOTIFY topic that wakes readers of ``queue`` under ``prefix``.

    The first hex digits of a SHA-256, which PostgreSQL computes the same way (store.sql.topic_of,
    for statements that learn their queues in SQL): always a valid identifier, 37 bytes.
    """
    digest = hashlib.sha256(f"{prefix}:{queue}".encode()).hexdigest()[:TOPIC_DIGEST_LENGTH]
    return TOPIC_PREFIX + digest
