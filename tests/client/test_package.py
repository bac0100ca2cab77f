"""The client installs apart from the server: it imports the standard library and httpx only
(never ``app``), declares httpx as its one dependency, and ships its type information."""

from __future__ import annotations

import ast
import sys
import tomllib

import herald_client

from tests.support.server import REPO_ROOT

CLIENT = REPO_ROOT / "clients" / "python"
ALLOWED = set(sys.stdlib_module_names) | {"httpx", "__future__"}


def imported_modules() -> dict[str, set[str]]:
    """Every absolute module each file of the package imports, at any depth (lazy imports and
    imports under TYPE_CHECKING count)."""
    found: dict[str, set[str]] = {}
    for path in sorted((CLIENT / "herald_client").glob("**/*.py")):
        names = found.setdefault(str(path.relative_to(CLIENT)), set())
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module is not None
                names.add(node.module)
    return found


def test_the_client_imports_the_standard_library_and_httpx_only() -> None:
    modules = imported_modules()
    assert len(modules) >= 8, "the package's files were not found"
    outside = {
        path: sorted(name for name in names if name.partition(".")[0] not in ALLOWED)
        for path, names in modules.items()
    }
    assert not any(outside.values()), outside


def test_the_check_would_catch_an_import_of_the_server() -> None:
    tree = ast.parse("import json\nfrom app.wire.event import Event\n")
    names = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert {name for name in names if name and name.partition(".")[0] not in ALLOWED} == {
        "app.wire.event"
    }


def test_the_distribution_depends_on_httpx_alone_and_ships_its_types() -> None:
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "herald-client"
    assert [dependency.split(">")[0] for dependency in project["dependencies"]] == ["httpx"]
    assert project["requires-python"] == ">=3.10"
    assert project["version"] == herald_client.__version__
    assert (CLIENT / "herald_client" / "py.typed").exists()


def test_everything_exported_exists() -> None:
    assert all(hasattr(herald_client, name) for name in herald_client.__all__)
