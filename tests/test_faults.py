"""The fault-injection seam itself: where its hooks are called, and what a raising one does."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from channel_layer_pg import DatabaseUnreachableError
from channel_layer_pg.faults import FaultHooks
from tests.helpers import TIMEOUT, LayerFactory, SignalWhenWaiting, Sql, receive


class Recorded(SignalWhenWaiting):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    async def before_statement(self, name: str, parameters: Mapping[str, Any]) -> None:
        self.calls.append(("before", name))

    async def after_statement(self, name: str, parameters: Mapping[str, Any], result: Any) -> None:
        self.calls.append(("after", name))
        await super().after_statement(name, parameters, result)

    def handed_over(self, channel: str) -> None:
        self.calls.append(("handed over", channel))


async def test_hooks_see_each_statement_by_name_and_each_hand_over(make_layer: LayerFactory) -> None:
    faults = Recorded()
    layer = make_layer(fault_hooks=faults)
    await layer.send("test.named", {"type": "x"})
    assert faults.calls == [("before", "statements.SEND"), ("after", "statements.SEND")]
    receiving = asyncio.create_task(layer.receive("test.handed"))
    assert await asyncio.to_thread(faults.waiting.wait, TIMEOUT)
    await layer.send("test.handed", {"type": "y"})
    assert await asyncio.wait_for(receiving, TIMEOUT) == {"type": "y"}
    assert ("handed over", "test.handed") in faults.calls


async def test_a_hook_that_raises_before_a_statement_fails_the_call_with_nothing_sent(
    make_layer: LayerFactory, sql: Sql, prefix: str
) -> None:
    class Outage(FaultHooks):
        async def before_statement(self, name: str, parameters: Mapping[str, Any]) -> None:
            if name == "statements.SEND":
                raise DatabaseUnreachableError("injected")

    layer = make_layer(fault_hooks=Outage())
    with pytest.raises(DatabaseUnreachableError, match="injected"):
        await layer.send("test.unsent", {"type": "x"})
    assert await sql("SELECT count(*) FROM channel_layer_pg_message WHERE prefix = $1", prefix) == [(0,)]
    await layer.group_add("room", "test.member")  # other statements run as usual
    await layer.group_send("room", {"type": "y"})
    assert await receive(layer, "test.member") == {"type": "y"}


@pytest.mark.parametrize("option", ["poll_interval", "drop_summary_interval"])
def test_timings_name_themselves_when_wrong(option: str) -> None:
    zero: dict[str, Any] = {option: 0}
    with pytest.raises(ValueError, match=option):
        FaultHooks(**zero)
    text: dict[str, Any] = {option: "1"}
    with pytest.raises(TypeError, match=option):
        FaultHooks(**text)
