"""What the hub tells a front about positions without handing it the broker: the head, and
whether an id (a position or a publisher's own) can still be resumed from."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from app.broker.base import BrokerUnavailableError, Draft, PageLimit, Replay
from app.broker.memory import MemoryBroker
from app.core.config import load_settings
from app.sse.hub import Hub


class UnreachableBroker(MemoryBroker):
    async def replay(
        self,
        channels: Sequence[str],
        last_event_id: str | None,
        *,
        every_channel: bool = False,
        page: PageLimit | None = None,
    ) -> Replay:
        raise BrokerUnavailableError("the broker is unavailable (state: down)")


async def started(broker_class: type[MemoryBroker], history_size: int) -> Hub:
    settings = load_settings(sse_history_size=history_size)
    broker = broker_class(
        history_size=history_size,
        history_max_bytes=settings.sse_history_max_bytes,
        history_max_channels=settings.sse_history_max_channels,
        channel_ttl_seconds=settings.sse_channel_ttl_seconds,
    )
    hub = Hub(settings, broker)
    await hub.start()
    return hub


@pytest.fixture
async def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[Hub]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    started_hub = await started(MemoryBroker, history_size=2)
    yield started_hub
    await started_hub.stop()


async def test_the_head_is_the_newest_position(hub: Hub) -> None:
    before = await hub.head_id()
    assert before is not None
    (event,) = await hub.publish_drafts([Draft(("a",), b"data: 1\n")])
    assert await hub.head_id() == event.id != before


async def test_ids_resume_while_history_reaches_them(hub: Hub) -> None:
    first, *_ = await hub.publish_drafts(
        [Draft(("a",), b"data: 1\n", event_id="urn:x:1"), Draft(("a",), b"data: 2\n")]
    )
    assert await hub.can_resume_after("urn:x:1") is True
    assert await hub.can_resume_after(first.id) is True
    assert await hub.can_resume_after("urn:x:never-published") is False
    # Two more events on a channel that keeps two: the first is gone.
    await hub.publish_drafts([Draft(("a",), b"data: 3\n"), Draft(("a",), b"data: 4\n")])
    assert await hub.can_resume_after("urn:x:1") is False


async def test_an_unreachable_broker_answers_none(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    hub = await started(UnreachableBroker, history_size=2)
    try:
        assert await hub.head_id() is None
        assert await hub.can_resume_after("urn:x:1") is None
    finally:
        await hub.stop()
