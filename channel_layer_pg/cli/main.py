"""The ``channel-layer-pg`` command, also run as ``python -m channel_layer_pg``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys

from alembic.util import CommandError
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ..config import URL_ENV_VAR
from ..database_url import safe_url
from ..errors import ChannelLayerError
from ..layer import PostgresChannelLayer
from ..store.migrate import migrate
from .demo import DemoError

PROG = "channel-layer-pg"

# Failures the user can act on from their message alone get one line; any other exception is
# a bug and keeps its traceback.
_USER_ERRORS = (
    ChannelLayerError,
    DemoError,
    SQLAlchemyError,
    CommandError,
    OSError,
    ValueError,
    asyncio.TimeoutError,
)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "demo" and not args.web:
        web_only = [option for option in ("workers", "port", "host") if getattr(args, option) is not None]
        if web_only:
            parser.error(f"--{web_only[0]} applies to the web demo only: add --web")
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)-5.5s [%(name)s] %(message)s", stream=sys.stderr
    )
    if args.command == "migrate":
        # The "Running upgrade ..." lines the alembic command shows; in the demo they are noise.
        logging.getLogger("alembic").setLevel(logging.INFO)
    try:
        if args.command == "migrate":
            return _migrate(args.url or [], args.revision, args.schema)
        if args.command == "demo" and args.web:
            from .demo.web.serve import run_web_demo

            return run_web_demo(
                args.url, host=args.host or "127.0.0.1", port=args.port or 8000, workers=args.workers or 2
            )
        if args.command == "demo":
            from .demo.terminal import run_demo

            return run_demo(args.url, args.messages)
        if args.command == "stats":
            urls = _urls(args.url or [], "stats")
            return asyncio.run(_stats(urls, args)) if urls else 2
        from .demo.terminal import run_worker

        url = _url(args.url, args.command)
        return run_worker(url, args.prefix) if url else 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except _USER_ERRORS as exc:
        print(f"{PROG} {args.command}: {_one_line(exc)}", file=sys.stderr)
        return 1


def _migrate(given: list[str], revision: str, schema: str | None) -> int:
    urls = _urls(given, "migrate")
    if not urls:
        return 2
    # Each database on its own (the shards of a sharded layer): one that fails does not keep
    # the others behind, and the exit status says that one did.
    failed = 0
    for url in urls:
        safe = safe_url(url)
        try:
            migrate(url, revision, schema=schema)
        except (TimeoutError, OSError, SQLAlchemyError) as exc:
            # The driver's message alone ("Connect call failed") does not say which database.
            print(f"{PROG} migrate: cannot migrate {safe}: {_one_line(exc)}", file=sys.stderr)
            failed += 1
            continue
        print(f"migrated {safe}{f' schema {schema}' if schema else ''} to {revision}")
    return 1 if failed else 0


async def _stats(urls: list[str], args: argparse.Namespace) -> int:
    found = []
    for url in urls:
        layer = PostgresChannelLayer(url=url, prefix=args.prefix, expiry=args.expiry, schema=args.schema)
        try:
            found.append((safe_url(url), await layer.stats(limit=args.limit)))
        finally:
            await layer.close()
    if args.json:
        documents = [{"database": database, **stats.to_dict()} for database, stats in found]
        # One database: its object, as ever; several (shards): a list of them, in --url order.
        print(json.dumps(documents[0] if len(documents) == 1 else documents, indent=2))
        return 0
    for n, (database, stats) in enumerate(found):
        if n:
            print()
        print(f"database {database}")
        print(stats.format())
    return 0


def _urls(given: list[str], command: str) -> list[str]:
    """The --url values, or the environment's URL; [] (after saying so) if there is none."""
    if given:
        return given
    url = _url(None, command)
    return [url] if url else []


def _url(given: str | None, command: str) -> str | None:
    url = given or os.environ.get(URL_ENV_VAR)
    if not url:
        print(
            f"{PROG} {command}: no database URL: pass --url postgresql://user:password@host:port/db "
            f"or set {URL_ENV_VAR}",
            file=sys.stderr,
        )
    return url


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        # SQLAlchemy's own text wraps the driver's in the SQL and a documentation link.
        exc = exc.orig
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="A PostgreSQL channel layer for ASGI.")
    # The metavar lists the public commands only, so demo-worker stays out of --help.
    commands = parser.add_subparsers(dest="command", required=True, metavar="{migrate,demo,stats}")

    migrate_parser = commands.add_parser(
        "migrate", help="create or upgrade the layer's tables", description="Run the layer's migrations."
    )
    migrate_parser.add_argument(
        "--url",
        action="append",
        help=f"the database; repeat it for each shard of a sharded layer (default: ${URL_ENV_VAR})",
    )
    migrate_parser.add_argument("--revision", default="head", help="target revision (default: head)")
    migrate_parser.add_argument(
        "--schema", help="put the tables in this PostgreSQL schema, created if missing (default: search_path)"
    )

    demo_parser = commands.add_parser(
        "demo",
        help="watch processes talk through PostgreSQL, in the terminal or (--web) in a browser",
        description="Request/reply and a group send between this process and a worker process; "
        "with --web, a chat page served by several worker processes.",
    )
    demo_parser.add_argument("--url", help="the database (default: a throwaway embedded PostgreSQL)")
    demo_parser.add_argument(
        "--messages", type=_positive, default=200, metavar="N", help="how many pings to time (default: 200)"
    )
    demo_parser.add_argument(
        "--web", action="store_true", help="serve a chat page instead (needs the web extra)"
    )
    demo_parser.add_argument(
        "--workers", type=_positive, metavar="N", help="with --web: uvicorn worker processes (default: 2)"
    )
    demo_parser.add_argument("--port", type=_port, help="with --web: the port to serve on (default: 8000)")
    demo_parser.add_argument("--host", help="with --web: the address to serve on (default: 127.0.0.1)")

    stats_parser = commands.add_parser(
        "stats",
        help="what the layer holds: queued messages, groups, listeners",
        description="Queued messages per channel and per process, expired rows awaiting cleanup, "
        "groups and their sizes, and the listening connections, under one prefix.",
    )
    stats_parser.add_argument(
        "--url",
        action="append",
        help=f"the database; repeat it for each shard of a sharded layer (default: ${URL_ENV_VAR})",
    )
    stats_parser.add_argument("--prefix", default="asgi", help="the layers' prefix (default: asgi)")
    stats_parser.add_argument("--schema", help="the layers' schema option (default: search_path)")
    stats_parser.add_argument(
        "--limit", type=_positive, default=10, metavar="N", help="list the N largest of each (default: 10)"
    )
    stats_parser.add_argument(
        "--expiry",
        type=_positive,
        default=60,
        metavar="SECONDS",
        help="the layers' expiry, from which message ages are worked out (default: 60)",
    )
    stats_parser.add_argument("--json", action="store_true", help="print JSON instead of tables")

    # No help= at all: argparse would list a SUPPRESSed help as "==SUPPRESS==".
    worker_parser = commands.add_parser("demo-worker")
    worker_parser.add_argument("--url", help=f"the database (default: ${URL_ENV_VAR})")
    worker_parser.add_argument("--prefix", required=True)
    return parser


def _port(text: str) -> int:
    port = _positive(text)
    if port > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, not {port}")
    return port


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value
