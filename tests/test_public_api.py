"""The public surface is deliberate: changing it should take a change here too."""

from __future__ import annotations

import channel_layer_pg
from channel_layer_pg import PostgresChannelLayer


def test_public_names_are_pinned() -> None:
    assert sorted(channel_layer_pg.__all__) == [
        "ChannelFull",
        "ChannelLayerError",
        "DatabaseUnreachableError",
        "DecryptionError",
        "LayerClosedError",
        "LayerStats",
        "PostgresChannelLayer",
        "SchemaMissingError",
        "migrate",
    ]


def test_the_layer_declares_the_spec_extensions() -> None:
    assert PostgresChannelLayer.extensions == ["groups", "flush"]
