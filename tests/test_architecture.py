"""The package's shape, read from its source: layers, import cycles, the Django-free daemon.

docs/architecture.md describes the layers; these tests keep the code to it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "django_statemodes"

# What the state-server daemon runs: none of it may import Django or asgiref, so the daemon runs
# from a plain Python install (DESIGN: protocol, server, snapshot and the item types it stores).
DAEMON_MODULES = [
    "django_statemodes.items",
    "django_statemodes.memory",
    "django_statemodes.stateserver.addresses",
    "django_statemodes.stateserver.appendonly",
    "django_statemodes.stateserver.errors",
    "django_statemodes.stateserver.options",
    "django_statemodes.stateserver.protocol",
    "django_statemodes.stateserver.server",
    "django_statemodes.stateserver.snapshot",
    "django_statemodes.stateserver.tls",
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


MODULES = source_modules()


def imported_names(name: str, path: Path) -> Iterator[str]:
    """Yield every module ``name`` imports, anywhere in the file (functions, TYPE_CHECKING)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            submodules = [
                f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES
            ]
            # ``from package import module`` imports the module; the package is its parent,
            # loaded first whatever the importer, so it is no edge of its own.
            yield from submodules or [target]


def package_edges() -> dict[str, set[str]]:
    """Return each module's imports of other modules of the package."""
    return {
        name: {target for target in imported_names(name, path) if target in MODULES} - {name}
        for name, path in MODULES.items()
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Return the strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_inside_the_package() -> None:
    edges = package_edges()
    assert "django_statemodes.middleware" in edges
    assert cycles(edges) == []


def test_the_core_names_no_specific_provider() -> None:
    edges = package_edges()
    core = [name for name in edges if name.startswith("django_statemodes.core")]
    assert len(core) >= 5
    for name in core:
        providers = {t for t in edges[name] if t.startswith("django_statemodes.providers")}
        assert providers <= {"django_statemodes.providers", "django_statemodes.providers.base"}, (
            name
        )


def test_backends_are_thin_bindings() -> None:
    for name, path in MODULES.items():
        if not name.startswith("django_statemodes.backends.") or name.endswith("__init__"):
            continue
        tree = ast.parse(path.read_text())
        classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
        assert classes == ["SessionStore"], name
        store = next(node for node in tree.body if isinstance(node, ast.ClassDef))
        methods = [node.name for node in store.body if isinstance(node, ast.FunctionDef)]
        if name != "django_statemodes.backends.off":  # Off has no store: it refuses every use
            assert methods == ["create_provider"], name
        drivers = {"psycopg", "redis", "sqlite3", "socket", "asyncio", "django_redis"}
        assert not drivers & {n.split(".")[0] for n in imported_names(name, path)}, name


def test_every_store_is_a_provider() -> None:
    from django_statemodes.providers.base import SessionStateProvider
    from django_statemodes.providers.inproc import InProcProvider
    from django_statemodes.providers.redis import RedisProvider
    from django_statemodes.providers.sql.postgresql import PostgresStateProvider
    from django_statemodes.providers.sql.sqlite import SQLiteStateProvider
    from django_statemodes.providers.stateserver import StateServerProvider

    for provider in (
        InProcProvider,
        StateServerProvider,
        PostgresStateProvider,
        SQLiteStateProvider,
        RedisProvider,
    ):
        assert issubclass(provider, SessionStateProvider)
        assert provider.__module__.startswith("django_statemodes.providers.")


@pytest.mark.parametrize("name", DAEMON_MODULES)
def test_the_daemon_side_imports_neither_django_nor_asgiref_in_its_source(name: str) -> None:
    seen: set[str] = set()
    todo = [name]
    while todo:  # this module and every package module it imports, transitively
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for target in imported_names(current, MODULES[current]):
            assert target.split(".")[0] not in {"django", "asgiref"}, (current, target)
            if target in MODULES:
                todo.append(target)


@pytest.mark.parametrize(
    "module",
    # __main__ is the console script; only its --stats option imports the (Django-side) client.
    ["django_statemodes.stateserver.server", "django_statemodes.stateserver.__main__"],
)
def test_importing_the_state_server_loads_no_django_and_no_asgiref(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    loaded = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()]
    assert module in loaded  # the report was read right
    assert [m for m in loaded if m.split(".")[0] in {"django", "asgiref"}] == []


def is_property(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Say whether ``function`` is a property or its setter: assigning one is no rebinding."""
    for decorator in function.decorator_list:
        name = decorator.attr if isinstance(decorator, ast.Attribute) else None
        if isinstance(decorator, ast.Name):
            name = decorator.id
        if name in {"property", "cached_property", "setter"}:
            return True
    return False


def methods_of(tree: ast.Module) -> set[str]:
    return {
        item.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        for item in node.body
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not is_property(item)
    }


def class_methods(node: ast.ClassDef) -> set[str]:
    return {
        item.name
        for item in node.body
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and not is_property(item)
    }


def rebound(node: ast.AST, own: set[str], foreign: set[str]) -> Iterator[tuple[str, int]]:
    """Yield (name, line) of each method of ``own`` (on self) or ``foreign`` (elsewhere) rebound."""
    for child in ast.walk(node):
        if isinstance(child, ast.Call) and getattr(child.func, "id", None) == "setattr":
            yield "setattr()", child.lineno
        for target in child.targets if isinstance(child, ast.Assign) else []:
            if not isinstance(target, ast.Attribute):
                continue
            on_self = isinstance(target.value, ast.Name) and target.value.id in {"self", "cls"}
            if target.attr in (own if on_self else foreign):
                yield target.attr, target.lineno


def test_no_method_is_replaced_at_runtime() -> None:
    # A method rebound on an instance (``self.process_view = self._aprocess_view``) or on
    # another object (``middleware.get_session_key = ...``) makes the code read unlike it runs.
    middleware_methods = methods_of(ast.parse((PACKAGE / "middleware.py").read_text()))
    assert "process_request" in middleware_methods
    assert list(rebound(ast.parse("self.f = g"), {"f"}, set())) == [("f", 1)]
    found = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                found += [(name, *hit) for hit in rebound(node, class_methods(node), set())]
        found += [(name, *hit) for hit in rebound(tree, set(), middleware_methods)]
    assert found == []


def test_the_architecture_page_names_every_module() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    unnamed = [
        name
        for name, path in MODULES.items()
        if path.name != "__init__.py"
        and "management" not in path.parts
        and f"{path.stem}.py" not in page
        and f"{path.stem}," not in page
        and f" {path.stem} " not in page
        and f"/{path.stem}" not in page
    ]
    assert unnamed == []
