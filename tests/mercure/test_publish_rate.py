"""A Mercure publisher is held to PUBLISH_RATE_PER_SECOND like any other: over its rate it gets
429 with Retry-After, in the Mercure front's error form, and nothing is published."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.core.config import load_settings
from app.main import create_app
from tests.mercure.tokens import AUDIENCE, ISSUER, SECRET, detail, token

HUB = "/.well-known/mercure"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
async def app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[FastAPI]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    settings = load_settings(
        broker_url="memory://",
        jwt_secret=SECRET,
        jwt_audience=AUDIENCE,
        jwt_issuer=ISSUER,
        publish_rate_per_second=0.5,
        publish_burst=1,
    )
    built = create_app(settings)
    async with built.router.lifespan_context(built):
        yield built


async def test_a_jwt_publisher_over_its_rate_gets_429_and_publishes_nothing(
    app: FastAPI,
) -> None:
    hub = app.state.hub
    headers = {**FORM, "Authorization": f"Bearer {token(detail(['publish'], '*'))}"}
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://herald") as client:
        first = await client.post(HUB, content=b"topic=a&id=urn:x:first&data=1", headers=headers)
        assert first.status_code == 200, first.text
        published = hub.counters.published
        refused = await client.post(
            HUB, content=b"topic=a&id=urn:x:refused&data=2", headers=headers
        )
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "2"
    assert refused.headers["content-type"] == "application/json"
    assert refused.json()["detail"].startswith("publish rate limit exceeded")
    assert "www-authenticate" not in refused.headers  # not a token error: no challenge
    assert hub.counters.published == published
    assert await hub.can_resume_after("urn:x:first") is True
    assert await hub.can_resume_after("urn:x:refused") is False


async def test_a_refused_token_spends_nobodys_bucket(app: FastAPI) -> None:
    good = {**FORM, "Authorization": f"Bearer {token(detail(['publish'], '*'))}"}
    bad = {**FORM, "Authorization": f"Bearer {token(detail(['publish'], '*'), exp=1)}"}
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://herald") as client:
        for _ in range(3):
            assert (await client.post(HUB, content=b"topic=a", headers=bad)).status_code == 401
        assert (await client.post(HUB, content=b"topic=a", headers=good)).status_code == 200
