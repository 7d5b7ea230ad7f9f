"""Chat with Django Channels: a consumer that joins a group, a sync view that broadcasts.

Run it as any Channels project runs (the layer reads the database from the environment)::

    export CHANNEL_LAYER_PG_URL=postgresql://user@127.0.0.1:5432/app
    channel-layer-pg migrate
    uvicorn examples.django_chat.asgi:application --workers 2

then open http://127.0.0.1:8000/ twice, and announce from outside::

    curl -d text=hello http://127.0.0.1:8000/rooms/lobby/announce
"""
