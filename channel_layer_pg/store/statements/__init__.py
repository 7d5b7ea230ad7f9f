"""The layer's SQL, built once as SQLAlchemy Core statements with bound parameters only.

Every statement is a single statement: PostgreSQL runs it atomically, so a cancelled caller
leaves either all of it or none of it behind. The layer autocommits each one; a transactional
send (``connection=``) runs SEND and GROUP_SEND inside the application's own transaction
instead, which is why "now" (store.sql) is the statement's time, not the transaction's.

Capacity is per channel. A normal channel is a queue of its own. A process-local channel is
stored under its process's queue (its non-local part), which that process claims from with
one statement, but only the rows for that channel count against its capacity: one local
channel that stops receiving fills its own capacity, never its neighbours'.
"""

from .admin import (
    CLEANUP_BATCH,
    DATABASE_IDENTITY,
    DELETE_EXPIRED_MESSAGES,
    DELETE_LAPSED_MEMBERS,
    FLUSH_GROUPS,
    FLUSH_MESSAGES,
    GROUP_ADD,
    GROUP_ADD_FOREVER,
    GROUP_DISCARD,
    NOTIFY,
    PING,
)
from .claim import CLAIM, CLAIM_CHANNEL
from .liveness import DELETE_DEAD_MEMBERS, DELETE_DEAD_MESSAGES, LIVE_PROCESSES, LOCKLESS_OWNERS
from .sends import GROUP_SEND, RESTORE, SEND, SEND_MANY, group_send_parameters, send_parameters

__all__ = [
    "CLAIM",
    "CLAIM_CHANNEL",
    "CLEANUP_BATCH",
    "DATABASE_IDENTITY",
    "DELETE_DEAD_MEMBERS",
    "DELETE_DEAD_MESSAGES",
    "DELETE_EXPIRED_MESSAGES",
    "DELETE_LAPSED_MEMBERS",
    "FLUSH_GROUPS",
    "FLUSH_MESSAGES",
    "GROUP_ADD",
    "GROUP_ADD_FOREVER",
    "GROUP_DISCARD",
    "GROUP_SEND",
    "LIVE_PROCESSES",
    "LOCKLESS_OWNERS",
    "NOTIFY",
    "PING",
    "RESTORE",
    "SEND",
    "SEND_MANY",
    "group_send_parameters",
    "send_parameters",
]
