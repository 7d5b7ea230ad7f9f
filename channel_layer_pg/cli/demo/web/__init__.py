"""The browser demo: a chat served by several uvicorn worker processes, joined through PostgreSQL.

``python -m channel_layer_pg demo --web`` runs it (``serve``); the ASGI app is ``app:app``, one
member's WebSocket session is ``room.Member``, and the page is plain files under ``static/``.
"""
