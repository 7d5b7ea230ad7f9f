"""A throwaway Django project on disk, run with ``python manage.py ...`` as its developers do.

A subprocess, not settings.configure(): Django's settings and app registry are set once per
process, and ``migrate`` and ``check`` are exercised as the commands a developer types.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
# A cold Django start, a migrate and an Alembic run take a few seconds on a busy machine.
COMMAND_TIMEOUT = 120

MANAGE = """\
import sys
from django.core.management import execute_from_command_line
execute_from_command_line(sys.argv)
"""


def django_database(url: str, **options: Any) -> dict[str, Any]:
    """A DATABASES entry for ``url``, as a Django project writes it; ``options`` its OPTIONS."""
    parsed = make_url(url)
    entry: dict[str, Any] = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parsed.database,
        "USER": parsed.username or "",
        "PASSWORD": parsed.password or "",
        # The embedded server listens on a unix socket; Django writes its directory as HOST.
        "HOST": parsed.query.get("host") or parsed.host or "",
        "PORT": str(parsed.port or ""),
        "CONN_MAX_AGE": 60,
    }
    if options:
        entry["OPTIONS"] = options
    return entry


@dataclass
class Run:
    returncode: int
    output: str  # stdout and stderr together, in order


@dataclass
class DjangoProject:
    directory: Path

    def write_settings(
        self,
        databases: dict[str, dict[str, Any]],
        channel_layers: str,
        *,
        installed_apps: tuple[str, ...] = ("django.contrib.contenttypes", "channel_layer_pg.contrib.django"),
    ) -> None:
        """settings.py; ``channel_layers`` is Python source, so it can spread DATABASES."""
        (self.directory / "settings.py").write_text(
            f"SECRET_KEY = 'not secret'\n"
            f"INSTALLED_APPS = {list(installed_apps)!r}\n"
            f"DATABASES = {databases!r}\n"
            f"CHANNEL_LAYERS = {channel_layers}\n"
            "USE_TZ = True\n"
        )

    def manage(self, *args: str) -> Run:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "settings",
            "PYTHONPATH": os.pathsep.join([str(self.directory), str(REPO)]),
        }
        env.pop("CHANNEL_LAYER_PG_URL", None)
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=self.directory,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        return Run(done.returncode, done.stdout)


def new_project(directory: Path) -> DjangoProject:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "manage.py").write_text(MANAGE)
    return DjangoProject(directory)
