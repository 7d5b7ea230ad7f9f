"""The layer's stats as Prometheus metrics: the text exposition format, and an ASGI app serving it.

No Prometheus client library is needed: ``prometheus_text(stats)`` writes the text format
(version 0.0.4) itself, and ``metrics_app(layer)`` serves it. Every sample carries the layer's
``prefix`` as a label, and for a ShardedChannelLayer the ``shard`` it was read from. The
per-channel, per-process and per-group series are the ``limit`` largest only, beside totals
over everything, so a scrape's series stay bounded however many channels exist
(docs/operations.md, "Metrics for Prometheus", lists every metric).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from typing import Any, NamedTuple, TypeVar

from .errors import ChannelLayerError
from .layer import PostgresChannelLayer
from .shards import ShardedChannelLayer
from .stats import Backlog, GroupSize, LayerStats, check_limit

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

E = TypeVar("E", Backlog, GroupSize)
Labels = tuple[tuple[str, str], ...]
Samples = Callable[[LayerStats], Iterable[tuple[Labels, float | None]]]


class _Family(NamedTuple):
    name: str
    kind: str  # "gauge" or "counter"
    help: str
    samples: Samples  # a value of None leaves the sample out


def _total(value: Callable[[LayerStats], float | None]) -> Samples:
    return lambda stats: [((), value(stats))]


def _listed(label: str, entries: Callable[[LayerStats], Iterable[E]], value: Callable[[E], float]) -> Samples:
    return lambda stats: [(((label, entry.name),), value(entry)) for entry in entries(stats)]


_FAMILIES = (
    _Family(
        "channel_layer_pg_messages",
        "gauge",
        "Unexpired messages queued under the prefix; a group message stored once for a process counts once.",
        _total(lambda stats: stats.messages),
    ),
    _Family(
        "channel_layer_pg_expired_messages",
        "gauge",
        "Expired messages the periodic cleanup has not removed yet.",
        _total(lambda stats: stats.expired_messages),
    ),
    _Family(
        "channel_layer_pg_oldest_message_age_seconds",
        "gauge",
        "Age of the oldest unexpired message, 0 when none is queued.",
        _total(lambda stats: stats.oldest_message_age or 0.0),
    ),
    _Family(
        "channel_layer_pg_channels",
        "gauge",
        "Channels with queued messages.",
        _total(lambda stats: stats.channel_count),
    ),
    _Family(
        "channel_layer_pg_channel_messages",
        "gauge",
        "Messages queued on each of the channels with the most, a group message counting for each recipient.",
        _listed("channel", lambda stats: stats.channels, lambda backlog: backlog.messages),
    ),
    _Family(
        "channel_layer_pg_channel_oldest_message_age_seconds",
        "gauge",
        "Age of the oldest message on each of the channels with the most messages.",
        _listed("channel", lambda stats: stats.channels, lambda backlog: backlog.oldest_age),
    ),
    _Family(
        "channel_layer_pg_processes",
        "gauge",
        "Layer instances whose process-local channels have queued messages.",
        _total(lambda stats: stats.process_count),
    ),
    _Family(
        "channel_layer_pg_process_messages",
        "gauge",
        "Messages queued for each of the layer instances with the most, by their channels' non-local part.",
        _listed("queue", lambda stats: stats.processes, lambda backlog: backlog.messages),
    ),
    _Family(
        "channel_layer_pg_process_oldest_message_age_seconds",
        "gauge",
        "Age of the oldest message queued for each of the layer instances with the most messages.",
        _listed("queue", lambda stats: stats.processes, lambda backlog: backlog.oldest_age),
    ),
    _Family(
        "channel_layer_pg_groups",
        "gauge",
        "Groups with members.",
        _total(lambda stats: stats.group_count),
    ),
    _Family(
        "channel_layer_pg_group_memberships",
        "gauge",
        "Group memberships that have not lapsed.",
        _total(lambda stats: stats.membership_count),
    ),
    _Family(
        "channel_layer_pg_lapsed_group_memberships",
        "gauge",
        "Lapsed group memberships the periodic cleanup has not removed yet.",
        _total(lambda stats: stats.lapsed_memberships),
    ),
    _Family(
        "channel_layer_pg_group_members",
        "gauge",
        "Members of each of the largest groups.",
        _listed("group", lambda stats: stats.groups, lambda group: group.members),
    ),
    _Family(
        "channel_layer_pg_listen_connections",
        "gauge",
        "LISTEN connections under the prefix: one per layer instance and event loop that receives, "
        "and one per instance with process-local channels (it holds the liveness lock).",
        _total(lambda stats: stats.listener_count),
    ),
    _Family(
        "channel_layer_pg_database_writable",
        "gauge",
        "1 if the server accepts the layer's writes now; 0 on a standby or when read-only.",
        _total(lambda stats: int(stats.writable)),
    ),
    _Family(
        "channel_layer_pg_database_in_recovery",
        "gauge",
        "1 if the server is a standby in recovery, else 0.",
        _total(lambda stats: int(stats.in_recovery)),
    ),
    _Family(
        "channel_layer_pg_schema_at_head",
        "gauge",
        "1 if the tables are at the migration revision this release needs, else 0 (run migrate).",
        # Left out when the revision cannot be read: an alert on 0 must not fire for that.
        _total(
            lambda stats: (
                None if stats.schema_revision is None else int(stats.schema_revision == stats.schema_head)
            )
        ),
    ),
    _Family(
        "channel_layer_pg_held_in_process_messages",
        "gauge",
        "Messages waiting in this layer instance's memory, not in the table.",
        _total(lambda stats: stats.held_in_process),
    ),
    _Family(
        "channel_layer_pg_sends_refused_total",
        "counter",
        "Sends by this layer instance that raised ChannelFull.",
        _total(lambda stats: stats.sends_refused),
    ),
    _Family(
        "channel_layer_pg_group_deliveries_skipped_total",
        "counter",
        "Deliveries of this layer instance's group_sends skipped because the member's channel was full.",
        _total(lambda stats: stats.deliveries_skipped),
    ),
)


Layer = PostgresChannelLayer | ShardedChannelLayer


def prometheus_text(*stats: LayerStats | Mapping[str, LayerStats]) -> str:
    """The metrics of one or more layers' stats, in Prometheus' text exposition format.

    Each entry is a layer's ``stats()``: a LayerStats, or for a ShardedChannelLayer its
    mapping of shard name to LayerStats, whose samples are labelled with their ``shard``. Each
    family lists the samples of every entry in turn, told apart by their ``prefix`` (and
    ``shard``) labels; so two entries of the same prefix and shard are refused (their samples
    would clash).
    """
    sources: list[tuple[Labels, LayerStats]] = []
    for entry in stats:
        if isinstance(entry, LayerStats):
            sources.append(((("prefix", entry.prefix),), entry))
        else:
            sources += [((("prefix", each.prefix), ("shard", shard)), each) for shard, each in entry.items()]
    identities = [identity for identity, _ in sources]
    if len(set(identities)) < len(identities):
        raise ValueError(f"each stats must be of another prefix (or shard), got {identities}")
    lines = []
    for family in _FAMILIES:
        samples = [
            f"{family.name}{_labels((*identity, *labels))} {_number(value)}"
            for identity, each in sources
            for labels, value in family.samples(each)
            if value is not None
        ]
        if samples:
            lines += [
                f"# HELP {family.name} {_escape_help(family.help)}",
                f"# TYPE {family.name} {family.kind}",
            ]
            lines += samples
    return "\n".join(lines) + "\n" if lines else ""


async def scrape(*layers: Layer, limit: int = 10) -> str:
    """The metrics of ``layers`` now, as ``prometheus_text``; raises what ``stats()`` raises."""
    return prometheus_text(*await asyncio.gather(*(_stats_of(layer, limit) for layer in layers)))


async def _stats_of(layer: Layer, limit: int) -> LayerStats | Mapping[str, LayerStats]:
    return await layer.stats(limit=limit)


def metrics_app(*layers: Layer, limit: int = 10) -> ASGIApp:
    """An ASGI app answering every GET with the metrics of ``layers``, for Prometheus to scrape.

    Mount it where the application routes (``Mount("/metrics", metrics_app(layer))`` in
    Starlette) or serve it alone. The lists hold the ``limit`` largest channels, processes and
    groups. If the database cannot be read the answer is 503 with the error, which Prometheus
    records as a failed scrape. The app never opens or closes the layers: their owner does.
    """
    if not layers:
        raise TypeError("metrics_app needs at least one PostgresChannelLayer or ShardedChannelLayer")
    for layer in layers:
        if not isinstance(layer, (PostgresChannelLayer, ShardedChannelLayer)):
            raise TypeError(
                "metrics_app serves PostgresChannelLayers and ShardedChannelLayers, "
                f"not {type(layer).__name__}"
            )
    check_limit(limit)
    if len({layer.prefix for layer in layers}) < len(layers):
        raise ValueError("metrics_app needs layers of different prefixes: their samples would clash")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise ValueError(f"the metrics app serves HTTP only, not {scope['type']!r}")
        if scope["method"] not in ("GET", "HEAD"):
            await _respond(send, 405, b"only GET and HEAD\n", extra=[(b"allow", b"GET, HEAD")])
            return
        try:
            text = await scrape(*layers, limit=limit)
        except ChannelLayerError as exc:  # its message names the database, never its password
            await _respond(send, 503, f"{exc}\n".encode())
            return
        await _respond(send, 200, text.encode(), content_type=CONTENT_TYPE, head=scope["method"] == "HEAD")

    return app


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    extra: Iterable[tuple[bytes, bytes]] = (),
    head: bool = False,
) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", b"%d" % len(body)), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def _labels(labels: Labels) -> str:
    return "{" + ",".join(f'{name}="{_escape_label(value)}"' for name, value in labels) + "}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
