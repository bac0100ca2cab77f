from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.responses.producers.fake_upstream import FakeUpstream
from tests.support.server import ServerProcess

# Short timers so behaviour that takes minutes in production shows in a second.
FAST_TIMERS = {
    "SSE_PING_SECONDS": "0.3",
    "SSE_CLEANUP_INTERVAL_SECONDS": "0.2",
    "LOG_LEVEL": "info",
}


@pytest.fixture
def server_factory() -> Iterator[Callable[..., ServerProcess]]:
    """Start Herald processes with extra environment; all are stopped after the test."""
    started: list[ServerProcess] = []

    def start(**env: str) -> ServerProcess:
        server = ServerProcess({**FAST_TIMERS, **env}).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture(scope="module")
def herald() -> Iterator[ServerProcess]:
    """One shared server per test module; tests use their own channel names."""
    server = ServerProcess(dict(FAST_TIMERS)).start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def _upstream_server() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture
def upstream(_upstream_server: FakeUpstream) -> Iterator[FakeUpstream]:
    """A real fake OpenAI-compatible upstream (one per session), reset for each test."""
    _upstream_server.reset()
    yield _upstream_server
    _upstream_server.reset()
