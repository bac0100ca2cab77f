"""POST /.well-known/mercure against a real server: every validation rule is a 400, every
size limit a 413, authorization per RFC 6750, and a good publish answers 200 text/plain
with the id."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.mercure.tokens import AUDIENCE, ISSUER, MERCURE_ENV, detail, token
from tests.support.server import ServerProcess

pytestmark = pytest.mark.integration

HUB = "/.well-known/mercure"
PUBLISHER = token(detail(["publish"], "*"))
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    process = ServerProcess(
        {**MERCURE_ENV, "MERCURE_MAX_TOPICS": "3", "MERCURE_MAX_BODY_BYTES": "2048"}
    ).start()
    yield process
    process.close()


def post(server: ServerProcess, body: str, auth: str | None = PUBLISHER) -> httpx.Response:
    headers = dict(FORM)
    if auth is not None:
        headers["Authorization"] = f"Bearer {auth}"
    return httpx.post(server.base_url + HUB, content=body.encode(), headers=headers)


def test_a_publish_answers_200_text_plain_with_the_supplied_id(server: ServerProcess) -> None:
    response = post(server, "topic=https://example.com/books/1&id=urn:x:1&data=hi")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == "urn:x:1"


def test_without_an_id_the_hub_generates_an_iri(server: ServerProcess) -> None:
    response = post(server, "topic=a&data=hi")
    assert response.status_code == 200
    assert response.text.startswith("urn:uuid:")


def test_unknown_fields_are_ignored(server: ServerProcess) -> None:
    assert post(server, "topic=a&data=hi&future_field=1").status_code == 200


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("data=no-topic", "topic"),
        ("topic=*", "wildcard"),
        ("topic=/.well-known/mercure", "reserved"),
        ("topic=/.well-known/mercure/subscriptions/exact/a/b", "reserved"),
        ("topic=https://hub.example/.well-known/%256Dercure/x", "reserved"),
        ("topic=https://x/.well-known/mercure/../mercure/subscriptions", "reserved"),
        ("topic=a&topic=/.well-known/mercure/x", "reserved"),
        ("topic=a%0Ab", "U+000A"),
        ("topic=a%C2%85b", "U+0085"),
        ("topic=a%E2%80%8Bb", "U+200B"),
        ("topic=", "empty"),
        ("topic=a&id=%23fragment", "#"),
        ("topic=a&id=earliest", "earliest"),
        ("topic=a&id=1795245896512-0", "positions"),
        ("topic=a&id=x%0Dy", "U+000D"),
        ("topic=a&type=mercure", "mercure"),
        ("topic=a&type=x%0Ay", "U+000A"),
        ("topic=a&retry=12a", "digits"),
        ("topic=a&retry=%EF%BC%91", "digits"),  # a full-width digit is not ASCII
        ("topic=a&data=%FF", "UTF-8"),
    ],
)
def test_invalid_publishes_are_400_and_publish_nothing(
    server: ServerProcess, body: str, why: str
) -> None:
    response = post(server, body)
    assert response.status_code == 400, (body, response.text)
    assert why.lower() in response.json()["detail"].lower()


def test_a_form_body_is_required(server: ServerProcess) -> None:
    response = httpx.post(
        server.base_url + HUB,
        json={"topic": "a"},
        headers={"Authorization": f"Bearer {PUBLISHER}"},
    )
    assert response.status_code == 400


@pytest.mark.parametrize(
    "body",
    ["topic=a&topic=b&topic=c&topic=d", "topic=a&data=" + "x" * 4096, "topic=" + "t" * 2100],
)
def test_size_limits_are_413(server: ServerProcess, body: str) -> None:
    assert post(server, body).status_code == 413


def test_no_token_is_401_with_a_challenge_naming_the_metadata_and_no_error(
    server: ServerProcess,
) -> None:
    response = post(server, "topic=a", auth=None)
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert (
        f'resource_metadata="{server.base_url}/.well-known/oauth-protected-resource'
        '/.well-known/mercure"' in challenge
    )
    assert "error=" not in challenge


@pytest.mark.parametrize(
    "bad",
    [
        token(detail(["publish"], "*"), typ="JWT"),
        token(detail(["publish"], "*"), aud="https://other.example/.well-known/mercure"),
        token(detail(["publish"], "*"), iss="https://untrusted.example"),
        token(detail(["publish"], "*"), exp=None),
        token(detail(["publish"], "*"), exp=1),
        token(detail(["publish"], "*"), nbf=4102444800),
        token(detail(["publish"], "*"), secret="another-secret-that-is-32-bytes-long!"),
        token(detail(["publish"], {"match": "a", "match_type": "regex"})),
        token(detail(["publish"], {"match": "https://[", "match_type": "urlpattern"})),
        token(detail([], "*")),
        token(detail(["publish", 7], "*")),  # type: ignore[list-item]
        token(detail(["publish"])),
        "not-a-jwt",
    ],
)
def test_every_bad_token_is_401_invalid_token(server: ServerProcess, bad: str) -> None:
    response = post(server, "topic=a", auth=bad)
    assert response.status_code == 401, response.text
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert "resource_metadata=" in response.headers["www-authenticate"]


def test_application_at_jwt_is_the_same_type(server: ServerProcess) -> None:
    accepted = token(detail(["publish"], "*"), typ="application/AT+JWT")
    assert post(server, "topic=a", auth=accepted).status_code == 200


def test_aud_may_be_an_array_holding_the_hub(server: ServerProcess) -> None:
    accepted = token(detail(["publish"], "*"), aud=["https://x", MERCURE_ENV["JWT_AUDIENCE"]])
    assert post(server, "topic=a", auth=accepted).status_code == 200


def test_unknown_actions_grant_nothing_and_do_not_invalidate(server: ServerProcess) -> None:
    response = post(server, "topic=a", auth=token(detail(["teleport"], "*")))
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


def test_publish_needs_a_grant_for_the_topic(server: ServerProcess) -> None:
    narrow = token(
        detail(["publish"], {"match": "https://example.com/books/:id", "match_type": "urlpattern"})
    )
    assert post(server, "topic=https://example.com/books/1", auth=narrow).status_code == 200
    response = post(server, "topic=https://example.com/users/1", auth=narrow)
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


def test_a_cookie_publish_must_come_from_the_same_origin(server: ServerProcess) -> None:
    cookie = {"Cookie": f"__Secure-mercure_access_token={PUBLISHER}", **FORM}
    host = server.base_url.removeprefix("http://")
    refused = httpx.post(server.base_url + HUB, content=b"topic=a", headers=cookie)
    assert refused.status_code == 403
    same = httpx.post(
        server.base_url + HUB,
        content=b"topic=a",
        headers={**cookie, "Origin": f"http://{host}"},
    )
    assert same.status_code == 200


def test_the_authorization_header_wins_over_the_cookie(server: ServerProcess) -> None:
    headers = {
        "Cookie": "__Secure-mercure_access_token=garbage",
        "Authorization": f"Bearer {PUBLISHER}",
        **FORM,
    }
    assert httpx.post(server.base_url + HUB, content=b"topic=a", headers=headers).is_success


def test_protected_resource_metadata(server: ServerProcess) -> None:
    response = httpx.get(server.base_url + "/.well-known/oauth-protected-resource" + HUB)
    assert response.status_code == 200
    document = response.json()
    assert document["resource"] == MERCURE_ENV["JWT_AUDIENCE"]
    assert document["authorization_details_types_supported"] == [
        "https://mercure.rocks/authorization-detail"
    ]
    assert document["bearer_methods_supported"] == ["header"]
    assert document["mercure_cookie"] == "__Secure-mercure_access_token"
    assert document["mercure_subscriptions"] is True


def test_an_ed25519_public_key_verifies_eddsa_tokens(
    server_factory: Callable[..., ServerProcess],
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    server = server_factory(
        JWT_AUDIENCE=AUDIENCE, JWT_ISSUER=ISSUER, JWT_PUBLIC_KEY=public_pem.decode()
    )
    eddsa = token(detail(["publish"], "*"), secret=key, algorithm="EdDSA")
    response = post(server, "topic=https://example.com/ed/1&data=signed", auth=eddsa)
    assert response.status_code == 200, response.text
    # Only the configured key's family: an HS256 token (no JWT_SECRET here) is refused.
    refused = post(server, "topic=https://example.com/ed/1&data=x")
    assert refused.status_code == 401
    assert 'error="invalid_token"' in refused.headers["www-authenticate"]
    other = token(
        detail(["publish"], "*"), secret=ed25519.Ed25519PrivateKey.generate(), algorithm="EdDSA"
    )
    assert post(server, "topic=https://example.com/ed/1&data=x", auth=other).status_code == 401
