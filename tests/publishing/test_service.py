"""The publish service's rules, as both fronts meet them: rate, drafts, grants, the broker."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from app.broker.base import BrokerUnavailableError, Draft
from app.broker.memory import MemoryBroker
from app.publishing import (
    PublishForbiddenError,
    PublishItem,
    PublishRefusedError,
    PublishService,
    check_channels,
)
from app.sse.hub import DEFAULT_RETRY_AFTER_SECONDS
from app.wire.event import Event
from tests.conftest import MakeHub


class UnreachableBroker(MemoryBroker):
    async def publish(self, drafts: Sequence[Draft]) -> list[Event]:
        raise BrokerUnavailableError("the broker is unavailable (state: down)")


class Granted:
    """Grants that cover the channels named, like a token's."""

    def __init__(self, *channels: str) -> None:
        self.channels = set(channels)

    def can_publish(self, channel: str, /) -> bool:
        return channel in self.channels


async def test_a_publisher_over_its_rate_is_429_with_retry_after(make_hub: MakeHub) -> None:
    hub = await make_hub(publish_rate_per_second=0.5, publish_burst=2)
    service = PublishService(hub.settings, hub)
    assert service.rate_limited
    for _ in range(2):
        await service.check_rate("a-token", "10.0.0.1")
    with pytest.raises(PublishRefusedError) as refused:
        await service.check_rate("a-token", "10.0.0.1")
    assert refused.value.status == 429
    assert refused.value.retry_after == 2
    assert "publish rate limit exceeded" in refused.value.detail
    # A bucket per token, and per address for publishers without one.
    await service.check_rate("another-token", "10.0.0.1")
    await service.check_rate(None, "10.0.0.1")


async def test_without_a_rate_nothing_is_counted(make_hub: MakeHub) -> None:
    hub = await make_hub()
    service = PublishService(hub.settings, hub)
    assert not service.rate_limited
    for _ in range(100):
        await service.check_rate("a-token", "10.0.0.1")


async def test_drafts_name_the_item_that_cannot_be_published(make_hub: MakeHub) -> None:
    hub = await make_hub(max_event_bytes=64)
    service = PublishService(hub.settings, hub)
    good = PublishItem(["a", "b", "a"], {"n": 1}, "kind")
    (draft,) = service.drafts([good], batch=False, checked_size=True)
    assert draft.channels == ("a", "b")
    assert draft.body == b'event: kind\ndata: {"n":1}\n'
    with pytest.raises(PublishRefusedError) as refused:
        service.drafts([good, PublishItem(["bad name"], 1)], batch=True, checked_size=False)
    assert refused.value.status == 422
    assert refused.value.detail.startswith("item 1: invalid channel name 'bad name'")
    with pytest.raises(PublishRefusedError) as refused:
        service.drafts([good, PublishItem(["a"], "x" * 100)], batch=True, checked_size=False)
    assert refused.value.status == 413
    assert refused.value.detail == "item 1: event larger than MAX_EVENT_BYTES (64 bytes)"


async def test_a_batch_repeating_its_channels_shares_one_tuple(make_hub: MakeHub) -> None:
    hub = await make_hub()
    service = PublishService(hub.settings, hub)
    first, second = service.drafts(
        [PublishItem(["a", "b"], 1), PublishItem(["a", "b"], 2)], batch=True, checked_size=False
    )
    assert first.channels is second.channels


async def test_grants_must_cover_every_channel_of_every_draft(make_hub: MakeHub) -> None:
    hub = await make_hub()
    service = PublishService(hub.settings, hub)
    drafts = service.drafts(
        [PublishItem(["a"], 1), PublishItem(["a", "b"], 2)], batch=True, checked_size=False
    )
    service.check_grants(Granted("a", "b"), drafts, batch=True)
    with pytest.raises(PublishForbiddenError) as refused:
        service.check_grants(Granted("a"), drafts, batch=True)
    assert refused.value.status == 403
    assert refused.value.detail == "item 1: token does not grant publishing to 'b'"
    with pytest.raises(PublishForbiddenError):
        check_channels(Granted(), ["a"])


async def test_an_encoded_draft_keeps_the_publishers_id_and_one_of_each_channel(
    make_hub: MakeHub,
) -> None:
    hub = await make_hub()
    service = PublishService(hub.settings, hub)
    draft = service.encoded_draft(
        ["https://x/a", "https://x/b", "https://x/a"], b"data: hi\n", private=True, event_id="urn:1"
    )
    (event,) = await service.publish([draft])
    assert event.id == "urn:1"
    assert event.channels == ("https://x/a", "https://x/b")
    assert hub.counters.published == 1


async def test_a_broker_that_cannot_take_a_publish_is_503_with_the_apps_retry_after(
    make_hub: MakeHub,
) -> None:
    hub = await make_hub(UnreachableBroker)
    service = PublishService(hub.settings, hub)
    with pytest.raises(PublishRefusedError) as refused:
        await service.publish(service.drafts([PublishItem(["a"], 1)], False, checked_size=True))
    assert refused.value.status == 503
    assert refused.value.retry_after == DEFAULT_RETRY_AFTER_SECONDS
    assert refused.value.detail == "the broker is unavailable (state: down)"
    assert hub.counters.published == 0
