"""``memory_report``'s action flags run as a subprocess against a real server: each one acts,
prints what every worker did, and exits 1 with the server's reason when refused."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from tests.support.server import ServerProcess
from tests.support.sse_client import open_stream
from tests.tools.test_memory_report import TOKEN, report

pytestmark = pytest.mark.integration


async def draining(server: ServerProcess) -> bool:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=5) as client:
        return bool((await client.get("/health")).json()["drain"]["draining"])


async def test_action_flags_act_and_report(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(ADMIN_TOKEN=TOKEN)
    env = {"ADMIN_TOKEN": TOKEN}
    url = ("--url", server.base_url)
    async with open_stream(server.base_url, "/events/cli-cut") as stream:
        done = await asyncio.to_thread(
            report, *url, "--close-channel", "cli-cut", "--retry-ms", "500", env=env
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(
            "streams_close channel=cli-cut retry_ms=500: 1 worker(s) answered (bus local)"
        )
        assert '  total  {"closed": 1}' in done.stdout
        await stream.until_closed()
        assert stream.parser.retry is not None and 500 <= stream.parser.retry < 1000

    drained = await asyncio.to_thread(report, *url, "--drain", env=env)
    assert drained.returncode == 0 and '"started": 1' in drained.stdout
    assert await draining(server)
    undrained = await asyncio.to_thread(report, *url, "--undrain", env=env)
    assert undrained.returncode == 0 and '{"stopped": 1}' in undrained.stdout
    assert not await draining(server)

    cleaned = await asyncio.to_thread(report, *url, "--cleanup", "aggressive", env=env)
    assert cleaned.returncode == 0 and '"cache_cleared"' in cleaned.stdout
    cleared = await asyncio.to_thread(
        report, *url, "--clear-cache", "--conversation", "c1", env=env
    )
    assert cleared.returncode == 0 and "cache_clear conversation_id=c1:" in cleared.stdout

    analysis = await asyncio.to_thread(report, *url, "--analyze", env=env)
    assert analysis.returncode == 0, analysis.stderr
    assert "Bounds, closest to their limit first:" in analysis.stdout
    assert "(SSE_MAX_CONNECTIONS)" in analysis.stdout and "Recommendations:" in analysis.stdout

    refused = await asyncio.to_thread(report, *url, "--close-client", "nobody", env=env)
    assert refused.returncode == 1 and "answered 422" in refused.stderr
    wrong = await asyncio.to_thread(report, *url, "--drain", env={"ADMIN_TOKEN": "nope"})
    assert wrong.returncode == 1 and "answered 403: invalid admin token" in wrong.stderr
    assert not await draining(server)  # the refused drain changed nothing
    both = await asyncio.to_thread(report, *url, "--drain", "--undrain", env=env)
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
