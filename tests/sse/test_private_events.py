"""Private events reach only subscribers granted the channel: live, in replay, by id guessing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.broker import create_broker
from app.core.config import load_settings
from app.sse.connection import Connection
from app.sse.hub import Hub


@pytest.fixture
async def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[Hub]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    settings = load_settings()
    hub = Hub(settings, create_broker(settings))
    await hub.start()
    yield hub
    await hub.stop()


def drained(connection: Connection) -> bytes:
    taken = connection.take()
    return taken[0] if taken else b""


async def test_live_private_events_skip_subscribers_without_the_grant(hub: Hub) -> None:
    async with (
        hub.subscribe(["inbox"], private_channels=frozenset({"inbox"})) as (granted, _),
        hub.subscribe(["inbox"]) as (anonymous, _),
    ):
        await hub.publish("inbox", "public one")
        await hub.publish("inbox", "secret", private=True)
        await hub.publish("inbox", "public two")
        seen_by_granted = drained(granted)
        seen_by_anonymous = drained(anonymous)
    assert b"secret" in seen_by_granted
    assert seen_by_granted.count(b"data:") == 3
    assert b"secret" not in seen_by_anonymous
    assert seen_by_anonymous.count(b"data:") == 2


async def test_replay_hides_private_events_and_guessing_ids_reveals_nothing(hub: Hub) -> None:
    first = await hub.publish("inbox", "public")
    secret = await hub.publish("inbox", "secret", private=True)
    last = await hub.publish("inbox", "after")
    # Resuming from before the secret, or guessing the id just before it.
    for resume_from in (first, secret, first):
        async with hub.subscribe(["inbox"], last_event_id=resume_from) as (_, replay):
            assert replay is not None
            assert all(b"secret" not in event.frame for event in replay.events)
            assert replay.events[-1].id == last
    async with hub.subscribe(
        ["inbox"], last_event_id=first, private_channels=frozenset({"inbox"})
    ) as (_, replay):
        assert replay is not None
        assert [event.id for event in replay.events] == [secret, last]


async def test_a_grant_on_one_channel_does_not_open_another(hub: Hub) -> None:
    async with hub.subscribe(["mine", "theirs"], private_channels=frozenset({"mine"})) as (
        connection,
        _,
    ):
        await hub.publish("mine", "for me", private=True)
        await hub.publish("theirs", "not for me", private=True)
        seen = drained(connection)
    assert b"for me" in seen
    assert b"not for me" not in seen


async def test_hidden_private_events_in_replay_are_not_delivered_live_either(hub: Hub) -> None:
    """The cursor covers hidden events too, so a live copy racing the replay is skipped."""
    before = await hub.publish("inbox", "public")
    secret = await hub.publish("inbox", "secret", private=True)
    async with hub.subscribe(["inbox"], last_event_id=before) as (connection, replay):
        assert replay.events == []
        assert replay.head == secret
        assert connection.cursor is not None
