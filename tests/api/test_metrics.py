"""``/metrics``: Prometheus text from a real server, and the collector's design
(one sample per worker, labelled with its id). Several workers: tests/serving/test_gunicorn.py."""

from __future__ import annotations

import asyncio
import socket
from collections import defaultdict
from collections.abc import Callable, Iterator

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from app.api.prometheus import HeraldCollector
from app.memory.levels import MemoryLevel
from tests.conftest import FAST_TIMERS
from tests.support.server import ServerProcess
from tests.support.snapshots import make_snapshot
from tests.support.sse_client import open_stream

TOKEN = "metrics-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MB = 1024 * 1024

EXPECTED_FAMILIES = {
    "herald_workers": "gauge",
    "herald_sse_connections": "gauge",
    "herald_sse_channels": "gauge",
    "herald_sse_queued_events": "gauge",
    "herald_sse_replays_running": "gauge",
    "herald_sse_replays_waiting": "gauge",
    "herald_sse_replay_page_bytes": "gauge",
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
    "herald_socket_memory_bytes": "gauge",
    "herald_memory_limit_bytes": "gauge",
    "herald_memory_level": "gauge",
    "herald_memory_refusing": "gauge",
    "herald_memory_cleanups": "counter",
    "herald_memory_rss_slope_bytes_per_second": "gauge",
    "herald_memory_leak_suspected": "gauge",
    "herald_admin_actions": "counter",
}


def samples(text: str) -> dict[str, float]:
    """``{"name{labels}": value}`` for every sample of the exposition."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[_key(sample)] = sample.value
    return found


def service(text: str) -> dict[str, float]:
    """Like :func:`samples`, summed over the ``worker`` label (PromQL ``sum without (worker)``)."""
    found: dict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != "worker"}
            found[_key(sample._replace(labels=labels))] += sample.value
    return dict(found)


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
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert {name: family.type for name, family in families.items()} == EXPECTED_FAMILIES
    assert "herald_events_published_total{" in response.text  # counters keep _total
    # One process (python -m app): one worker, named after its host and pid.
    worker = f"{socket.gethostname()}:{metrics_server.process.pid}"  # type: ignore[union-attr]
    assert [sample.value for sample in families.pop("herald_workers").samples] == [1]
    for family in families.values():
        assert {sample.labels["worker"] for sample in family.samples} == {worker}, family.name


@pytest.mark.integration
async def test_values_follow_activity(metrics_server: ServerProcess) -> None:
    base = metrics_server.base_url
    before = service((await scrape(metrics_server)).text)
    async with (
        httpx.AsyncClient(base_url=base) as client,
        open_stream(base, "/events/metrics-activity") as stream,
    ):
        for _ in range(100):
            if service((await scrape(metrics_server)).text)["herald_sse_connections"] >= 1:
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
        during = service((await scrape(metrics_server)).text)

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
    values = service((await scrape(server)).text)
    assert values["herald_memory_level"] == 2
    assert values["herald_memory_refusing"] == 1
    assert values['herald_memory_cleanups_total{level="critical"}'] == 1
    assert values["herald_memory_limit_bytes"] == 40 * MB


# --- the collector in-process --------------------------------------------------------


def test_every_family_has_one_sample_per_worker() -> None:
    one = make_snapshot(
        pid=1,
        connections=13,
        published=5,
        level=MemoryLevel.CRITICAL,
        cleanups_critical=1,
        admin_actions={"drain": 2},
    )
    two = make_snapshot(
        pid=2, connections=17, published=7, refusing=True, leak_suspected=True, socket_bytes=4096
    )
    text = generate_latest(HeraldCollector([one, two])).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {name: family.type for name, family in families.items()} == EXPECTED_FAMILIES
    assert [(s.labels, s.value) for s in families.pop("herald_workers").samples] == [({}, 2)]
    cleanups = families.pop("herald_memory_cleanups")
    assert len(cleanups.samples) == 4  # two workers, two levels
    actions = families.pop("herald_admin_actions")
    assert len(actions.samples) == 10  # two workers, five actions, each from 0
    for family in families.values():
        assert sorted(s.labels["worker"] for s in family.samples) == ["box:1", "box:2"], family
    values = samples(text)
    assert values['herald_sse_connections{worker="box:1"}'] == 13
    assert values['herald_sse_connections{worker="box:2"}'] == 17
    assert service(text)["herald_sse_connections"] == 30
    assert service(text)["herald_events_published_total"] == 12
    assert values['herald_memory_level{worker="box:1"}'] == 2
    assert values['herald_memory_level{worker="box:2"}'] == 0
    assert values['herald_memory_cleanups_total{level="critical",worker="box:1"}'] == 1
    assert values['herald_memory_refusing{worker="box:2"}'] == 1
    assert values['herald_memory_leak_suspected{worker="box:2"}'] == 1
    assert values['herald_admin_actions_total{action="drain",worker="box:1"}'] == 2
    assert values['herald_admin_actions_total{action="drain",worker="box:2"}'] == 0
    assert values['herald_admin_actions_total{action="cleanup",worker="box:1"}'] == 0
    assert values['herald_socket_memory_bytes{worker="box:2"}'] == 4096


def test_the_process_wide_registry_is_left_alone() -> None:
    generate_latest(HeraldCollector([make_snapshot(connections=3)]))
    assert REGISTRY.get_sample_value("herald_sse_connections") is None


def test_a_collector_describes_what_it_collects() -> None:
    collector = HeraldCollector([make_snapshot()])
    assert [f.name for f in collector.describe()] == [f.name for f in collector.collect()]
