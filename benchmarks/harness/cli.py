"""Command-line pieces every subcommand shares: --url and --label, list options, the header."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable, Iterable

from .db import header
from .layers import DEFAULT_URL


def add_url(parser: argparse.ArgumentParser, help: str = "PostgreSQL with the schema migrated") -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("CHANNEL_LAYER_PG_URL", DEFAULT_URL),
        help=f"{help} (default: $CHANNEL_LAYER_PG_URL or {DEFAULT_URL})",
    )
    parser.add_argument(
        "--label", help="a name for this run, printed in the header beside the imported checkout"
    )


def names(choices: Iterable[str]) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of ``choices``."""
    allowed = list(choices)

    def parse(text: str) -> list[str]:
        picked = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in picked if name not in allowed]
        if unknown or not picked:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown) or text!r}; choose from {', '.join(allowed)}"
            )
        return picked

    return parse


async def print_header(url: str, label: str | None, **options: object) -> list[str]:
    """Print (and return) the run's header: the command, the label, then db.header()."""
    lines = [f"command: {shlex.join(sys.orig_argv)}", *([f"label: {label}"] if label else [])]
    lines += await header(url, **options)  # type: ignore[arg-type]
    for line in lines:
        print(line, flush=True)
    return lines
