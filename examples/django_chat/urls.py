"""HTTP routes for Django, WebSocket routes for Channels."""

from __future__ import annotations

from django.urls import path, re_path

from . import views
from .consumers import ChatConsumer

# ASCII only and short: group names allow [a-zA-Z0-9-_.] and fewer than 100 characters.
ROOM = r"(?P<room>[A-Za-z0-9_-]{1,50})"

urlpatterns = [
    path("", views.index),
    re_path(rf"^rooms/{ROOM}/announce$", views.announce),
]

websocket_urlpatterns = [
    re_path(rf"^ws/{ROOM}$", ChatConsumer.as_asgi()),
]
