"""The package's shape: modules import each other one way only, and ship no framework example."""

from __future__ import annotations

import ast
from pathlib import Path

import channel_layer_pg

PACKAGE = Path(channel_layer_pg.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The package modules ``path`` imports when it is imported (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    this = _module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in tree.body:  # module level only: imports inside functions run on demand
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names = [f"{target}.{alias.name}" for alias in node.names]
            found.update(name for name in [target, *names] if name in MODULES)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in MODULES)
    found.discard(this)
    return found


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def test_no_module_imports_itself_back_through_others() -> None:
    graph = {name: _imports(path) for name, path in MODULES.items()}
    # A package's __init__ re-exports its submodules; a submodule importing a sibling through
    # the package is that sibling's import, not a cycle through __init__.
    for name in graph:
        graph[name] = {
            target
            for target in graph[name]
            if not (MODULES[target].name == "__init__.py" and name.startswith(target))
        }
    cycles = []

    def visit(name: str, trail: list[str]) -> None:
        for target in graph[name]:
            if target in trail:
                cycles.append(" -> ".join([*trail[trail.index(target) :], target]))
            elif len(trail) < 30:
                visit(target, [*trail, target])

    for start in graph:
        visit(start, [start])
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles)))


def test_the_layer_does_not_import_the_command_line_or_the_demos() -> None:
    seen: set[str] = set()
    pending = ["channel_layer_pg"]
    while pending:
        name = pending.pop()
        if name not in seen:
            seen.add(name)
            pending.extend(_imports(MODULES[name]))
    assert not [name for name in seen if name.startswith("channel_layer_pg.cli")]


def test_the_package_ships_no_framework_example() -> None:
    assert not (PACKAGE / "examples").exists()
    assert (PACKAGE.parent / "examples" / "django_chat").is_dir()  # they live beside it, in the checkout
