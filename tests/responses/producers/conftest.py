"""Fixtures for the producer tests: a real fake OpenAI-compatible upstream.

One server runs for the whole session (starting uvicorn per test would cost a
shutdown tick each time); ``upstream`` resets its script and recorded requests
before every test, so no test sees another's state.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.responses.producers.fake_upstream import FakeUpstream

__all__ = ["upstream"]


@pytest.fixture(scope="session")
def _upstream_server() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        yield server


@pytest.fixture
def upstream(_upstream_server: FakeUpstream) -> Iterator[FakeUpstream]:
    """The fake upstream, with default behaviour and no recorded requests."""
    _upstream_server.reset()
    yield _upstream_server
    _upstream_server.reset()
