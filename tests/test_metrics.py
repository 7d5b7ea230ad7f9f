"""Prometheus metrics: the text format (read back by prometheus_client's parser) and the apps serving it."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import pytest

from channel_layer_pg import ChannelFull, LayerStats, PostgresChannelLayer
from channel_layer_pg.metrics import CONTENT_TYPE, metrics_app, prometheus_text
from channel_layer_pg.stats import Backlog, GroupSize
from tests.helpers import TIMEOUT, LayerFactory, channel_layers_setting

parser = pytest.importorskip("prometheus_client.parser")

PASSWORD = "password-secret-71ab"


def parse(text: str) -> dict[str, Any]:
    """Metric families by name, as Prometheus' own client library reads the text."""
    return {family.name: family for family in parser.text_string_to_metric_families(text)}


def values(family: Any, label: str | None = None) -> dict[Any, float]:
    """A family's sample values, by the value of ``label`` (or by sample name without one)."""
    return {(sample.labels[label] if label else sample.name): sample.value for sample in family.samples}


async def busy_layer(make_layer: LayerFactory) -> PostgresChannelLayer:
    """A layer with a backlog on three channels and for itself, two groups and a drop of each kind."""
    layer, other = make_layer(capacity=3), make_layer()
    # Sent by another layer instance, so stored in the table for this one's process to claim.
    await other.send(await layer.new_channel(), {"type": "for this process"})
    for channel, count in (("test.big", 3), ("test.middle", 2)):
        for number in range(count):
            await layer.send(channel, {"type": "queued", "n": number})
    with pytest.raises(ChannelFull):
        await layer.send("test.big", {"type": "refused"})
    for member in ("test.big", "test.small"):
        await layer.group_add("room", member)
    await layer.group_add("hall", "test.small")
    await layer.group_send("room", {"type": "reaches test.small; test.big is full"})
    return layer


async def test_the_text_reads_back_as_the_stats_it_came_from(make_layer: LayerFactory) -> None:
    layer = await busy_layer(make_layer)
    stats = await layer.stats(limit=2)
    families = parse(prometheus_text(stats))
    assert stats.messages == 7
    assert values(families["channel_layer_pg_messages"], "prefix") == {layer.prefix: 7}
    assert families["channel_layer_pg_messages"].type == "gauge"
    assert values(families["channel_layer_pg_channels"], "prefix") == {layer.prefix: 4}
    (queue,) = values(families["channel_layer_pg_process_messages"], "queue")
    assert queue.endswith(f".{layer.client_prefix}!")
    assert values(families["channel_layer_pg_processes"], "prefix") == {layer.prefix: 1}
    # Only the ``limit`` largest channels have series of their own.
    assert values(families["channel_layer_pg_channel_messages"], "channel") == {
        "test.big": 3,
        "test.middle": 2,
    }
    ages = values(families["channel_layer_pg_channel_oldest_message_age_seconds"], "channel")
    assert set(ages) == {"test.big", "test.middle"} and all(0 <= age < 60 for age in ages.values())
    assert 0 <= families["channel_layer_pg_oldest_message_age_seconds"].samples[0].value < 60
    assert values(families["channel_layer_pg_groups"], "prefix") == {layer.prefix: 2}
    assert values(families["channel_layer_pg_group_memberships"], "prefix") == {layer.prefix: 3}
    assert values(families["channel_layer_pg_group_members"], "group") == {"room": 2, "hall": 1}
    refused = families["channel_layer_pg_sends_refused"]
    assert (refused.type, values(refused)) == ("counter", {"channel_layer_pg_sends_refused_total": 1})
    skipped = families["channel_layer_pg_group_deliveries_skipped"]
    assert values(skipped) == {"channel_layer_pg_group_deliveries_skipped_total": 1}
    assert values(families["channel_layer_pg_database_writable"], "prefix") == {layer.prefix: 1}
    assert values(families["channel_layer_pg_database_in_recovery"], "prefix") == {layer.prefix: 0}
    assert values(families["channel_layer_pg_schema_at_head"], "prefix") == {layer.prefix: 1}
    assert all(sample.labels["prefix"] == layer.prefix for f in families.values() for sample in f.samples)


async def test_every_family_has_help_and_type_and_follows_the_naming_rules(
    make_layer: LayerFactory,
) -> None:
    text = prometheus_text(await (await busy_layer(make_layer)).stats())
    names = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    helped = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP")]
    assert names == helped and len(names) == len(set(names)) == 20
    for line in text.splitlines():
        if line.startswith("# TYPE"):
            _, _, name, kind = line.split()
            assert name.startswith("channel_layer_pg_")
            assert name.endswith("_total") == (kind == "counter")


async def test_an_empty_prefix_has_totals_of_zero_and_no_listed_series(layer: PostgresChannelLayer) -> None:
    families = parse(prometheus_text(await layer.stats()))
    assert values(families["channel_layer_pg_messages"], "prefix") == {layer.prefix: 0}
    assert values(families["channel_layer_pg_oldest_message_age_seconds"], "prefix") == {layer.prefix: 0}
    assert "channel_layer_pg_channel_messages" not in families


def test_label_values_are_escaped() -> None:
    # Names stored by the layer are always valid; stats read from a database may hold anything.
    awkward = 'a "quoted" back\\slash\nand newline'
    stats = LayerStats(
        prefix="asgi",
        limit=10,
        expiry=60.0,
        messages=1,
        expired_messages=0,
        oldest_message_age=1.5,
        channel_count=1,
        channels=(Backlog(awkward, 1, 1.5),),
        process_count=0,
        processes=(),
        group_count=1,
        membership_count=1,
        lapsed_memberships=0,
        groups=(GroupSize(awkward, 1),),
        listener_count=0,
        listeners=(),
        writable=False,
        in_recovery=True,
        schema_revision=None,
        schema_head="0002",
    )
    families = parse(prometheus_text(stats))
    assert values(families["channel_layer_pg_channel_messages"], "channel") == {awkward: 1}
    assert values(families["channel_layer_pg_group_members"], "group") == {awkward: 1}
    assert values(families["channel_layer_pg_database_writable"], "prefix") == {"asgi": 0}
    assert values(families["channel_layer_pg_database_in_recovery"], "prefix") == {"asgi": 1}
    # An unknown revision is neither at head nor behind: no sample, rather than a false alarm.
    assert "channel_layer_pg_schema_at_head" not in families
    # Asked from outside a layer: no process figures, so no such families at all.
    assert "channel_layer_pg_sends_refused" not in families
    assert "channel_layer_pg_held_in_process_messages" not in families


async def test_layers_of_several_prefixes_share_one_exposition(make_layer: LayerFactory, prefix: str) -> None:
    first, second = make_layer(), make_layer(prefix=f"{prefix}-second")
    await first.send("test.one", {"type": "x"})
    for _ in range(2):
        await second.send("test.two", {"type": "x"})
    families = parse(prometheus_text(await first.stats(), await second.stats()))
    assert values(families["channel_layer_pg_messages"], "prefix") == {first.prefix: 1, second.prefix: 2}
    with pytest.raises(ValueError, match="prefix"):
        prometheus_text(await first.stats(), await first.stats())


# -- the ASGI app ---------------------------------------------------------------------------


async def request(app: Any, method: str = "GET") -> dict[str, Any]:
    from channels.testing.http import HttpCommunicator

    communicator = HttpCommunicator(app, method, "/metrics")
    response: dict[str, Any] = await communicator.get_response(TIMEOUT)
    await communicator.wait(TIMEOUT)
    response["headers"] = dict(response["headers"])
    return response


async def test_the_app_answers_a_get_with_the_metrics(make_layer: LayerFactory) -> None:
    layer = await busy_layer(make_layer)
    response = await request(metrics_app(layer, limit=1))
    assert response["status"] == 200
    assert response["headers"][b"content-type"] == CONTENT_TYPE.encode()
    families = parse(response["body"].decode())
    assert values(families["channel_layer_pg_channel_messages"], "channel") == {"test.big": 3}
    assert values(families["channel_layer_pg_messages"], "prefix") == {layer.prefix: 7}


async def test_the_app_answers_head_without_a_body_and_refuses_post(layer: PostgresChannelLayer) -> None:
    app = metrics_app(layer)
    head = await request(app, "HEAD")
    assert (head["status"], head["body"]) == (200, b"")
    post = await request(app, "POST")
    assert (post["status"], post["headers"][b"allow"]) == (405, b"GET, HEAD")


async def test_the_app_answers_503_naming_the_database_but_not_the_password(make_layer: LayerFactory) -> None:
    unreachable = make_layer(url=f"postgresql://someone:{PASSWORD}@127.0.0.1:1/db")
    response = await request(metrics_app(unreachable))
    assert response["status"] == 503
    assert b"127.0.0.1:1" in response["body"] and PASSWORD.encode() not in response["body"]


def test_the_app_refuses_what_it_cannot_serve(make_layer: LayerFactory) -> None:
    layer = make_layer()
    with pytest.raises(TypeError, match="at least one"):
        metrics_app()
    with pytest.raises(TypeError, match="PostgresChannelLayer"):
        metrics_app(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        metrics_app(layer, limit=0)
    with pytest.raises(ValueError, match="prefixes"):
        metrics_app(layer, make_layer())


@pytest.fixture
async def served(layer: PostgresChannelLayer) -> AsyncIterator[str]:
    """The app behind a real HTTP server (uvicorn) on a free port: its URL."""
    uvicorn = pytest.importorskip("uvicorn")
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    config = uvicorn.Config(metrics_app(layer), lifespan="on", ws="none", log_level="warning")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[listening]))
    async with asyncio.timeout(TIMEOUT):
        while not server.started:  # noqa: ASYNC110  # uvicorn offers no event for it
            await asyncio.sleep(0.01)
    try:
        yield "http://{}:{}/metrics".format(*listening.getsockname())
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, TIMEOUT)
        listening.close()


async def test_prometheus_can_scrape_the_app_over_http(layer: PostgresChannelLayer, served: str) -> None:
    await layer.send("test.scraped", {"type": "x"})

    def fetch() -> tuple[str, str]:
        with urllib.request.urlopen(served, timeout=TIMEOUT) as response:
            return response.headers["Content-Type"], response.read().decode()

    content_type, text = await asyncio.to_thread(fetch)
    assert content_type == CONTENT_TYPE
    assert values(parse(text)["channel_layer_pg_channel_messages"], "channel") == {"test.scraped": 1}


# -- the Django view ------------------------------------------------------------------------


@pytest.fixture
async def django_layers(database_url: str, prefix: str) -> AsyncIterator[None]:
    pytest.importorskip("channels")
    layers = {
        "default": {
            "BACKEND": "channel_layer_pg.PostgresChannelLayer",
            "CONFIG": {"url": database_url, "prefix": prefix},
        },
        "memory": {"BACKEND": "channels.layers.InMemoryChannelLayer"},
    }
    async with channel_layers_setting(layers):
        yield


async def test_the_django_view_serves_the_configured_layer_s_metrics(django_layers: None) -> None:
    from channels.layers import get_channel_layer
    from django.test import RequestFactory

    from channel_layer_pg.contrib.django.metrics import metrics_view

    await get_channel_layer().send("test.django", {"type": "x"})
    response = await metrics_view(RequestFactory().get("/metrics"))
    assert (response.status_code, response["Content-Type"]) == (200, CONTENT_TYPE)
    families = parse(response.content.decode())
    assert values(families["channel_layer_pg_channel_messages"], "channel") == {"test.django": 1}
    assert (await metrics_view(RequestFactory().post("/metrics"))).status_code == 405


async def test_the_django_view_refuses_a_layer_of_another_backend(django_layers: None) -> None:
    from django.core.exceptions import ImproperlyConfigured
    from django.test import RequestFactory

    from channel_layer_pg.contrib.django.metrics import metrics_view

    with pytest.raises(ImproperlyConfigured, match=r"'memory'.*InMemoryChannelLayer"):
        await metrics_view(RequestFactory().get("/metrics"), alias="memory")
