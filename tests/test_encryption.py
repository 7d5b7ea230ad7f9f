"""Symmetric encryption: nothing readable at rest, keys rotate, a wrong key is a clear error."""

from __future__ import annotations

import pytest

from channel_layer_pg import DecryptionError
from tests.helpers import LayerFactory, Sql, receive

pytest.importorskip("cryptography")


async def test_stored_payload_holds_no_plaintext(make_layer: LayerFactory, sql: Sql) -> None:
    layer = make_layer(symmetric_encryption_keys=["secret-key"])
    await layer.send("test.secret", {"type": "card", "number": "4111-1111-1111-1111"})
    (row,) = await sql("SELECT payload FROM channel_layer_pg_message WHERE prefix = $1", layer.prefix)
    assert b"4111" not in row["payload"] and b"card" not in row["payload"]
    assert await receive(layer, "test.secret") == {"type": "card", "number": "4111-1111-1111-1111"}


async def test_a_rotated_in_key_still_reads_messages_under_the_old_one(make_layer: LayerFactory) -> None:
    old_sender = make_layer(symmetric_encryption_keys=["old"])
    rotated = make_layer(symmetric_encryption_keys=["new", "old"])
    await old_sender.send("test.rotate", {"type": "from old"})
    assert await receive(rotated, "test.rotate") == {"type": "from old"}
    await rotated.send("test.rotate", {"type": "from new"})
    new_only = make_layer(symmetric_encryption_keys=["new"])
    assert await receive(new_only, "test.rotate") == {"type": "from new"}


async def test_a_wrong_key_raises_a_clear_error(make_layer: LayerFactory) -> None:
    sender = make_layer(symmetric_encryption_keys=["right"])
    receiver = make_layer(symmetric_encryption_keys=["wrong"])
    await sender.send("test.wrong-key", {"type": "x"})
    with pytest.raises(DecryptionError, match="could not be decrypted"):
        await receive(receiver, "test.wrong-key")


@pytest.mark.parametrize("keys", ["a-single-string", b"bytes"])
async def test_keys_must_be_a_list(make_layer: LayerFactory, keys: object) -> None:
    with pytest.raises(TypeError, match="must be a list"):
        make_layer(symmetric_encryption_keys=keys)
