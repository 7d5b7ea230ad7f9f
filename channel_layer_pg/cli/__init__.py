"""The ``channel-layer-pg`` command: migrate, stats, and the demo."""

from .main import main

__all__ = ["main"]
