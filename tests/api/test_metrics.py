"""``/metrics``: Prometheus text from a real server, and the collector's design
(a private registry per app, labels ready for a worker id)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from app.api.prometheus import HeraldCollector, build_registry
from app.broker.memory import MemoryBroker
from app.core.config import load_settings
from app.memory.guard import MemoryGuard
from app.memory.limits import MemoryLimit
from app.responses.service import ResponseService, build_producers
from app.sse.hub import Hub
from tests.conftest import FAST_TIMERS
from tests.support.server import ServerProcess
from tests.support.sse_client import open_stream

TOKEN = "metrics-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MB = 1024 * 1024

EXPECTED_FAMILIES = {
    "herald_sse_connections": "gauge",
    "herald_sse_channels": "gauge",
    "herald_sse_queued_events": "gauge",
    "herald_events_published": "counter",
    "herald_events_delivered": "counter",
    "herald_events_dropped": "counter",
    "herald_sse_overflow_disconnects": "counter",
    "herald_sse_reaped": "counter",
    "herald_cache_hits": "counter",
    "herald_cache_misses": "counter",
    "herald_cache_items": "gauge",
    "herald_cache_bytes": "gauge",
    "herald_memory_rss_bytes": "gauge",
    "herald_memory_limit_bytes": "gauge",
    "herald_memory_level": "gauge",
    "herald_memory_refusing": "gauge",
    "herald_memory_cleanups": "counter",
    "herald_memory_rss_slope_bytes_per_second": "gauge",
    "herald_memory_leak_suspected": "gauge",
}


def samples(text: str) -> dict[str, float]:
    """``{"name{labels}": value}`` for every sample of the exposition."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[_key(sample)] = sample.value
    return found


def _key(sample: Sample) -> str:
    labels = ",".join(f'{name}="{value}"' for name, value in sorted(sample.labels.items()))
    return f"{sample.name}{{{labels}}}" if labels else sample.name


# --- against a real server --------------------------------------------------------


@pytest.fixture(scope="module")
def metrics_server() -> Iterator[ServerProcess]:
    env = {**FAST_TIMERS, "ADMIN_TOKEN": TOKEN, "ECHO_DELAY_MS": "0"}
    server = ServerProcess(env).start()
    yield server
    server.close()


async def scrape(server: ServerProcess, accept: str | None = None) -> httpx.Response:
    headers = {**AUTH, **({"Accept": accept} if accept else {})}
    async with httpx.AsyncClient(base_url=server.base_url) as client:
        response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    return response


@pytest.mark.integration
async def test_every_family_is_exposed_with_its_type(metrics_server: ServerProcess) -> None:
    response = await scrape(metrics_server)
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f.type for f in text_string_to_metric_families(response.text)}
    assert families == EXPECTED_FAMILIES
    assert "herald_events_published_total " in response.text  # counters keep _total


@pytest.mark.integration
async def test_values_follow_activity(metrics_server: ServerProcess) -> None:
    base = metrics_server.base_url
    before = samples((await scrape(metrics_server)).text)
    async with (
        httpx.AsyncClient(base_url=base) as client,
        open_stream(base, "/events/metrics-activity") as stream,
    ):
        for _ in range(100):
            if samples((await scrape(metrics_server)).text)["herald_sse_connections"] >= 1:
                break
            await asyncio.sleep(0.02)
        for index in range(3):
            sent = await client.post("/events/metrics-activity", json={"data": index})
            assert sent.status_code == 202
        await stream.events(3)
        # The same question twice: a miss that fills the cache, then a hit.
        first = await client.post("/api/responses", json={"input": "metrics cache"})
        async with client.stream("GET", first.json()["stream_url"]) as run:
            async for _ in run.aiter_bytes():
                pass
        second = await client.post("/api/responses", json={"input": "metrics cache"})
        assert second.json()["cached"] is True
        during = samples((await scrape(metrics_server)).text)

    assert during["herald_sse_connections"] == before["herald_sse_connections"] + 1
    assert during["herald_events_published_total"] == before["herald_events_published_total"] + 3
    assert during["herald_events_delivered_total"] >= before["herald_events_delivered_total"] + 3
    assert during["herald_cache_hits_total"] == before["herald_cache_hits_total"] + 1
    assert during["herald_cache_misses_total"] >= before["herald_cache_misses_total"] + 1
    assert during["herald_cache_items"] >= 1
    assert during["herald_cache_bytes"] > 0
    assert during["herald_memory_rss_bytes"] > 10 * MB
    assert during["herald_memory_level"] == 0
    assert during['herald_memory_cleanups_total{level="critical"}'] == 0


@pytest.mark.integration
async def test_openmetrics_when_the_scraper_asks(metrics_server: ServerProcess) -> None:
    response = await scrape(metrics_server, accept="application/openmetrics-text; version=1.0.0")
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


@pytest.mark.integration
async def test_critical_server_reports_level_two(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(ADMIN_TOKEN=TOKEN, MEMORY_LIMIT_MB="40")
    values = samples((await scrape(server)).text)
    assert values["herald_memory_level"] == 2
    assert values["herald_memory_refusing"] == 1
    assert values['herald_memory_cleanups_total{level="critical"}'] == 1
    assert values["herald_memory_limit_bytes"] == 40 * MB


# --- the collector in-process --------------------------------------------------------


@pytest.fixture
async def parts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[tuple[Hub, ResponseService, MemoryGuard]]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    settings = load_settings()
    broker = MemoryBroker(
        history_size=10,
        history_max_bytes=MB,
        history_max_channels=10,
        channel_ttl_seconds=60,
    )
    hub = Hub(settings, broker)
    service = ResponseService(settings, build_producers(settings))
    guard = MemoryGuard(
        settings, hub, service, rss_source=lambda: 80 * MB, limit=MemoryLimit(100 * MB, "setting")
    )
    yield hub, service, guard
    await service.stop()


async def test_worker_labels_reach_every_sample(
    parts: tuple[Hub, ResponseService, MemoryGuard],
) -> None:
    registry = build_registry(*parts, const_labels={"worker": "3"})
    families = list(registry.collect())
    assert {family.name for family in families} == set(EXPECTED_FAMILIES)
    for family in families:
        for sample in family.samples:
            assert sample.labels["worker"] == "3", sample


async def test_registries_are_private_to_each_app(
    parts: tuple[Hub, ResponseService, MemoryGuard],
) -> None:
    first = build_registry(*parts)
    second = build_registry(*parts)  # a second app in the same process: no name clash
    assert first is not second
    assert REGISTRY.get_sample_value("herald_sse_connections") is None
    _, _, guard = parts
    guard.check()
    # Values are read from the live objects at scrape time, by both registries.
    assert first.get_sample_value("herald_memory_level") == 1  # 80 % is warning
    assert second.get_sample_value("herald_memory_rss_bytes") == 80 * MB


async def test_a_collector_describes_what_it_collects(
    parts: tuple[Hub, ResponseService, MemoryGuard],
) -> None:
    collector = HeraldCollector(*parts)
    assert [f.name for f in collector.describe()] == [f.name for f in collector.collect()]
