"""pytest fixtures for testing code that uses the layer: a migrated PostgreSQL, and layers on it.

pytest loads this plugin (the ``pytest11`` entry point) in every project that has the package
installed, so it starts no server and imports nothing heavy until a test asks for a fixture.

- ``postgres_url`` (session): a database with the layer's schema. CHANNEL_LAYER_PG_TEST_URL if
  set; else a PostgreSQL in Docker (testcontainers) if installed and a daemon answers; else an
  embedded server (the ``embedded`` extra). CHANNEL_LAYER_PG_TEST_SERVER=embedded|docker picks
  the server instead of trying Docker first.
- ``channel_layer_prefix``: a prefix of the test's own, so tests never see each other's messages,
  also when they run in parallel under pytest-xdist on one server.
- ``channel_layer_config``: ``{"url": ..., "prefix": ...}``, a Django ``CONFIG`` for that database.
- ``channel_layer_factory``: makes layers on that database with that prefix (options as keyword
  arguments); each is closed when the test ends. ``channel_layer``: one such layer.

The layer fixtures are async fixtures run by pytest-asyncio (in the ``testing`` extra).
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from channel_layer_pg import PostgresChannelLayer

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - the fixtures that need it then say so
    pytest_asyncio = None  # type: ignore[assignment]

LayerFactory = Callable[..., "PostgresChannelLayer"]

# The directory the pytest-xdist workers of one run share, set by the controller.
_SHARE = "channel_layer_pg_share"
_share_key = pytest.StashKey[Path]()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist controller: give every worker of this run the same directory for its shared server."""
    config = node.config
    if _share_key not in config.stash:
        # Only named here; the first worker that needs a server creates it.
        config.stash[_share_key] = Path(tempfile.gettempdir()) / f"channel_layer_pg-{uuid.uuid4().hex[:12]}"
    node.workerinput[_SHARE] = str(config.stash[_share_key])


def pytest_unconfigure(config: pytest.Config) -> None:
    """xdist controller, after every worker has ended: stop the server they shared, if any."""
    share = config.stash.get(_share_key, None)
    if share is not None and share.exists():
        from .servers import stop_shared

        stop_shared(share)


@pytest.fixture(scope="session")
def postgres_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a PostgreSQL database that has the layer's schema, for the whole session."""
    from .servers import session_database

    workerinput = getattr(request.config, "workerinput", {})
    share = Path(workerinput[_SHARE]) if _SHARE in workerinput else None
    with session_database(share) as url:
        yield url


@pytest.fixture
def channel_layer_prefix() -> str:
    """A layer prefix of this test's own."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def channel_layer_config(postgres_url: str, channel_layer_prefix: str) -> dict[str, Any]:
    """The test database and prefix as a layer's options (a Django CHANNEL_LAYERS ``CONFIG``)."""
    return {"url": postgres_url, "prefix": channel_layer_prefix}


async def _channel_layer_factory(postgres_url: str, channel_layer_prefix: str) -> AsyncIterator[LayerFactory]:
    """Make layers on the test database (this test's prefix unless given); all closed afterwards."""
    from channel_layer_pg import PostgresChannelLayer

    layers: list[PostgresChannelLayer] = []

    def make(**options: Any) -> PostgresChannelLayer:
        options.setdefault("url", postgres_url)
        options.setdefault("prefix", channel_layer_prefix)
        layer = PostgresChannelLayer(**options)
        layers.append(layer)
        return layer

    yield make
    for layer in layers:
        await layer.close()


async def _channel_layer(channel_layer_factory: LayerFactory) -> PostgresChannelLayer:
    """A layer on the test database with this test's prefix; closed afterwards."""
    return channel_layer_factory()


def _async_fixture(function: Callable[..., Any], name: str) -> Any:
    if pytest_asyncio is not None:
        return pytest_asyncio.fixture(function, name=name)

    def missing() -> None:
        pytest.fail(
            f"the {name} fixture needs pytest-asyncio: pip install 'channel-layer-pg[testing]'",
            pytrace=False,
        )

    missing.__doc__ = function.__doc__
    return pytest.fixture(missing, name=name)


channel_layer_factory = _async_fixture(_channel_layer_factory, "channel_layer_factory")
channel_layer = _async_fixture(_channel_layer, "channel_layer")
