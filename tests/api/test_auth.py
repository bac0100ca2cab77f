"""Who may subscribe and publish, end to end: JWT grants, private events, trusted proxies."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import jwt
import pytest

from tests.support.server import ServerProcess
from tests.support.sse_client import open_stream

pytestmark = pytest.mark.integration

SECRET = "integration-jwt-secret-0123456789abcdef"


def token(publish: list[str] | None = None, subscribe: list[str] | None = None) -> str:
    claims = {"mercure": {"publish": publish or [], "subscribe": subscribe or []}}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture
def secured(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory(JWT_SECRET=SECRET, PUBLISH_TOKEN="simple-publish-token-42")


async def test_private_events_reach_only_granted_subscribers(secured: ServerProcess) -> None:
    inbox = token(subscribe=["users/{id}/inbox"])
    async with (
        open_stream(secured.base_url, f"/events/users/7/inbox?access_token={inbox}") as by_query,
        open_stream(secured.base_url, "/events/users/7/inbox", bearer(inbox)) as by_header,
        open_stream(secured.base_url, "/events/users/7/inbox") as anonymous,
        httpx.AsyncClient(base_url=secured.base_url) as client,
    ):
        await asyncio.sleep(0.3)
        publisher = bearer(token(publish=["users/{id}/inbox"]))
        for body in ({"data": "secret", "private": True}, {"data": "public"}):
            response = await client.post("/events/users/7/inbox", json=body, headers=publisher)
            assert response.status_code == 202, response.text
        assert [m.data for m in await by_query.events(2)] == ["secret", "public"]
        assert [m.data for m in await by_header.events(2)] == ["secret", "public"]
        assert [m.data for m in await anonymous.events(1)] == ["public"]


async def test_cookie_token_and_replay_hide_private_events(secured: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=secured.base_url) as client:
        simple = bearer("simple-publish-token-42")
        first = (await client.post("/events/vault", json={"data": 0}, headers=simple)).json()
        await client.post("/events/vault", json={"data": "hidden", "private": True}, headers=simple)
        await client.post("/events/vault", json={"data": "shown"}, headers=simple)
    resume = {"Last-Event-ID": first["id"]}
    async with open_stream(secured.base_url, "/events/vault", resume) as anonymous:
        assert [m.data for m in await anonymous.events(1)] == ["shown"]
    cookie = {**resume, "Cookie": f"herald_auth={token(subscribe=['vault'])}"}
    async with open_stream(secured.base_url, "/events/vault", cookie) as granted:
        assert [m.data for m in await granted.events(2)] == ["hidden", "shown"]


@pytest.mark.parametrize(
    ("headers", "path", "status", "detail"),
    [
        (bearer("garbage"), "/events/a", 401, "invalid token"),
        (bearer(token(subscribe=["b"])), "/events/a", 403, "does not grant"),
        (bearer(token(subscribe=["a"])), "/events?channel=a&channel=b", 403, "does not grant"),
    ],
)
def test_subscribe_refusals(
    secured: ServerProcess, headers: dict[str, str], path: str, status: int, detail: str
) -> None:
    response = httpx.get(secured.base_url + path, headers=headers, timeout=5)
    assert response.status_code == status
    assert detail in response.json()["detail"]


def test_anonymous_refused_when_not_allowed(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(JWT_SECRET=SECRET, ALLOW_ANONYMOUS="false")
    response = httpx.get(server.base_url + "/events/a", timeout=5)
    assert response.status_code == 401
    assert "token is required" in response.json()["detail"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        (bearer("simple-publish-token-42"), 202),
        (bearer(token(publish=["orders/{id}"])), 202),
        (bearer(token(publish=["other"])), 403),
        (bearer(token(subscribe=["*"])), 403),
        (bearer("not-a-jwt-and-not-the-token"), 401),
    ],
)
def test_publish_matrix(secured: ServerProcess, headers: dict[str, str], status: int) -> None:
    response = httpx.post(secured.base_url + "/events/orders/9", json={"data": 1}, headers=headers)
    assert response.status_code == status, response.text
    assert "detail" in response.json() or status == 202


def test_private_must_be_a_boolean(secured: ServerProcess) -> None:
    response = httpx.post(
        secured.base_url + "/events/x",
        json={"data": 1, "private": "yes"},
        headers=bearer("simple-publish-token-42"),
    )
    assert response.status_code == 422
    assert "private" in response.json()["detail"]


async def test_tokens_never_reach_the_logs(secured: ServerProcess) -> None:
    value = token(subscribe=["logged"])
    async with open_stream(secured.base_url, f"/events/logged?access_token={value}"):
        await asyncio.sleep(0.2)
    async with httpx.AsyncClient(base_url=secured.base_url, timeout=5) as client:
        await client.get("/events/x", headers=bearer("wrong-" + value))
    await asyncio.sleep(0.3)
    logs = secured.logs()
    assert value not in logs
    assert SECRET not in logs
    assert "simple-publish-token-42" not in logs


async def test_forwarded_for_is_believed_only_from_trusted_proxies(
    server_factory: Callable[..., ServerProcess],
) -> None:
    trusting = server_factory(TRUSTED_PROXIES="127.0.0.1/32")
    untrusting = server_factory()
    spoof = {"X-Forwarded-For": "198.51.100.23"}
    for server in (trusting, untrusting):
        async with open_stream(server.base_url, "/events/whoami", spoof):
            await asyncio.sleep(0.2)
    await asyncio.sleep(0.3)
    assert "client=198.51.100.23" in trusting.logs()
    assert "client=198.51.100.23" not in untrusting.logs()
    assert "client=127.0.0.1" in untrusting.logs()


def test_bad_trusted_proxies_stop_startup(server_factory: Callable[..., ServerProcess]) -> None:
    with pytest.raises(RuntimeError, match="TRUSTED_PROXIES"):
        server_factory(TRUSTED_PROXIES="not-a-network")


def test_short_jwt_secret_stops_startup(server_factory: Callable[..., ServerProcess]) -> None:
    with pytest.raises(RuntimeError, match="JWT_SECRET"):
        server_factory(JWT_SECRET="short")
