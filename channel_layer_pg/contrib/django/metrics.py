"""A Django view serving the channel layer's Prometheus metrics.

In ``urls.py``: ``path("metrics", metrics_view)``, or for another entry of CHANNEL_LAYERS
``path("metrics", metrics_view, {"alias": "other"})``. It answers as ``metrics_app`` does
(channel_layer_pg.metrics): the metrics of that layer, or 503 if the database cannot be read.
"""

from __future__ import annotations

from channels import DEFAULT_CHANNEL_LAYER
from channels.layers import get_channel_layer
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed

from ...errors import ChannelLayerError
from ...layer import PostgresChannelLayer
from ...metrics import CONTENT_TYPE, scrape
from ...shards import ShardedChannelLayer


async def metrics_view(
    request: HttpRequest, alias: str = DEFAULT_CHANNEL_LAYER, limit: int = 10
) -> HttpResponse:
    """The Prometheus metrics of the channel layer ``alias``, its ``limit`` largest of each list."""
    if request.method not in ("GET", "HEAD"):
        return HttpResponseNotAllowed(["GET", "HEAD"])
    layer = get_channel_layer(alias)
    if not isinstance(layer, (PostgresChannelLayer, ShardedChannelLayer)):
        raise ImproperlyConfigured(
            f"CHANNEL_LAYERS[{alias!r}] must have BACKEND channel_layer_pg.PostgresChannelLayer or "
            f"channel_layer_pg.ShardedChannelLayer to serve its metrics, not {type(layer).__name__}"
        )
    try:
        text = await scrape(layer, limit=limit)
    except ChannelLayerError as exc:  # its message names the database, never its password
        return HttpResponse(f"{exc}\n", status=503, content_type="text/plain; charset=utf-8")
    return HttpResponse(text, content_type=CONTENT_TYPE)
