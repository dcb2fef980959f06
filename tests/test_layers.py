"""The layers import one way: transport -> domain -> store (the design brief's rule).

Every module under src/depot_api is parsed, not imported, so that a rule holds for an import
anywhere in a module (inside a function, under TYPE_CHECKING), and a failure names the module,
the line and what it imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import depot_api

PACKAGE = Path(depot_api.__file__).parent

# Each layer, by its package, and the packages it must not import.
RULES = {
    "depot_api.domain": ("depot_api.api", "depot_api.gen"),
    "depot_api.store": ("depot_api.domain", "depot_api.api"),
    "depot_api.api": ("depot_api.store",),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, package: str) -> list[tuple[int, str]]:
    """What source imports, with the line of each import: a module, or for `from m import n`
    the name m.n (n may be a module or a name in m). package resolves relative imports."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
    return found


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


def breaches(layer: str, forbidden: tuple[str, ...]) -> list[str]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        module = module_name(path)
        if not within(module, layer):
            continue
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for line, imported in imports(path.read_text(), package):
            if any(within(imported, other) for other in forbidden):
                found.add(f"{module} (line {line}) imports {imported}")
    return sorted(found)


@pytest.mark.parametrize(("layer", "forbidden"), RULES.items(), ids=list(RULES))
def test_a_layer_imports_only_the_layers_below_it(layer: str, forbidden: tuple[str, ...]) -> None:
    found = breaches(layer, forbidden)
    assert not found, f"{layer} must not import {' or '.join(forbidden)}:\n" + "\n".join(found)


def test_every_kind_of_import_is_seen() -> None:
    """A check that saw no imports would pass on anything."""
    source = (
        "import depot_api.store.errors\n"
        "from depot_api.store import errors\n"
        "from ..store.sql import SqlStore\n"
        "def f():\n"
        "    from depot_api.domain.errors import NotFound\n"
    )
    assert imports(source, "depot_api.api") == [
        (1, "depot_api.store.errors"),
        (2, "depot_api.store.errors"),
        (3, "depot_api.store.sql.SqlStore"),
        (5, "depot_api.domain.errors.NotFound"),
    ]


def test_each_layer_has_modules_to_check() -> None:
    modules = {module_name(path) for path in PACKAGE.rglob("*.py")}
    for layer in RULES:
        assert any(within(m, layer) and m != layer for m in modules), layer
