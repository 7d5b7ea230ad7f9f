"""Django Channels finds the layer by its BACKEND path and the channels_postgres-style CONFIG."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import make_url

from channel_layer_pg import PostgresChannelLayer
from tests.helpers import receive

pytest.importorskip("django")
pytest.importorskip("channels")


async def test_channels_builds_the_layer_from_django_settings(database_url: str, prefix: str) -> None:
    from channels.layers import ChannelLayerManager
    from django.conf import settings
    from django.test.utils import override_settings

    url = make_url(database_url)
    config = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": url.database,
        "USER": url.username,
        "PASSWORD": url.password or "",
        # The embedded server listens on a unix socket; Django writes its directory as HOST.
        "HOST": url.query.get("host") or url.host,
        "PORT": str(url.port or ""),
        "CONN_MAX_AGE": 60,
        "prefix": prefix,
    }
    if not settings.configured:
        settings.configure()
    layers = {"default": {"BACKEND": "channel_layer_pg.PostgresChannelLayer", "CONFIG": config}}
    with override_settings(CHANNEL_LAYERS=layers):
        layer = ChannelLayerManager()["default"]
    try:
        assert isinstance(layer, PostgresChannelLayer)
        await layer.send("test.django", {"type": "from.settings"})
        assert await receive(layer, "test.django") == {"type": "from.settings"}
    finally:
        await layer.close()
