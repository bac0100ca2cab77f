"""Lint and type checks run with the suite, so CI enforces them like any test."""

from __future__ import annotations

import subprocess
import sys

from tests.support.server import REPO_ROOT


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )


def run_python(code: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ruff_is_clean() -> None:
    lint = run("ruff", "check", ".")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    formatting = run("ruff", "format", "--check", ".")
    assert formatting.returncode == 0, formatting.stdout + formatting.stderr


def test_mypy_strict_is_clean() -> None:
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_publisher_client_type_checks_on_its_oldest_python() -> None:
    # herald_client supports Python 3.10 (clients/python/pyproject.toml), the server 3.11: the
    # run above checks it as 3.11, this one as 3.10, as a 3.10 user installs it.
    result = run("mypy", "--strict", "--python-version", "3.10", "clients/python/herald_client")
    assert result.returncode == 0, result.stdout + result.stderr


def test_imports_keep_the_layers_and_close_no_cycle() -> None:
    # `lint-imports` with the contracts in pyproject.toml's [tool.importlinter]; its output names
    # each broken contract and the imports that break it. Started through this interpreter (the
    # script may be installed elsewhere), without a cache so the suite writes nothing here.
    result = run_python(
        "from importlinter.cli import lint_imports_command as lint; lint()", "--no-cache"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_type_ignores_survive_a_library_adding_types() -> None:
    # An ignore at a third-party boundary becomes unused when that library ships type hints;
    # naming unused-ignore keeps mypy --strict green across such a release.
    checked = [
        *REPO_ROOT.glob("app/**/*.py"),
        *REPO_ROOT.glob("load_tests/*.py"),
        *REPO_ROOT.glob("clients/python/herald_client/*.py"),
    ]
    bare = [
        f"{path.relative_to(REPO_ROOT)}:{number}"
        for path in checked
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "# type: ignore" in line and "unused-ignore" not in line
    ]
    assert not bare, f"type: ignore without unused-ignore: {bare}"
