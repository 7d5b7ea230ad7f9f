"""Settings of the Django Channels example: only what the chat needs."""

from __future__ import annotations

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "only-for-the-example")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["channels"]
MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
ROOT_URLCONF = "examples.django_chat.urls"
ASGI_APPLICATION = "examples.django_chat.asgi.application"
USE_TZ = True

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channel_layer_pg.PostgresChannelLayer",
        # The database comes from $CHANNEL_LAYER_PG_URL here. A project whose DATABASES entry is
        # PostgreSQL can write {**DATABASES["default"], "prefix": "django_chat"} instead.
        "CONFIG": {"prefix": "django_chat"},
    },
}
