"""Fixtures of the leak tests: a server with the admin API on, and the figures report.

Each test records its figures (cycles, RSS before and after, drift, rates) on a
``FigureSheet``; at the end of the run ``pytest_terminal_summary`` prints every
sheet under "Herald leak figures", so a plain ``python -m pytest`` shows the
numbers without ``-s``, whether the test passed or failed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from tests.leak.probe import LEAK_SERVER_ENV, AdminProbe
from tests.support.server import ServerProcess

__all__ = ["FigureSheet", "LeakServer"]

FIGURES = pytest.StashKey[list["FigureSheet"]]()
NAME_WIDTH = 40


class FigureSheet:
    """The figures of one test, in the order they were recorded."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: list[tuple[str, str]] = []

    def add(self, name: str, value: object) -> None:
        if isinstance(value, float):
            value = f"{value:,.2f}"
        elif isinstance(value, int):
            value = f"{value:,}"
        self.rows.append((name, str(value)))

    def lines(self) -> list[str]:
        return [self.title] + [f"  {name:<{NAME_WIDTH}} {value}" for name, value in self.rows]


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[FigureSheet]:
    sheet = FigureSheet(request.node.nodeid)
    yield sheet
    if sheet.rows:
        request.config.stash.setdefault(FIGURES, []).append(sheet)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    sheets = config.stash.get(FIGURES, [])
    if not sheets:
        return
    terminalreporter.section("Herald leak figures")
    for sheet in sheets:
        for line in sheet.lines():
            terminalreporter.write_line(line)


LeakServer = Callable[..., ServerProcess]


@pytest.fixture
def leak_server(server_factory: Callable[..., ServerProcess]) -> LeakServer:
    """Start a Herald process with the admin API on and fresh RSS samples; extra env on top."""
    return lambda **env: server_factory(**{**LEAK_SERVER_ENV, **env})


@pytest.fixture
async def probe_factory() -> AsyncIterator[Callable[[ServerProcess], AdminProbe]]:
    probes: list[AdminProbe] = []

    def make(server: ServerProcess) -> AdminProbe:
        probe = AdminProbe(server)
        probes.append(probe)
        return probe

    yield make
    for probe in probes:
        await probe.aclose()
