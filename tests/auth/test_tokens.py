"""JWT verification and Mercure-shaped grants."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, x25519
from pydantic import SecretStr

from app.auth.grants import ANONYMOUS, Grants, compile_selector
from app.auth.tokens import InvalidTokenError, TokenVerifier

SECRET = "a-test-secret-of-decent-length-123"


def hs256(claims: dict[str, object], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def grant(publish: list[str] | None = None, subscribe: list[str] | None = None) -> dict:
    return {"mercure": {"publish": publish or [], "subscribe": subscribe or []}}


def pem(public_key: object) -> str:
    return public_key.public_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@pytest.mark.parametrize(
    ("selector", "channel", "matches"),
    [
        ("*", "anything/at/all", True),
        ("news", "news", True),
        ("news", "news2", False),
        ("news", "new", False),
        ("users/{id}/inbox", "users/42/inbox", True),
        ("users/{id}/inbox", "users/4/2/inbox", False),
        ("users/{id}/inbox", "users//inbox", False),
        ("users/{id}/inbox", "users/42/inbox/x", False),
        ("a.b", "aXb", False),  # dots are literal, not regex wildcards
        ("{org}/{repo}", "herald/core", True),
    ],
)
def test_selectors(selector: str, channel: str, matches: bool) -> None:
    compiled = compile_selector(selector)
    assert compiled is not None
    assert compiled.matches(channel) is matches


@pytest.mark.parametrize("bad", ["", "users/{id", "users/id}", "{1bad}", 5, None, "x" * 300])
def test_malformed_selectors_match_nothing(bad: object) -> None:
    assert compile_selector(bad) is None


def test_grants_from_claims_ignore_junk() -> None:
    grants = Grants.from_claims({"mercure": {"publish": ["a", 7, "{"], "subscribe": "news"}})
    assert grants.can_publish("a")
    assert not grants.can_publish("b")
    assert not grants.can_subscribe("news")  # not a list: grants nothing
    assert Grants.from_claims({}).subscribe == ()
    assert not ANONYMOUS.authenticated
    assert ANONYMOUS.private_channels(["a"]) == frozenset()


def test_private_channels_are_the_granted_ones() -> None:
    grants = Grants.from_claims(grant(subscribe=["users/{id}/inbox"]))
    assert grants.private_channels(["users/1/inbox", "news"]) == {"users/1/inbox"}


def test_hs256_token_round_trip() -> None:
    verifier = TokenVerifier(secret=SecretStr(SECRET))
    grants = verifier.verify(hs256(grant(publish=["a"], subscribe=["*"])))
    assert grants.can_publish("a") and not grants.can_publish("b")
    assert grants.can_subscribe("whatever")


@pytest.mark.parametrize(
    ("token_factory", "detail"),
    [
        (lambda: hs256({**grant(), "exp": int(time.time()) - 120}), "expired"),
        (lambda: hs256({**grant(), "nbf": int(time.time()) + 120}), "not valid yet"),
        (lambda: hs256(grant(), secret="another-secret-of-decent-length-456"), "signature"),
        (lambda: "not.a.jwt", "malformed"),
        (lambda: "", "malformed"),
        (lambda: jwt.encode(grant(), None, algorithm="none"), "algorithm"),
        (lambda: "x" * 9000, "too long"),
    ],
)
def test_bad_tokens_are_refused_with_a_clear_reason(token_factory, detail: str) -> None:  # type: ignore[no-untyped-def]
    verifier = TokenVerifier(secret=SecretStr(SECRET))
    with pytest.raises(InvalidTokenError, match=detail):
        verifier.verify(token_factory())


def test_leeway_accepts_a_token_just_expired() -> None:
    verifier = TokenVerifier(secret=SecretStr(SECRET), leeway_seconds=30)
    assert verifier.verify(hs256({**grant(["a"]), "exp": int(time.time()) - 5})).can_publish("a")


def test_rs256_and_es256_with_a_public_key() -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_verifier = TokenVerifier(public_key=pem(rsa_key.public_key()))
    ec_verifier = TokenVerifier(public_key=pem(ec_key.public_key()))
    claims = grant(subscribe=["news"])
    assert rsa_verifier.verify(jwt.encode(claims, rsa_key, algorithm="RS256")).can_subscribe("news")
    assert ec_verifier.verify(jwt.encode(claims, ec_key, algorithm="ES256")).can_subscribe("news")
    # Each key only for its own family.
    with pytest.raises(InvalidTokenError, match="algorithm"):
        rsa_verifier.verify(jwt.encode(claims, ec_key, algorithm="ES256"))


@pytest.mark.parametrize("private_key", [ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey])
def test_eddsa_with_an_ed25519_or_ed448_public_key(private_key: type[Any]) -> None:
    key = private_key.generate()
    verifier = TokenVerifier(public_key=pem(key.public_key()))
    claims = grant(subscribe=["news"])
    assert verifier.algorithms == ["EdDSA"]
    assert verifier.verify(jwt.encode(claims, key, algorithm="EdDSA")).can_subscribe("news")
    # Another Ed key's signature, and other families, are refused.
    with pytest.raises(InvalidTokenError, match="signature"):
        verifier.verify(jwt.encode(claims, private_key.generate(), algorithm="EdDSA"))
    ec_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(InvalidTokenError, match="algorithm"):
        verifier.verify(jwt.encode(claims, ec_key, algorithm="ES256"))
    with pytest.raises(InvalidTokenError, match="algorithm"):
        verifier.verify(hs256(claims))


def test_a_key_exchange_key_is_rejected_at_start() -> None:
    # X25519 is the easy mix-up with Ed25519: it encrypts, it does not sign.
    with pytest.raises(ValueError, match="Ed25519"):
        TokenVerifier(public_key=pem(x25519.X25519PrivateKey.generate().public_key()))


def test_hs_rs_confusion_is_refused() -> None:
    """Signing HS256 with the RSA public key as the secret must not pass."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = pem(rsa_key.public_key())
    verifier = TokenVerifier(public_key=public_pem)
    forged = jwt.api_jws.PyJWS().encode(  # bypass PyJWT's own guard against PEM secrets
        b'{"mercure":{"publish":["*"]}}',
        key=b"unused-but-long-enough-for-hs256-key",
        algorithm="HS256",
    )
    header, payload, _ = forged.split(".")
    import base64
    import hashlib
    import hmac

    signature = hmac.new(public_pem.encode(), f"{header}.{payload}".encode(), hashlib.sha256)
    token = (
        f"{header}.{payload}." + base64.urlsafe_b64encode(signature.digest()).rstrip(b"=").decode()
    )
    with pytest.raises(InvalidTokenError, match="algorithm"):
        verifier.verify(token)


def test_non_pem_public_key_is_rejected_at_start() -> None:
    with pytest.raises(ValueError):
        TokenVerifier(public_key="not a key")
