"""Symmetric encryption: nothing readable at rest, keys rotate, and it never fails open.

A message is sealed for its channel (or group) and prefix, so a row moved in the table is
refused; a layer with keys and one without refuse each other's messages with an error that
says what to configure, and the messages behind the refused one still arrive.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import pytest

from channel_layer_pg import DecryptionError
from tests.helpers import LayerFactory, Sql, receive

pytest.importorskip("cryptography")

MOVE_ROW = "UPDATE channel_layer_pg_message SET channel = $2, queue = $3 WHERE prefix = $1"


async def test_stored_payload_holds_no_plaintext(make_layer: LayerFactory, sql: Sql) -> None:
    layer = make_layer(symmetric_encryption_keys=["secret-key"])
    await layer.send("test.secret", {"type": "card", "number": "4111-1111-1111-1111"})
    (row,) = await sql("SELECT payload FROM channel_layer_pg_message WHERE prefix = $1", layer.prefix)
    assert b"4111" not in row["payload"] and b"card" not in row["payload"]
    assert await receive(layer, "test.secret") == {"type": "card", "number": "4111-1111-1111-1111"}


async def test_no_keys_stores_messages_readable(make_layer: LayerFactory, sql: Sql) -> None:
    layer = make_layer(symmetric_encryption_keys=None)
    await layer.send("test.plain", {"type": "visible"})
    (row,) = await sql("SELECT payload FROM channel_layer_pg_message WHERE prefix = $1", layer.prefix)
    assert b"visible" in row["payload"]


@pytest.mark.parametrize("keys", [[], (), iter([])], ids=["list", "tuple", "iterator"])
def test_an_empty_key_list_is_an_error_naming_the_option(
    make_layer: LayerFactory, keys: Iterable[str]
) -> None:
    with pytest.raises(ValueError, match="symmetric_encryption_keys must hold at least one key"):
        make_layer(symmetric_encryption_keys=keys)


async def test_rotation_old_key_decrypts_and_the_new_one_encrypts(make_layer: LayerFactory) -> None:
    old_sender = make_layer(symmetric_encryption_keys=["old"])
    rotated = make_layer(symmetric_encryption_keys=["new", "old"])
    old_only = make_layer(symmetric_encryption_keys=["old"])
    await old_sender.send("test.rotate", {"type": "under old"})
    assert await receive(rotated, "test.rotate") == {"type": "under old"}
    await rotated.send("test.rotate", {"type": "under new"})
    await rotated.send("test.rotate", {"type": "under new too"})
    # A process not yet given the new key cannot read what the rotated ones encrypt.
    with pytest.raises(DecryptionError, match="encrypted with a key that is not among"):
        await receive(old_only, "test.rotate")
    assert await receive(rotated, "test.rotate") == {"type": "under new too"}


async def test_a_wrong_key_raises_a_clear_error(make_layer: LayerFactory) -> None:
    sender = make_layer(symmetric_encryption_keys=["right"])
    receiver = make_layer(symmetric_encryption_keys=["wrong"])
    await sender.send("test.wrong-key", {"type": "x"})
    with pytest.raises(
        DecryptionError, match="configure the same symmetric_encryption_keys on every process"
    ):
        await receive(receiver, "test.wrong-key")


@pytest.mark.parametrize("serializer", ["msgpack", "json"])
async def test_a_keyless_receiver_refuses_an_encrypted_message_and_gets_the_next(
    make_layer: LayerFactory, serializer: str
) -> None:
    keyed = make_layer(symmetric_encryption_keys=["secret-key"], serializer=serializer)
    keyless = make_layer(serializer=serializer)
    await keyed.send("test.mixed", {"type": "sealed"})
    await keyless.send("test.mixed", {"type": "plain"})
    with pytest.raises(DecryptionError, match="encrypted but this layer has no symmetric_encryption_keys"):
        await receive(keyless, "test.mixed")
    assert await receive(keyless, "test.mixed") == {"type": "plain"}


async def test_a_keyed_receiver_refuses_a_plaintext_message_and_gets_the_next(
    make_layer: LayerFactory,
) -> None:
    keyless = make_layer()
    keyed = make_layer(symmetric_encryption_keys=["secret-key"])
    await keyless.send("test.mixed", {"type": "plain"})
    await keyed.send("test.mixed", {"type": "sealed"})
    with pytest.raises(
        DecryptionError, match="stored unencrypted, by a process without symmetric_encryption"
    ):
        await receive(keyed, "test.mixed")
    assert await receive(keyed, "test.mixed") == {"type": "sealed"}


async def test_a_message_moved_to_another_channel_is_refused(make_layer: LayerFactory, sql: Sql) -> None:
    layer = make_layer(symmetric_encryption_keys=["secret-key"])
    await layer.send("test.alice", {"type": "for alice"})
    await sql(MOVE_ROW, layer.prefix, "test.mallory", "test.mallory")
    await layer.send("test.mallory", {"type": "for mallory"})
    with pytest.raises(DecryptionError, match=re.escape("was sealed for channel 'test.alice'")):
        await receive(layer, "test.mallory")
    assert await receive(layer, "test.mallory") == {"type": "for mallory"}


async def test_a_message_moved_to_another_process_local_channel_is_refused(
    make_layer: LayerFactory, sql: Sql
) -> None:
    sender = make_layer(symmetric_encryption_keys=["secret-key"])
    receiver = make_layer(symmetric_encryption_keys=["secret-key"])
    alice, mallory = await receiver.new_channel(), await receiver.new_channel()
    await sender.send(alice, {"type": "for alice"})
    await sql(MOVE_ROW, sender.prefix, mallory, mallory.split("!")[0] + "!")
    with pytest.raises(DecryptionError, match=re.escape(f"was sealed for channel '{alice}'")):
        await receive(receiver, mallory)


async def test_a_group_message_moved_to_another_prefix_is_refused(
    make_layer: LayerFactory, prefix: str, sql: Sql
) -> None:
    sender = make_layer(symmetric_encryption_keys=["secret-key"])
    other = make_layer(symmetric_encryption_keys=["secret-key"], prefix=f"{prefix}.other")
    await sender.group_add("room", "test.member")
    await sender.group_send("room", {"type": "for the room"})
    await sql(
        "UPDATE channel_layer_pg_message SET prefix = $2 WHERE prefix = $1", sender.prefix, other.prefix
    )
    with pytest.raises(DecryptionError, match=re.escape(f"sealed for group 'room' under prefix '{prefix}'")):
        await receive(other, "test.member")


async def test_a_group_message_reaches_every_member_under_encryption(make_layer: LayerFactory) -> None:
    sender = make_layer(symmetric_encryption_keys=["secret-key"])
    receiver = make_layer(symmetric_encryption_keys=["secret-key"])
    local = await receiver.new_channel()
    for member in ("test.member", local):
        await sender.group_add("room", member)
    await sender.group_send("room", {"type": "hello"})
    assert await receive(receiver, "test.member") == {"type": "hello"}
    assert await receive(receiver, local) == {"type": "hello"}


@pytest.mark.parametrize("keys", ["a-single-string", b"bytes"])
async def test_keys_must_be_a_list(make_layer: LayerFactory, keys: object) -> None:
    with pytest.raises(TypeError, match="must be a list"):
        make_layer(symmetric_encryption_keys=keys)
