"""The pinned requirements are a complete lock of the loose ones.

``requirements.in`` and ``requirements-dev.in`` name what Herald asks for; ``pip-compile``
writes them out as ``requirements.txt`` and ``requirements-dev.txt``, every package of the
whole dependency tree pinned with ``==``. These tests fail when a lock line floats, when a
package is asked for but not locked, or when the lock holds a package nothing asks for: the
signs of a hand edit or a lock that was not refreshed after the loose file changed.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.server import REPO_ROOT

LOCKS = {"requirements.txt": "requirements.in", "requirements-dev.txt": "requirements-dev.in"}
PINNED = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9.+!_-]+)$")
# pip-compile writes these below its "unsafe" heading; they are pinned like the rest.
INSTALLERS = {"pip", "setuptools"}


def requirement_lines(path: Path) -> list[str]:
    """The lines of a requirements file without comments, blanks and continuation."""
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def loose(path: Path) -> list[Requirement]:
    """Every requirement of a ``.in`` file, following ``-r`` includes (``-c`` only constrains)."""
    found: list[Requirement] = []
    for line in requirement_lines(path):
        if line.startswith("-r "):
            found += loose(path.parent / line.removeprefix("-r ").strip())
        elif not line.startswith("-"):
            found.append(Requirement(line))
    return found


def locked(path: Path) -> dict[str, str]:
    """``{name: version}`` of a lock, failing on any line that is not ``name==version``."""
    pins: dict[str, str] = {}
    for line in requirement_lines(path):
        match = PINNED.match(line)
        assert match, f"{path.name}: not pinned with == to one version: {line!r}"
        pins[canonicalize_name(match["name"])] = match["version"]
    return pins


def closure(roots: list[Requirement]) -> set[str]:
    """The names of ``roots`` and everything their installed distributions require."""
    environment: dict[str, str] = dict(default_environment())
    seen: set[str] = set()
    pending = [(requirement, frozenset(requirement.extras)) for requirement in roots]
    while pending:
        requirement, extras = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in seen and not extras:
            continue
        seen.add(name)
        for spec in metadata.requires(name) or []:
            child = Requirement(spec)
            applies = child.marker is None or any(
                child.marker.evaluate({**environment, "extra": extra}) for extra in extras | {""}
            )
            if applies:
                pending.append((child, frozenset(child.extras)))
    return seen


@pytest.mark.parametrize("lock_name", sorted(LOCKS))
def test_every_lock_line_is_pinned(lock_name: str) -> None:
    pins = locked(REPO_ROOT / lock_name)
    assert pins, f"{lock_name} pins nothing"


@pytest.mark.parametrize("lock_name", sorted(LOCKS))
def test_the_lock_holds_exactly_what_the_loose_file_needs(lock_name: str) -> None:
    asked = loose(REPO_ROOT / LOCKS[lock_name])
    pins = locked(REPO_ROOT / lock_name)
    missing = {canonicalize_name(r.name) for r in asked} - pins.keys()
    assert not missing, f"asked for in {LOCKS[lock_name]} but not locked: {sorted(missing)}"
    needed = closure(asked) | INSTALLERS
    stray = pins.keys() - needed
    assert not stray, f"locked in {lock_name} but needed by nothing asked for: {sorted(stray)}"
    unlocked = needed - pins.keys() - INSTALLERS
    assert not unlocked, f"needed by {LOCKS[lock_name]} but not locked: {sorted(unlocked)}"


@pytest.mark.parametrize("lock_name", sorted(LOCKS))
def test_the_lock_satisfies_the_loose_specifiers(lock_name: str) -> None:
    pins = locked(REPO_ROOT / lock_name)
    for requirement in loose(REPO_ROOT / LOCKS[lock_name]):
        version = pins[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock_name} pins {requirement.name}=={version}, outside {requirement}"
        )


def test_the_service_and_the_dev_lock_agree() -> None:
    service = locked(REPO_ROOT / "requirements.txt")
    dev = locked(REPO_ROOT / "requirements-dev.txt")
    differ = {name: (v, dev.get(name)) for name, v in service.items() if dev.get(name) != v}
    assert not differ, f"the service's pins differ in requirements-dev.txt: {differ}"


def test_the_installed_environment_is_the_lock() -> None:
    # The suite runs on what the README's command installed: the dev lock, to the version.
    for name, version in locked(REPO_ROOT / "requirements-dev.txt").items():
        if name in INSTALLERS:
            continue
        assert metadata.version(name) == version, f"{name} {metadata.version(name)} != {version}"
