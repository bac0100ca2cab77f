"""Minted tokens are the JWTs Herald verifies: the claims its grants read, checked by its own
verifier and by PyJWT, and accepted by a real server for the granted channels only."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable

import httpx
import jwt
import pytest
from herald_client import HeraldPublisher, PublishRejected, mint_subscriber_token, mint_token
from pydantic import SecretStr

from app.auth.tokens import InvalidTokenError, TokenVerifier
from tests.client.transports import RecordingTransport
from tests.support.server import ServerProcess
from tests.support.sse_client import open_stream

SECRET = "client-tests-jwt-secret-0123456789abcdef"
NOW = 1_900_000_000.0


def segments(token: str) -> list[dict[str, object]]:
    def decode(part: str) -> dict[str, object]:
        loaded: dict[str, object] = json.loads(
            base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        )
        return loaded

    header, claims, _ = token.split(".")
    return [decode(header), decode(claims)]


def test_a_subscriber_token_carries_exactly_herald_s_claims() -> None:
    token = mint_subscriber_token(SECRET, ["users/{id}/inbox", "news"], ttl_seconds=600, now=NOW)
    header, claims = segments(token)
    assert header == {"alg": "HS256", "typ": "JWT"}
    assert claims == {"mercure": {"subscribe": ["users/{id}/inbox", "news"]}, "exp": NOW + 600}
    assert "=" not in token  # base64url without padding, as RFC 7515 says
    verified = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert verified == claims


def test_herald_s_verifier_grants_what_the_token_names() -> None:
    verifier = TokenVerifier(secret=SecretStr(SECRET))
    grants = verifier.verify(mint_subscriber_token(SECRET, "users/{id}/inbox"))
    assert grants.can_subscribe("users/42/inbox")
    assert not grants.can_subscribe("users/4/2/inbox") and not grants.can_subscribe("news")
    assert not grants.can_publish("users/42/inbox")
    both = verifier.verify(mint_token(SECRET, subscribe="*", publish=["orders/{id}"]))
    assert both.can_subscribe("anything") and both.can_publish("orders/7")


def test_herald_refuses_an_expired_token_and_another_secret_s() -> None:
    verifier = TokenVerifier(secret=SecretStr(SECRET), leeway_seconds=30)
    expired = mint_subscriber_token(SECRET, "news", ttl_seconds=60, now=time.time() - 120)
    with pytest.raises(InvalidTokenError, match="expired"):
        verifier.verify(expired)
    forged = mint_subscriber_token("another-secret-of-at-least-32-bytes!", "news")
    with pytest.raises(InvalidTokenError, match="signature"):
        verifier.verify(forged)


def test_a_secret_given_as_bytes_signs_the_same() -> None:
    as_text = mint_subscriber_token(SECRET, "news", now=NOW)
    assert mint_subscriber_token(SECRET.encode(), "news", now=NOW) == as_text


@pytest.mark.parametrize(
    ("secret", "channels", "ttl", "message"),
    [
        ("too-short", ["news"], 60, "at least 32 bytes"),
        (SECRET, ["users/{id"], 60, "braces"),
        (SECRET, ["users/{1d}"], 60, "braces"),
        (SECRET, [""], 60, "1-256 characters"),
        (SECRET, ["x" * 257], 60, "1-256 characters"),
        (SECRET, [f"c{i}" for i in range(257)], 60, "at most 256"),
        (SECRET, ["news"], 0, "ttl_seconds"),
        (SECRET, ["news"], float("inf"), "ttl_seconds"),
        (SECRET, [f"{'c' * 200}{i}" for i in range(40)], 60, "Herald reads 8192"),
    ],
)
def test_what_herald_would_ignore_or_refuse_fails_here(
    secret: str, channels: list[str], ttl: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        mint_subscriber_token(secret, channels, ttl_seconds=ttl)


@pytest.fixture
def secured(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory(JWT_SECRET=SECRET, ALLOW_ANONYMOUS="false")


@pytest.mark.integration
async def test_a_real_server_opens_the_granted_channel_only(secured: ServerProcess) -> None:
    token = mint_subscriber_token(SECRET, ["orders/{id}"], ttl_seconds=60)
    url = secured.base_url
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        other = await client.get("/events/news", headers={"Authorization": f"Bearer {token}"})
        assert other.status_code == 403 and "does not grant" in other.json()["detail"]
        anonymous = await client.get("/events/orders/42")
        assert anonymous.status_code == 401
    publisher = mint_token(SECRET, publish="orders/{id}", ttl_seconds=60)
    async with (
        open_stream(url, "/events/orders/42", {"Authorization": f"Bearer {token}"}) as header,
        open_stream(url, f"/events/orders/42?access_token={token}") as query,
    ):
        await asyncio.gather(header.position(), query.position())
        with HeraldPublisher(url, token=publisher) as herald:
            result = herald.publish("orders/42", "for granted eyes", private=True)
        for stream in (header, query):
            message = await stream.next_event()
            assert (message.id, message.data) == (result.id, "for granted eyes")


@pytest.mark.integration
def test_a_minted_publish_grant_is_refused_elsewhere_without_retrying(
    secured: ServerProcess,
) -> None:
    transport = RecordingTransport()
    token = mint_token(SECRET, publish=["orders/{id}"], ttl_seconds=60)
    with (
        httpx.Client(transport=transport) as http,
        HeraldPublisher(secured.base_url, token=token, http_client=http) as herald,
        pytest.raises(PublishRejected) as refusal,
    ):
        herald.publish("news", "not granted")
    assert refusal.value.status == 403 and "does not grant" in str(refusal.value.detail)
    assert len(transport.attempts) == 1
