"""schemathesis against the app's own OpenAPI schema, sent to a real server.

Every operation gets generated requests, valid and invalid. Whatever the input: no 5xx,
no hang (each request is bounded by a timeout), and every error is JSON with ``detail``.
Streams (``text/event-stream``) are opened, checked for their first frame, and closed.
Publishing is allowed (loopback, no publish secret) so the body parsing is fuzzed too; the
admin API has a token, so its 401/403 paths are.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

from app.core.config import load_settings
from app.main import create_app
from tests.conftest import FAST_TIMERS
from tests.support.server import ServerProcess

pytestmark = pytest.mark.integration

EXAMPLES_PER_OPERATION = 40
# Connect and read timeouts: a request that takes longer than this has hung.
REQUEST_TIMEOUT = (5.0, 10.0)

schema = schemathesis.openapi.from_dict(create_app(load_settings()).openapi())


@pytest.fixture(scope="module")
def fuzzed_server() -> Iterator[ServerProcess]:
    server = ServerProcess(
        {**FAST_TIMERS, "ADMIN_TOKEN": "fuzz-admin-token-0123456789", "LOG_LEVEL": "warning"}
    ).start()
    yield server
    server.close()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_error_no_hang_and_json_errors(
    case: schemathesis.Case, fuzzed_server: ServerProcess
) -> None:
    kwargs = case.as_transport_kwargs(base_url=fuzzed_server.base_url)
    with requests.request(**kwargs, stream=True, timeout=REQUEST_TIMEOUT) as response:
        described = f"{case.method} {case.formatted_path} -> {response.status_code}"
        assert response.status_code < 500, f"{described}: {response.text[:500]}"
        content_type = response.headers.get("content-type", "")
        if content_type.startswith("text/event-stream"):
            first = next(response.iter_content(chunk_size=None))
            assert first.startswith(b"retry:"), described
            return
        body = response.content  # bounded by the read timeout
        if response.status_code >= 400:
            assert content_type.startswith("application/json"), described
            detail = response.json().get("detail")
            assert detail, f"{described}: no detail in {body[:300]!r}"
    assert fuzzed_server.process is not None and fuzzed_server.process.poll() is None
