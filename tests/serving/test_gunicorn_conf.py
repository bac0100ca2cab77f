"""gunicorn.conf.py's hooks for the workers' stats directory: who creates it, who removes it.

The real master runs them in tests/serving/test_gunicorn.py; here the hooks are called directly
for the cases a test cannot stage with a real master (a USR2 re-exec, a HUP reload).
"""

from __future__ import annotations

import logging
import os
import runpy
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import REPO_ROOT

DIRECTORY = "HERALD_STATS_DIR"
OWNER = "HERALD_STATS_DIR_OWNER"


class FakeArbiter:
    log = logging.getLogger("tests.gunicorn")


def load_config() -> dict[str, Any]:
    """A fresh execution of the config file, as gunicorn does at start and on every HUP."""
    return runpy.run_path(str(REPO_ROOT / "gunicorn.conf.py"))


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No inherited variables, and what the hooks set is undone after each test (later tests
    start servers that inherit this process's environment)."""
    for name in (DIRECTORY, OWNER):
        # setenv first: delenv of an absent variable would not be restored afterwards.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_the_master_creates_the_directory_and_removes_it_on_exit() -> None:
    config = load_config()
    config["on_starting"](FakeArbiter())
    directory = Path(os.environ[DIRECTORY])
    assert directory.is_dir() and os.environ[OWNER] == str(os.getpid())
    load_config()["on_exit"](FakeArbiter())  # after a HUP reload: a new module, same environment
    assert not directory.exists()


def test_a_directory_given_by_hand_is_used_and_kept(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(DIRECTORY, str(tmp_path))
    config = load_config()
    config["on_starting"](FakeArbiter())
    assert os.environ[DIRECTORY] == str(tmp_path)
    config["on_exit"](FakeArbiter())
    assert tmp_path.is_dir()


def test_a_master_reexecuted_by_usr2_makes_its_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The old master's directory and ownership, inherited through the environment.
    monkeypatch.setenv(DIRECTORY, str(tmp_path))
    monkeypatch.setenv(OWNER, str(os.getpid() + 1))
    config = load_config()
    config["on_starting"](FakeArbiter())
    own = Path(os.environ[DIRECTORY])
    assert own != tmp_path and own.is_dir()
    config["on_exit"](FakeArbiter())
    assert not own.exists()
    assert tmp_path.is_dir()  # the old master's, left for the old master to remove
