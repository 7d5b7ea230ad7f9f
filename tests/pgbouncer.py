"""A real PgBouncer in transaction pooling mode, in front of the test database.

Debian's ``pgbouncer`` package (``apt-get install pgbouncer``). Each instance gets its own
directory and a free loopback port; it is stopped and its directory removed on exit.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url

# Server connections per database and user: few, so that many client connections really share
# them, and whatever one client leaves on a server connection meets another client there.
DEFAULT_POOL_SIZE = 2
_START_ATTEMPTS = 3
_START_TIMEOUT = 10.0


def find_pgbouncer() -> str | None:
    """The pgbouncer binary: on PATH, or where Debian puts it (/usr/sbin, not always on PATH)."""
    found = shutil.which("pgbouncer")
    if found is not None:
        return found
    return "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None


class PgBouncer:
    """A running PgBouncer: the URL to reach the database through it, and its admin console."""

    def __init__(self, port: int, target: URL) -> None:
        self.port = port
        self._target = target

    @property
    def database(self) -> str:
        """The database's name, at PgBouncer as at PostgreSQL."""
        return self._target.database or "postgres"

    @property
    def url(self) -> str:
        """The test database through PgBouncer: same user and database, PgBouncer's port."""
        return self._through_pgbouncer(self.database)

    def show(self, what: str) -> list[dict[str, Any]]:
        """``SHOW <what>`` on the admin console (POOLS, STATS, SERVERS...), one dict per row.

        The console speaks only the simple query protocol, which psycopg uses for a query
        without parameters; asyncpg always prepares, and the console refuses that.
        """
        import psycopg
        from psycopg.rows import dict_row

        console = self._through_pgbouncer("pgbouncer")
        with psycopg.connect(console, autocommit=True, row_factory=dict_row) as conn:
            return conn.execute(f"SHOW {what}").fetchall()  # type: ignore[arg-type]

    def _through_pgbouncer(self, database: str) -> str:
        url = self._target.set(drivername="postgresql", host="127.0.0.1", port=self.port, query={})
        return url.set(database=database).render_as_string(hide_password=False)


@contextmanager
def running_pgbouncer(
    database_url: str,
    *,
    pool_size: int = DEFAULT_POOL_SIZE,
    settings: dict[str, str] | None = None,
    connect_query: str | None = None,
) -> Iterator[PgBouncer]:
    """Start PgBouncer (pool_mode = transaction) in front of ``database_url``; stop it on exit.

    ``settings`` go into its [pgbouncer] section; ``connect_query`` runs on each new server
    connection, where a deployment sets what the layer cannot (synchronous_commit).
    """
    binary = find_pgbouncer()
    if binary is None:
        raise FileNotFoundError("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
    target = make_url(database_url)
    directory = Path(tempfile.mkdtemp(prefix="channel_layer_pg_pgbouncer_"))
    try:
        # Readable by the user PgBouncer runs as (see _run_as), who reads its files from here.
        directory.chmod(0o755)
        userlist = directory / "userlist.txt"
        userlist.write_text(f'"{target.username or "postgres"}" "{target.password or ""}"\n')
        userlist.chmod(0o644)
        settings = {
            "pool_mode": "transaction",
            "default_pool_size": str(pool_size),
            **(settings or {}),
        }
        for _ in range(_START_ATTEMPTS):
            port = _free_port()
            config = directory / "pgbouncer.ini"
            config.write_text(_config(target, port, userlist, settings, connect_query))
            config.chmod(0o644)
            with _started(binary, config, target, port) as bouncer:
                if bouncer is not None:
                    yield bouncer
                    return
        raise RuntimeError(f"pgbouncer lost its port to another process {_START_ATTEMPTS} times")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def _started(binary: str, config: Path, target: URL, port: int) -> Iterator[PgBouncer | None]:
    """PgBouncer running on ``port``, or None if another process took the port first."""
    log = config.with_name(f"pgbouncer-{port}.log")
    run_as = _run_as(target)
    command = [binary, *(("-u", run_as) if run_as is not None else ()), config.as_posix()]
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        if not _wait_until_listening(process, port):
            output_text = log.read_text(errors="replace")
            if "Address already in use" in output_text:
                yield None
                return
            raise RuntimeError(f"pgbouncer exited at start ({' '.join(command)}):\n{output_text}")
        yield PgBouncer(port, target)
    finally:
        # SIGTERM is PgBouncer 1.18's immediate shutdown: client connections are cut.
        process.terminate()
        try:
            process.wait(timeout=_START_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _config(
    target: URL, port: int, userlist: Path, settings: dict[str, str], connect_query: str | None
) -> str:
    database = target.database or "postgres"
    # The test database under its own name, at the test server (a unix socket directory for
    # the embedded server, which PgBouncer takes as host= too).
    entry = f"{database} = host={_socket_dir(target) or target.host or '127.0.0.1'} "
    entry += f"port={target.port or 5432} dbname={database}"
    if connect_query is not None:
        entry += " connect_query='" + connect_query.replace("'", "''") + "'"
    lines = [
        "[databases]",
        entry,
        "[pgbouncer]",
        "listen_addr = 127.0.0.1",
        f"listen_port = {port}",
        # No unix socket: the tests reach PgBouncer on loopback TCP only.
        "unix_socket_dir =",
        "auth_type = trust",
        f"auth_file = {userlist}",
        f"admin_users = {target.username or 'postgres'}",
        "max_client_conn = 1000",
        *(f"{name} = {value}" for name, value in settings.items()),
    ]
    return "\n".join(lines) + "\n"


def _socket_dir(target: URL) -> str | None:
    """The unix socket directory a URL names in ?host= (the embedded server's form), if any."""
    host = target.query.get("host")
    if isinstance(host, tuple):
        host = host[0]
    return str(host) if host else None


def _run_as(target: URL) -> str | None:
    """The user to run PgBouncer as when we are root (it refuses to run as root), else None.

    Over a unix socket that is the owner of the socket's directory (the embedded server's
    system user), who may connect there; over TCP any unprivileged user will do.
    """
    if os.geteuid() != 0:
        return None
    socket_dir = _socket_dir(target)
    if socket_dir is not None:
        return pwd.getpwuid(Path(socket_dir).stat().st_uid).pw_name
    return "nobody"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_until_listening(process: subprocess.Popen[bytes], port: int) -> bool:
    """Whether PgBouncer came up on ``port``; False if it exited instead."""
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"pgbouncer did not listen on 127.0.0.1:{port} within {_START_TIMEOUT:g} s")
