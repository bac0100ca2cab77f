"""In-process limits: streams per client and the publish buckets, as the hub uses them."""

from __future__ import annotations

import pytest

from app.core.config import Settings
from app.limits import LimitExceededError, LocalClientLimits, publisher_key


def limits(**overrides: object) -> LocalClientLimits:
    return LocalClientLimits(Settings(**overrides))  # type: ignore[arg-type]


async def test_streams_are_counted_per_client_and_released() -> None:
    local = limits(sse_max_connections_per_ip=2)
    first = await local.acquire_stream("10.0.0.1")
    second = await local.acquire_stream("10.0.0.1")
    assert first is not None and second is not None
    with pytest.raises(LimitExceededError, match=r"too many open streams from 10\.0\.0\.1"):
        await local.acquire_stream("10.0.0.1")
    assert await local.acquire_stream("10.0.0.2") is not None
    await local.release_stream(first)
    assert await local.acquire_stream("10.0.0.1") is not None
    assert local.stats()["streams_refused"] == 1


async def test_a_client_without_streams_leaves_no_entry() -> None:
    local = limits(sse_max_connections_per_ip=5)
    leases = [await local.acquire_stream(f"10.0.0.{n}") for n in range(50)]
    assert local.stats()["clients_with_streams"] == 50
    for lease in leases:
        assert lease is not None
        await local.release_stream(lease)
    assert local.stats()["clients_with_streams"] == 0


async def test_zero_turns_both_limits_off() -> None:
    local = limits()
    assert not local.streams_limited and not local.publishes_limited
    assert await local.acquire_stream("10.0.0.1") is None
    for _ in range(1000):
        await local.take_publish("address:10.0.0.1")
    assert local.stats()["publish_buckets"] == 0


async def test_publish_bucket_refuses_with_a_retry_after() -> None:
    local = limits(publish_rate_per_second=0.5, publish_burst=2)
    await local.take_publish("k")
    await local.take_publish("k")
    with pytest.raises(LimitExceededError) as refused:
        await local.take_publish("k")
    assert refused.value.retry_after == 2
    assert "publish rate limit exceeded (0.5/s, burst 2)" in refused.value.detail


def test_publisher_key_hashes_tokens_and_falls_back_to_the_address() -> None:
    key = publisher_key("secret-token-value", "10.0.0.1")
    assert key.startswith("token:") and "secret-token-value" not in key
    assert key == publisher_key("secret-token-value", "10.9.9.9")  # per token, not address
    assert key != publisher_key("another-token", "10.0.0.1")
    assert publisher_key(None, "10.0.0.1") == "address:10.0.0.1"
