"""The PostgreSQL a test session uses: a URL from the environment, a container, or an embedded server.

Nothing here imports SQLAlchemy, asyncpg, testcontainers or the embedded server at module level:
pytest imports the plugin that uses this module in every run, used or not.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path

TEST_URL_VAR = "CHANNEL_LAYER_PG_TEST_URL"
# "docker" or "embedded": which server to start when no URL is given, instead of trying Docker first.
SERVER_VAR = "CHANNEL_LAYER_PG_TEST_SERVER"
IMAGE_VAR = "CHANNEL_LAYER_PG_TEST_IMAGE"
DEFAULT_IMAGE = "postgres:17-alpine"
SERVER_KINDS = ("docker", "embedded")

# Where a Docker daemon listens when DOCKER_HOST is unset: Linux, Docker Desktop, rootless Docker.
_DEFAULT_SOCKETS = (
    "/var/run/docker.sock",
    "~/.docker/run/docker.sock",
    "$XDG_RUNTIME_DIR/docker.sock",
)


@contextmanager
def session_database(share: Path | None) -> Iterator[str]:
    """The URL of a migrated database for this pytest process, its server stopped on exit if it owns it.

    ``share`` is a directory the pytest-xdist workers of one run have in common, or None without
    xdist. The workers then start one embedded server between them, the first to need it under
    a lock, and migrate a database once; the xdist controller stops that server when the run
    ends (``stop_shared``). A container is each worker's own: testcontainers removes it when
    the process that started it exits.
    """
    from ..store.migrate import migrate

    url = os.environ.get(TEST_URL_VAR)
    if url:
        if share is None:
            migrate(url)
        else:
            # Two workers migrating an empty database at once would both create the tables.
            with _locked(share):
                if not (share / "migrated").exists():
                    migrate(url)
                    (share / "migrated").touch()
        yield url
    elif server_kind() == "docker":
        with container_server() as url:
            migrate(url)
            yield url
    elif share is None:
        from ..embedded import embedded_server

        with embedded_server() as server:
            migrate(server.url)
            yield server.url
    else:
        yield _shared_embedded_url(share)


def _shared_embedded_url(share: Path) -> str:
    from ..embedded import start_embedded
    from ..store.migrate import migrate

    with _locked(share):
        url_file = share / "url"
        if url_file.exists():
            return url_file.read_text()
        url = start_embedded(str(share / "pgdata")).url
        migrate(url)
        url_file.write_text(url)
        return url


def stop_shared(share: Path) -> None:
    """Stop the embedded server the workers of a run shared, if one started; remove its directory."""
    # postmaster.pid exists while the server runs; start_embedded then finds it rather than
    # starting one.
    if (share / "pgdata" / "postmaster.pid").exists():
        from ..embedded import start_embedded

        start_embedded(str(share / "pgdata")).stop()
    shutil.rmtree(share, ignore_errors=True)


@contextmanager
def _locked(share: Path) -> Iterator[None]:
    share.mkdir(exist_ok=True)
    with file_lock(share / "lock"):
        yield


def server_kind() -> str:
    """The server to start when CHANNEL_LAYER_PG_TEST_URL is unset: "docker" or "embedded".

    CHANNEL_LAYER_PG_TEST_SERVER decides if set; otherwise Docker when testcontainers is
    installed and a Docker daemon answers, else the embedded server.
    """
    chosen = os.environ.get(SERVER_VAR, "")
    if chosen:
        if chosen not in SERVER_KINDS:
            raise ValueError(f"{SERVER_VAR} must be one of {', '.join(SERVER_KINDS)}, not {chosen!r}")
        return chosen
    if find_spec("testcontainers") is not None and docker_available():
        return "docker"
    return "embedded"


def docker_available(timeout: float = 1.0) -> bool:
    """Whether a Docker daemon answers a ping within ``timeout`` seconds (DOCKER_HOST or its usual sockets).

    Only unix sockets and plain tcp:// are tried; a daemon reachable some other way (TLS, an SSH
    host, a named pipe, a Docker context) counts as absent, and the embedded server is used.
    """
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("tcp://"):
        name, _, port = host.removeprefix("tcp://").rstrip("/").rpartition(":")
        return _answers_ping(socket.AF_INET, (name or "127.0.0.1", int(port or 2375)), timeout)
    if host.startswith("unix://"):
        candidates: tuple[str, ...] = (host.removeprefix("unix://"),)
    elif host:
        return False
    else:
        candidates = _DEFAULT_SOCKETS
    if not hasattr(socket, "AF_UNIX"):
        return False
    for candidate in candidates:
        path = Path(os.path.expandvars(candidate)).expanduser()
        if path.is_socket() and _answers_ping(socket.AF_UNIX, str(path), timeout):
            return True
    return False


def _answers_ping(family: int, address: str | tuple[str, int], timeout: float) -> bool:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # One deadline for connect and reply: a daemon that accepts and never answers must
            # not hang the test session.
            probe.settimeout(timeout)
            probe.connect(address)
            probe.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return probe.recv(64).split(b" ")[1:2] == [b"200"]
    except (OSError, ValueError):
        return False


@contextmanager
def container_server() -> Iterator[str]:
    """A PostgreSQL in a Docker container (testcontainers), removed on exit; yields its URL."""
    try:
        module = import_module("testcontainers.community.postgres")
    except ImportError:
        try:
            # Where testcontainers kept it before 4.14.
            module = import_module("testcontainers.postgres")
        except ImportError:
            raise RuntimeError(
                "a PostgreSQL in Docker needs testcontainers: pip install 'channel-layer-pg[testing]'"
            ) from None
    PostgresContainer = module.PostgresContainer
    with PostgresContainer(os.environ.get(IMAGE_VAR) or DEFAULT_IMAGE, driver=None) as container:
        yield container.get_connection_url()


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) across processes of this machine."""
    with open(path, "a+b") as handle:
        if sys.platform == "win32":
            import msvcrt

            # Retries for about 10 s, then raises: long enough for another worker's start-up.
            msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
            try:
                yield
            finally:
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
