"""The Django app: ``manage.py migrate`` creates the layer's tables, ``check`` reports them.

Each test runs a throwaway Django project's manage.py against empty databases of the test
server, as a developer would type the commands.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from channel_layer_pg import PostgresChannelLayer, migrate
from channel_layer_pg.store.migrate import migration_head
from tests.conftest import connect, fetch, throwaway_database
from tests.django_project import DjangoProject, django_database, new_project
from tests.helpers import receive

pytest.importorskip("django")
pytest.importorskip("psycopg")

LAYER = "{'default': {'BACKEND': 'channel_layer_pg.PostgresChannelLayer', 'CONFIG': %s}}"
TABLES = ("channel_layer_pg_message", "channel_layer_pg_group_member", "channel_layer_pg_alembic_version")


@pytest.fixture
async def another_empty_database_url(database_url: str) -> AsyncIterator[str]:
    """A second empty database on the test server, for a layer apart from DATABASES."""
    async with throwaway_database(database_url, "clpg_other") as url:
        yield url


@pytest.fixture
def project(tmp_path: Path) -> DjangoProject:
    return new_project(tmp_path / "project")


async def layer_tables(url: str) -> list[str]:
    rows = await fetch(
        url,
        "SELECT table_name FROM information_schema.tables WHERE table_name = ANY($1::text[]) ORDER BY 1",
        list(TABLES),
    )
    return [row["table_name"] for row in rows]


async def test_migrate_creates_the_layer_schema_in_an_empty_database(
    project: DjangoProject, empty_database_url: str
) -> None:
    # sslpassword matters only with a client certificate; here it shows it is never printed.
    databases = {"default": django_database(empty_database_url, sslpassword="key-secret")}
    project.write_settings(databases, LAYER % "{**DATABASES['default'], 'prefix': 'app'}")

    migrated = project.manage("migrate")

    assert migrated.returncode == 0, migrated.output
    assert "key-secret" not in migrated.output
    assert "Migrated channel layer 'default' schema at" in migrated.output
    assert f"from nothing to {migration_head()}" in migrated.output
    assert await layer_tables(empty_database_url) == sorted(TABLES)
    # The layer, built from the same settings, works on what migrate made.
    async with PostgresChannelLayer(**{**databases["default"], "prefix": "app"}) as layer:
        await layer.send("django.app", {"type": "after.migrate"})
        assert await receive(layer, "django.app") == {"type": "after.migrate"}


async def test_check_with_the_database_reports_a_missing_schema_and_the_command(
    project: DjangoProject, empty_database_url: str
) -> None:
    project.write_settings({"default": django_database(empty_database_url)}, LAYER % "DATABASES['default']")

    before = project.manage("check", "--database", "default")
    project.manage("migrate")
    after = project.manage("check", "--database", "default")

    assert before.returncode == 0, before.output  # a warning: migrate must still run
    assert "channel_layer_pg.W001" in before.output
    assert "the layer's tables are missing" in before.output
    assert "python manage.py migrate --database default" in before.output
    assert "channel_layer_pg" not in after.output, after.output


async def test_check_without_a_database_does_not_connect(project: DjangoProject) -> None:
    # A database nobody listens on: a check that connected would warn about it (W004).
    unreachable = {"ENGINE": "django.db.backends.postgresql", "NAME": "app", "HOST": "127.0.0.1", "PORT": "9"}
    project.write_settings({"default": unreachable}, LAYER % "DATABASES['default']")

    checked = project.manage("check")

    assert checked.returncode == 0, checked.output
    assert "System check identified no issues" in checked.output


async def test_check_reports_a_schema_behind_head(project: DjangoProject, empty_database_url: str) -> None:
    migrate(empty_database_url, "0001")
    project.write_settings({"default": django_database(empty_database_url)}, LAYER % "DATABASES['default']")

    checked = project.manage("check", "--database", "default")
    project.manage("migrate")

    assert "channel_layer_pg.W002" in checked.output
    assert "schema at revision 0001, behind" in checked.output
    assert project.manage("check", "--database", "default").output.count("channel_layer_pg") == 0


async def test_check_names_a_bad_layer_option_without_a_database(project: DjangoProject) -> None:
    config = "{'NAME': 'app', 'OPTIONS': {'sslmode': 'verify-everything'}}"
    project.write_settings({}, LAYER % config)

    checked = project.manage("check")

    assert checked.returncode != 0
    assert "channel_layer_pg.E001" in checked.output
    assert "OPTIONS['sslmode'] must be one of disable, allow, prefer, require" in checked.output


async def test_migrate_leaves_a_layer_on_a_database_of_its_own_to_its_command(
    project: DjangoProject, empty_database_url: str, another_empty_database_url: str
) -> None:
    layer_config = django_database(another_empty_database_url)
    project.write_settings({"default": django_database(empty_database_url)}, LAYER % repr(layer_config))

    migrated = project.manage("migrate")
    assert migrated.returncode == 0, migrated.output
    assert await layer_tables(another_empty_database_url) == []
    assert await layer_tables(empty_database_url) == []

    command = project.manage("migrate_channel_layer")
    assert command.returncode == 0, command.output
    assert await layer_tables(another_empty_database_url) == sorted(TABLES)


async def test_migrate_database_other_migrates_only_the_layer_on_that_alias(
    project: DjangoProject, empty_database_url: str, another_empty_database_url: str
) -> None:
    databases = {
        "default": django_database(empty_database_url),
        "other": django_database(another_empty_database_url),
    }
    project.write_settings(databases, LAYER % "DATABASES['other']")

    assert project.manage("migrate").returncode == 0
    assert await layer_tables(another_empty_database_url) == []

    migrated = project.manage("migrate", "--database", "other")
    assert migrated.returncode == 0, migrated.output
    assert await layer_tables(another_empty_database_url) == sorted(TABLES)
    assert await layer_tables(empty_database_url) == []


async def test_check_reports_a_schema_newer_than_this_release(
    project: DjangoProject, empty_database_url: str
) -> None:
    migrate(empty_database_url)
    conn = await connect(empty_database_url)
    try:
        await conn.execute("UPDATE channel_layer_pg_alembic_version SET version_num = '9999'")
    finally:
        await conn.close()
    project.write_settings({"default": django_database(empty_database_url)}, LAYER % "DATABASES['default']")

    checked = project.manage("check", "--database", "default")

    assert "channel_layer_pg.W003" in checked.output
    assert "schema at revision 9999, which this channel_layer_pg does not know" in checked.output


async def test_check_with_the_database_reports_one_it_cannot_reach(project: DjangoProject) -> None:
    # Port 9 (discard) has no PostgreSQL: the connection is refused at once.
    unreachable = {"ENGINE": "django.db.backends.postgresql", "NAME": "app", "HOST": "127.0.0.1", "PORT": "9"}
    project.write_settings({"default": unreachable}, LAYER % "DATABASES['default']")

    checked = project.manage("check", "--database", "default")

    assert "channel_layer_pg.W004" in checked.output
    assert "cannot read its schema revision" in checked.output


async def test_migrate_puts_the_tables_in_the_layer_s_schema_option(
    project: DjangoProject, empty_database_url: str
) -> None:
    project.write_settings(
        {"default": django_database(empty_database_url)}, LAYER % "{**DATABASES['default'], 'schema': 'chat'}"
    )

    migrated = project.manage("migrate")
    checked = project.manage("check", "--database", "default")

    assert migrated.returncode == 0, migrated.output
    assert "(schema chat)" in migrated.output
    assert "channel_layer_pg" not in checked.output, checked.output
    schemas = await fetch(
        empty_database_url,
        "SELECT DISTINCT table_schema FROM information_schema.tables WHERE table_name = ANY($1::text[])",
        list(TABLES),
    )
    assert [row["table_schema"] for row in schemas] == ["chat"]


async def test_migrate_creates_the_schema_on_each_shard_of_a_sharded_layer(
    project: DjangoProject, empty_database_url: str, another_empty_database_url: str
) -> None:
    databases = {
        "default": django_database(empty_database_url),
        "shard2": django_database(another_empty_database_url),
    }
    sharded = "{'default': {'BACKEND': 'channel_layer_pg.ShardedChannelLayer', 'CONFIG': %s}}"
    project.write_settings(databases, sharded % "{'shards': ['default', 'shard2'], 'prefix': 'app'}")

    before = project.manage("check", "--database", "default", "--database", "shard2")
    migrated = project.manage("migrate_channel_layer")

    assert "shard 'shard2'" in before.output and "channel_layer_pg.W001" in before.output, before.output
    assert migrated.returncode == 0, migrated.output
    assert await layer_tables(empty_database_url) == sorted(TABLES)
    assert await layer_tables(another_empty_database_url) == sorted(TABLES)
    assert "Migrated channel layer 'default' schema at shard 'shard2'" in migrated.output
