"""Django integration: imported only by Django projects, it needs Django and Channels.

The app: add ``"channel_layer_pg.contrib.django"`` to INSTALLED_APPS (its label is
``channel_layer_pg``), and ``manage.py migrate`` creates the layer's tables while ``check``
reports them. The metrics view (metrics.py) needs no app.

Migrating. A post_migrate handler, not a command of its own or an override of ``migrate``:
post_migrate is Django's hook for work that follows migrations (contenttypes and auth use
it), so it runs on every way a project migrates: ``manage.py migrate``, ``migrate --database
other``, ``call_command("migrate")``, the test runner creating test databases; an override
of ``migrate`` would fight any other app that overrides it. The handler runs once per
``migrate`` (Django sends the signal once per app, and this app is one), also after
``flush``; it reads the schema's revision first, so that it runs Alembic and says so only
when there is something to do. A repeat with the tables at head costs about 20 ms on a local
server (a connection and one query), as much as an Alembic run with nothing to do.

Which database. post_migrate names the DATABASES alias being migrated; the layer's database
is whatever its CHANNEL_LAYERS CONFIG names (Django keys, ``url``, or CHANNEL_LAYER_PG_URL).
The handler migrates each layer whose database is the alias's own (same host, port and
database name), and leaves every other alone. So ``migrate --database other`` touches only
layers on ``other``, and the test runner, which points an alias at ``test_<NAME>`` before it
migrates, never touches the database the layer uses outside tests. A layer whose database is
no DATABASES alias is migrated by ``manage.py migrate_channel_layer`` (or
``channel-layer-pg migrate``). Database routers are asked (``allow_migrate(alias,
"channel_layer_pg")``) as for any app.

Checks. Two, with Django's split between checks that read settings and checks that connect:
``channel_layer_pg.E001`` checks every CHANNEL_LAYERS entry's CONFIG as the layer would (no
connection), so runserver and ``check`` report a bad option before the first message. The
schema check connects, so it is tagged ``database`` and, like Django's own database checks,
runs only when databases are named: ``manage.py check --database default``, before
``migrate`` migrates (which then fixes what it reports), and in the test runner for the test
databases. Running it on every ``check`` would make commands that need no database
(collectstatic in an image build) wait on one. It reports a missing schema (W001), one behind
head (W002), one newer than this package knows (W003), and a database it cannot reach (W004),
each with the command that fixes it.
"""
