"""Verifying JWTs: signature, algorithm, ``exp``/``nbf``; then the grants they carry.

The algorithm is pinned by configuration, never taken from the token alone:
``JWT_SECRET`` admits HS256 only, ``JWT_PUBLIC_KEY`` admits RS256 (an RSA key),
ES256 (an EC key) or EdDSA (an Ed25519 or Ed448 key) only, and each key is used
only for its own family. So
``alg: none`` is refused, and so is the classic confusion of signing HS256 with
the public key as the HMAC secret.

``decode`` is the shared core: Herald's routes read grants from its claims, the
Mercure hub (``app.mercure.tokens``) adds the RFC 9068 checks (``typ``, ``aud``,
``iss``, a required ``exp``) through its keyword arguments.
"""

from __future__ import annotations

from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from pydantic import SecretStr

from app.auth.grants import Grants

__all__ = ["DEFAULT_LEEWAY_SECONDS", "InvalidTokenError", "TokenVerifier"]

DEFAULT_LEEWAY_SECONDS = 30.0
MAX_TOKEN_LENGTH = 8192


class InvalidTokenError(Exception):
    """Malformed, badly signed, expired or not yet valid; the message is client-safe."""


@dataclass(frozen=True)
class _Key:
    algorithm: str
    material: object


class TokenVerifier:
    def __init__(
        self,
        *,
        secret: SecretStr | None = None,
        public_key: str | None = None,
        leeway_seconds: float = DEFAULT_LEEWAY_SECONDS,
    ) -> None:
        self._keys: dict[str, _Key] = {}
        if secret is not None:
            self._keys["HS256"] = _Key("HS256", secret.get_secret_value().encode())
        if public_key:
            loaded = load_pem_public_key(public_key.encode())
            if isinstance(loaded, rsa.RSAPublicKey):
                self._keys["RS256"] = _Key("RS256", loaded)
            elif isinstance(loaded, ec.EllipticCurvePublicKey):
                self._keys["ES256"] = _Key("ES256", loaded)
            elif isinstance(loaded, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
                # RFC 8037: one JWS name, EdDSA, for both curves; the key says which.
                self._keys["EdDSA"] = _Key("EdDSA", loaded)
            else:
                raise ValueError(
                    "JWT_PUBLIC_KEY must be an RSA, EC, Ed25519 or Ed448 public key in PEM"
                )
        self.leeway_seconds = leeway_seconds

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    @property
    def algorithms(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, token: str) -> Grants:
        return Grants.from_claims(self.decode(token))

    def decode(
        self,
        token: str,
        *,
        types: frozenset[str] | None = None,
        audience: str | None = None,
        issuers: list[str] | None = None,
        require: tuple[str, ...] = (),
    ) -> dict[str, object]:
        """The verified claims. ``types``: accepted ``typ`` header values (lower case,
        ``application/`` prefix removed); ``audience`` must be in ``aud``; ``iss`` must be
        one of ``issuers``; ``require``: claims that must be present."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidTokenError("token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidTokenError("malformed token") from None
        algorithm = header.get("alg")
        if types is not None:
            typ = header.get("typ")
            kind = typ.lower().removeprefix("application/") if isinstance(typ, str) else None
            if kind not in types:
                raise InvalidTokenError("token type (typ) not accepted here")
        key = self._keys.get(algorithm) if isinstance(algorithm, str) else None
        if key is None:
            raise InvalidTokenError(
                f"token algorithm not accepted here (accepted: {', '.join(self.algorithms)})"
            )
        try:
            claims = jwt.decode(
                token,
                key.material,  # type: ignore[arg-type, unused-ignore]
                algorithms=[key.algorithm],
                leeway=self.leeway_seconds,
                audience=audience,
                issuer=issuers,
                options={"require": list(require), "verify_aud": audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidTokenError("token has expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidTokenError("token is not valid yet (nbf)") from None
        except jwt.InvalidSignatureError:
            raise InvalidTokenError("token signature is invalid") from None
        except jwt.InvalidAudienceError:
            raise InvalidTokenError("token audience (aud) is not this hub") from None
        except jwt.InvalidIssuerError:
            raise InvalidTokenError("token issuer (iss) is not trusted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidTokenError(f"token lacks the {exc.claim!r} claim") from None
        except jwt.PyJWTError:
            raise InvalidTokenError("malformed token") from None
        if not isinstance(claims, dict):
            raise InvalidTokenError("malformed token")
        return claims
