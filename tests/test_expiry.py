"""Expiry: old messages are never delivered; memberships lapse; cleanup removes both."""

from __future__ import annotations

from channel_layer_pg import PostgresChannelLayer
from tests.helpers import LayerFactory, Sql, nothing_arrives, receive


async def age_messages(sql: Sql, prefix: str) -> None:
    # Moving expires_at into the past is exactly what time would do, without waiting for it.
    await sql(
        "UPDATE channel_layer_pg_message SET expires_at = now() - interval '1 second' WHERE prefix = $1",
        prefix,
    )


async def test_an_expired_message_is_never_delivered_even_before_cleanup(
    layer: PostgresChannelLayer,
    sql: Sql,
) -> None:
    await layer.send("test.expire", {"type": "stale"})
    await age_messages(sql, layer.prefix)
    assert await nothing_arrives(layer, "test.expire")
    await layer.send("test.expire", {"type": "fresh"})
    assert await receive(layer, "test.expire") == {"type": "fresh"}


async def test_messages_are_stored_to_expire_after_expiry_seconds(make_layer: LayerFactory, sql: Sql) -> None:
    layer = make_layer(expiry=90)
    await layer.send("test.ttl", {"type": "x"})
    (row,) = await sql(
        "SELECT extract(epoch FROM expires_at - now()) AS ttl FROM channel_layer_pg_message "
        "WHERE prefix = $1",
        layer.prefix,
    )
    assert 85 < row["ttl"] <= 90


async def test_a_lapsed_group_membership_gets_no_messages(
    layer: PostgresChannelLayer,
    sql: Sql,
) -> None:
    await layer.group_add("room", "test.member")
    await sql(
        "UPDATE channel_layer_pg_group_member SET expires_at = now() - interval '1 second' WHERE prefix = $1",
        layer.prefix,
    )
    await layer.group_send("room", {"type": "too late"})
    assert await nothing_arrives(layer, "test.member")


async def test_group_add_again_renews_the_membership(make_layer: LayerFactory, sql: Sql) -> None:
    layer = make_layer(group_expiry=100)
    await layer.group_add("room", "test.member")
    await sql(
        "UPDATE channel_layer_pg_group_member SET expires_at = now() + interval '1 second' WHERE prefix = $1",
        layer.prefix,
    )
    await layer.group_add("room", "test.member")
    (row,) = await sql(
        "SELECT extract(epoch FROM expires_at - now()) AS ttl FROM channel_layer_pg_group_member "
        "WHERE prefix = $1",
        layer.prefix,
    )
    assert 95 < row["ttl"] <= 100


async def test_group_expiry_zero_means_memberships_never_lapse(make_layer: LayerFactory, sql: Sql) -> None:
    layer = make_layer(group_expiry=0)
    await layer.group_add("room", "test.member")
    (row,) = await sql(
        "SELECT expires_at = 'infinity' AS forever FROM channel_layer_pg_group_member WHERE prefix = $1",
        layer.prefix,
    )
    assert row["forever"]


async def test_cleanup_removes_expired_messages_and_lapsed_members(
    layer: PostgresChannelLayer,
    sql: Sql,
) -> None:
    for n in range(3):
        await layer.send("test.cleanup", {"type": "n", "n": n})
    await layer.group_add("room", "test.member")
    await age_messages(sql, layer.prefix)
    await sql(
        "UPDATE channel_layer_pg_group_member SET expires_at = now() - interval '1 second' WHERE prefix = $1",
        layer.prefix,
    )
    assert await layer.delete_expired() >= 4
    rows = await sql(
        "SELECT (SELECT count(*) FROM channel_layer_pg_message WHERE prefix = $1) AS messages, "
        "(SELECT count(*) FROM channel_layer_pg_group_member WHERE prefix = $1) AS members",
        layer.prefix,
    )
    assert (rows[0]["messages"], rows[0]["members"]) == (0, 0)
