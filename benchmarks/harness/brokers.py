"""The peers that run on a message broker: channels_rabbitmq (RabbitMQ) and channels-nats (NATS).

``layers.SPECS`` registers them; this module makes them, checks that they can run here, and
says what each lacks, so that a workload it cannot do shows "n/a" with the reason.
"""

from __future__ import annotations

import asyncio
import importlib.util
import platform
import sys
from typing import Any
from urllib.parse import urlsplit

DEFAULT_RABBITMQ = "amqp://guest:guest@127.0.0.1:5672"
DEFAULT_NATS = "nats://127.0.0.1:4222"

# channels_rabbitmq's local_capacity is also the prefetch count of its AMQP consumer, a 16-bit
# field: above this its consumer dies and every receive() hangs.
RABBITMQ_PREFETCH_MAX = 65_535

# Why channels_rabbitmq cannot run some workloads (layers.SPECS names the features).
RABBITMQ_NO_NORMAL = "no normal channels (send and receive take process-local `!` names only)"
RABBITMQ_ONE_LOOP = "bound to the event loop it was made on (RuntimeError on any other)"

# channels-nats 0.10.1 declares Python 3.13 and uses its syntax (PEP 695 generics).
NATS_PYTHON = (3, 13)


async def _unreachable(url: str, default_port: int, what: str) -> str | None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    except (TimeoutError, OSError) as exc:
        return f"{what} at {host}:{port} is not reachable ({type(exc).__name__}: {exc})"
    writer.close()
    return None


async def _round_trip(layer: Any, what: str) -> str | None:
    """None if ``layer`` delivers one message to its own process-local channel within 10 s."""
    try:
        channel = await asyncio.wait_for(layer.new_channel(), 10)
        await asyncio.wait_for(layer.send(channel, {"type": "bench.check"}), 10)
        await asyncio.wait_for(layer.receive(channel), 10)
    except TimeoutError:
        return f"{what} delivered no message to itself within 10 s (wrong credentials or vhost?)"
    except Exception as exc:
        return f"{what} does not deliver: {type(exc).__name__}: {exc}"
    finally:
        from .layers import cancelling  # layers imports this module

        try:
            await asyncio.wait_for(layer.close(), 15)
        except Exception:
            pass
        except asyncio.CancelledError:
            # channels_rabbitmq's close() re-raises the cancellation of a send that waited
            # for a connection that never came (bad credentials, say).
            if cancelling():
                raise
    return None


def make_rabbitmq(url: str, capacity: int) -> Any:
    """A channels_rabbitmq layer; it needs a running event loop and binds to it."""
    from channels_rabbitmq.core import RabbitmqChannelLayer

    # Its queue name is random per instance; group names reach every instance through one
    # exchange, which is why the workloads' group names carry a random token.
    return RabbitmqChannelLayer(
        host=url, local_capacity=min(capacity, RABBITMQ_PREFETCH_MAX), remote_capacity=capacity
    )


async def rabbitmq_unavailable(url: str) -> str | None:
    if importlib.util.find_spec("channels_rabbitmq") is None:
        return "channels_rabbitmq is not installed"
    return await _unreachable(url, 5672, "RabbitMQ") or await _round_trip(
        make_rabbitmq(url, 100), "channels_rabbitmq"
    )


def describe_rabbitmq(layer: Any) -> str:
    return (
        f"local_capacity={layer.local_capacity} (its AMQP prefetch too, at most {RABBITMQ_PREFETCH_MAX}), "
        f"remote_capacity={layer.remote_capacity}, expiry={layer.expiry}; one exclusive queue per "
        "instance, no normal channels, no flush"
    )


def make_nats(url: str, prefix: str, capacity: int) -> Any:
    from channels_nats import NatsChannelLayer

    return NatsChannelLayer(servers=url, prefix=prefix, capacity=capacity)


async def nats_unavailable(url: str) -> str | None:
    if importlib.util.find_spec("channels_nats") is None:
        needs = (
            f" (channels-nats 0.10.1 needs Python {'.'.join(map(str, NATS_PYTHON))} or later; "
            f"this is {platform.python_version()})"
            if sys.version_info < NATS_PYTHON
            else ""
        )
        return f"channels-nats is not installed{needs}"
    try:
        layer = make_nats(url, "benchcheck", 100)
    except Exception as exc:  # a release for a newer Python fails here with a SyntaxError
        return f"channels_nats cannot be used here: {type(exc).__name__}: {exc}"
    return await _unreachable(url, 4222, "NATS") or await _round_trip(layer, "channels-nats")


def describe_nats(layer: Any) -> str:
    return (
        f"capacity={layer.capacity} per channel, expiry={layer.expiry}; pub/sub: what is sent to a "
        "normal channel nobody receives on is dropped, flush() clears this instance only"
    )
