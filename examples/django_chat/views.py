"""The HTTP side: plain synchronous Django views."""

from __future__ import annotations

from pathlib import Path

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from .consumers import room_group

PAGE = (Path(__file__).parent.parent / "chat.html").read_text(encoding="utf-8")


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse(PAGE)


@csrf_exempt  # an endpoint for scripts and other services; protect it as your project does
@require_POST
def announce(request: HttpRequest, room: str) -> HttpResponse:
    """Send the form field ``text`` to everyone in ``room``, from ordinary sync code."""
    text = request.POST.get("text", "")
    if not text:
        return HttpResponseBadRequest("a non-empty 'text' field is required\n")
    message = {"type": "chat.message", "text": text[:1000], "from": "server"}
    async_to_sync(get_channel_layer().group_send)(room_group(room), message)
    return HttpResponse(status=204)
