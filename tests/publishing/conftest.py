"""A hub on the memory broker, started and stopped around each test (no stray .env read)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from app.broker.memory import MemoryBroker
from app.core.config import load_settings
from app.sse.hub import Hub

MakeHub = Callable[..., Awaitable[Hub]]


@pytest.fixture
async def make_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[MakeHub]:
    monkeypatch.chdir(tmp_path)
    hubs: list[Hub] = []

    async def make(broker_class: type[MemoryBroker] = MemoryBroker, **overrides: object) -> Hub:
        settings = load_settings(**overrides)
        broker = broker_class(
            history_size=settings.sse_history_size,
            history_max_bytes=settings.sse_history_max_bytes,
            history_max_channels=settings.sse_history_max_channels,
            channel_ttl_seconds=settings.sse_channel_ttl_seconds,
        )
        hub = Hub(settings, broker)
        await hub.start()
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        await hub.stop()
