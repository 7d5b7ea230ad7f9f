"""Chat apps that use the layer the way each framework's own code would.

One per framework: ``django_chat`` (Django Channels), ``starlette_chat``, ``quart_chat`` and
``plain_asgi`` (no framework). Each serves the same page, ``chat.html``, and the same protocol:
the client opens ``/ws/{room}?name=...`` and sends ``{"text": ...}``; everyone in the room,
whichever process serves them, receives ``{"text": ..., "from": ...}``. The README says how
to run each; the tests under ``tests/test_examples_*.py`` drive each through its ASGI interface.
"""
