"""The subscribe/publish decisions: every token source, every status."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest
from fastapi import HTTPException
from starlette.requests import Request

from app.auth.requests import (
    authorize_subscriber,
    bearer_token,
    publisher_grants,
    subscriber_token,
)
from app.auth.tokens import TokenVerifier
from app.core.config import Settings, load_settings
from app.publishing import PublishForbiddenError, PublishRefusedError, check_channels

SECRET = "subscriber-test-secret-0123456789abcdef"


@pytest.fixture(autouse=True)
def _no_stray_env_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)


def request(headers: dict[str, str] | None = None, query: str = "", cookies: str = "") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if cookies:
        raw.append((b"cookie", cookies.encode()))
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": raw,
        "query_string": query.encode(),
    }
    return Request(scope)


def token(publish: list[str] | None = None, subscribe: list[str] | None = None) -> str:
    claims = {"mercure": {"publish": publish or [], "subscribe": subscribe or []}}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def settings(**overrides: object) -> Settings:
    return load_settings(jwt_secret=SECRET, **overrides)


def verifier(config: Settings) -> TokenVerifier:
    return TokenVerifier(secret=config.jwt_secret)


def status(call: object) -> int:
    with pytest.raises((HTTPException, PublishRefusedError)) as raised:
        call()  # type: ignore[operator]
    refusal = raised.value
    return refusal.status_code if isinstance(refusal, HTTPException) else refusal.status


@pytest.mark.parametrize("where", ["header", "cookie", "query"])
def test_subscriber_token_from_each_place(where: str) -> None:
    value = token(subscribe=["inbox"])
    req = {
        "header": lambda: request({"Authorization": f"Bearer {value}"}),
        "cookie": lambda: request(cookies=f"herald_auth={value}"),
        "query": lambda: request(query=f"access_token={value}"),
    }[where]()
    config = settings()
    assert subscriber_token(req, "herald_auth") == value
    assert authorize_subscriber(req, config, verifier(config), ["inbox"]) == {"inbox"}


def test_anonymous_subscribers_see_no_private_channels_or_are_refused() -> None:
    config = settings()
    assert authorize_subscriber(request(), config, verifier(config), ["news"]) == frozenset()
    strict = settings(allow_anonymous=False)
    assert (
        status(lambda: authorize_subscriber(request(), strict, verifier(strict), ["news"])) == 401
    )


def test_subscriber_bad_token_401_and_ungranted_channel_403() -> None:
    config = settings()
    bad = request({"Authorization": "Bearer garbage"})
    assert status(lambda: authorize_subscriber(bad, config, verifier(config), ["a"])) == 401
    narrow = request({"Authorization": f"Bearer {token(subscribe=['a'])}"})
    assert status(lambda: authorize_subscriber(narrow, config, verifier(config), ["a", "b"])) == 403


def test_publisher_matrix() -> None:
    config = settings(publish_token="simple-publish-token")
    check = verifier(config)

    def publish(headers: dict[str, str], channel: str = "orders/1") -> None:
        grants = publisher_grants(bearer_token(request(headers)), config, check, "10.0.0.1")
        if grants is not None:
            check_channels(grants, [channel])

    publish({"Authorization": "Bearer simple-publish-token"})  # simple mode still works
    publish({"Authorization": f"Bearer {token(publish=['orders/{id}'])}"})
    assert status(lambda: publish({})) == 401
    assert status(lambda: publish({"Authorization": "Bearer not-a-jwt"})) == 401
    assert status(lambda: publish({"Authorization": f"Bearer {token(publish=['x'])}"})) == 403
    # A subscribe-only grant does not publish.
    assert status(lambda: publish({"Authorization": f"Bearer {token(subscribe=['*'])}"})) == 403


def test_without_any_publisher_secret_only_loopback_publishes() -> None:
    config = load_settings()
    check = verifier(config)
    assert publisher_grants(None, config, check, "127.0.0.1") is None  # may publish anywhere
    assert status(lambda: publisher_grants(None, config, check, "203.0.113.9")) == 403


def test_a_batch_needs_grants_for_every_channel_it_names() -> None:
    config = settings()
    grants = publisher_grants(token(publish=["orders/{id}"]), config, verifier(config), "10.0.0.1")
    assert grants is not None
    check_channels(grants, ["orders/1", "orders/2"])
    with pytest.raises(PublishForbiddenError) as refused:
        check_channels(grants, ["orders/1", "users/1"], "item 4: ")
    assert refused.value.status == 403
    assert refused.value.detail == "item 4: token does not grant publishing to 'users/1'"
