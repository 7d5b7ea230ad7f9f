"""The public surface is deliberate: changing it should take a change here too."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import channel_layer_pg
from channel_layer_pg import PostgresChannelLayer


def test_public_names_are_pinned() -> None:
    assert sorted(channel_layer_pg.__all__) == [
        "ChannelFull",
        "ChannelLayerError",
        "DatabaseError",
        "DatabaseFullError",
        "DatabaseReadOnlyError",
        "DatabaseUnreachableError",
        "DecryptionError",
        "LayerClosedError",
        "LayerStats",
        "MessageTooLarge",
        "PermissionDeniedError",
        "PostgresChannelLayer",
        "SchemaMissingError",
        "SchemaOutdatedError",
        "ShardedChannelLayer",
        "StatementRejectedError",
        "StatementTimeoutError",
        "TransactionConflictError",
        "UndecodableMessageError",
        "migrate",
    ]


def test_every_public_name_resolves_in_a_fresh_interpreter() -> None:
    # The package imports its public names on first use; each one listed must import.
    names = ", ".join(channel_layer_pg.__all__)
    subprocess.run(
        [sys.executable, "-c", f"from channel_layer_pg import {names}"],
        env={**os.environ, "PYTHONPATH": str(Path(channel_layer_pg.__file__).resolve().parent.parent)},
        check=True,
        timeout=60,
    )


def test_the_layer_declares_the_spec_extensions() -> None:
    assert PostgresChannelLayer.extensions == ["groups", "flush"]


def test_no_test_patches_the_library_s_insides() -> None:
    # A test that patches a private name, or any name of the package, pins how the code is
    # written rather than what it does, and breaks with the next refactor. Failures and races
    # are forced through channel_layer_pg.faults; timings through options or the fault hooks.
    offences = [
        f"{path.name}:{line}: {source}"
        for path in sorted(Path(__file__).parent.glob("*.py"))
        for line, source in _patches_of_the_library(path.read_text())
    ]
    assert offences == []


def test_the_patch_check_sees_each_form_of_patching() -> None:
    # {p} stands for a private name's leading underscore, so that this sample of what the check
    # must catch is not itself caught by text searches for private patching.
    source = """
from channel_layer_pg.store import claims
from channel_layer_pg.store.claims import QueueReader
monkeypatch.setattr(QueueReader, "{p}dispatch", f)
monkeypatch.setattr(claims, "POLL_INTERVAL", 0.5)
monkeypatch.setattr("channel_layer_pg.store.claims.POLL_INTERVAL", 0.5)
setattr(thing, "{p}private", 1)
patch.object(Anything, "{p}claim")
mock.patch("somewhere.{p}hidden")
monkeypatch.setattr(socket, "getaddrinfo", f)
monkeypatch.setenv("X", "1")
""".replace("{p}", "_")
    assert [line for line, _ in _patches_of_the_library(source)] == [4, 5, 6, 7, 8, 9]


def _patches_of_the_library(source: str) -> list[tuple[int, str]]:
    """Calls in ``source`` that patch a private name or a name of channel_layer_pg."""
    tree = ast.parse(source)
    ours: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("channel_layer_pg"):
            ours.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            ours.update(
                alias.asname or alias.name.split(".")[0]
                for alias in node.names
                if alias.name.startswith("channel_layer_pg")
            )
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and node.args and _is_patch(node.func)):
            continue
        target = node.args[0]
        names = [
            arg.value for arg in node.args[:2] if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
        ]
        if (
            any(part.startswith("_") for name in names for part in name.split("."))
            or any(name.startswith("channel_layer_pg") for name in names)
            or (isinstance(target, ast.Name) and target.id in ours)
        ):
            found.append((node.lineno, ast.unparse(node)))
    return found


def _is_patch(func: ast.expr) -> bool:
    """setattr(), monkeypatch.setattr(), patch(), mock.patch(), patch.object() and the like."""
    if isinstance(func, ast.Name):
        return func.id in ("setattr", "patch")
    if isinstance(func, ast.Attribute):
        if func.attr == "object":
            return _is_patch(func.value)
        return func.attr in ("setattr", "patch")
    return False
