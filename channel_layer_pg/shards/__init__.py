"""Sharding: one channel layer over several PostgreSQL servers (see docs/sharding.md)."""

from __future__ import annotations

from .layer import ShardedChannelLayer
from .ring import HashRing, routing_key

__all__ = ["HashRing", "ShardedChannelLayer", "routing_key"]
