"""Mercure access tokens: RFC 9068 checks, then ``authorization_details``.

Design decisions:

1. What hubs must enforce, and no more: ``typ`` ``at+jwt``, the algorithm pinned
   by the configured key (``app.auth.tokens``), ``exp`` required, ``nbf`` when
   present, ``aud`` containing ``JWT_AUDIENCE``, ``iss`` one of ``JWT_ISSUER``.
   ``sub``, ``client_id``, ``iat`` and ``jti`` are issuer obligations the hub does
   not rely on (subscriber ids are random), so a token without them is accepted —
   the official conformance suite's token has none.
2. ``authorization_details`` all or nothing: a Mercure detail that fails to parse
   (bad ``actions``, ``topics``, ``match_type``, a matcher over the length limit,
   too many details or topics) rejects the whole token as ``invalid_token``;
   details of other types are ignored, unknown actions grant nothing.
3. Every failure is ``InvalidTokenError`` with a client-safe message; the route
   answers all of them with the same ``invalid_token`` challenge (the message is
   for logs of the operator's own tests, never the token itself).
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass

from app.auth.tokens import InvalidTokenError, TokenVerifier
from app.mercure.matchers import EXACT, InvalidMatcherError, Matcher, parse_matcher

__all__ = [
    "AUTHORIZATION_DETAIL_TYPE",
    "MercureGrants",
    "ReadGrant",
    "read_grant",
    "verify_access_token",
]

AUTHORIZATION_DETAIL_TYPE = "https://mercure.rocks/authorization-detail"
ACCESS_TOKEN_TYPES = frozenset({"at+jwt"})
MAX_DETAILS = 64
MAX_TOPICS_PER_DETAIL = 256
READ_CACHE_SIZE = 256


@dataclass(frozen=True, slots=True)
class SubscribeGrant:
    matchers: tuple[Matcher, ...]
    payload: dict[str, object] | None


@dataclass(frozen=True, slots=True)
class MercureGrants:
    """What one token allows; ``ANONYMOUS`` (no token) allows nothing private."""

    publish: tuple[Matcher, ...] = ()
    subscribe: tuple[SubscribeGrant, ...] = ()

    def can_publish(self, topic: str) -> bool:
        return any(m.matches(topic) for m in self.publish)

    def can_subscribe(self, topic: str) -> bool:
        return any(m.matches(topic) for grant in self.subscribe for m in grant.matchers)

    def can_read_any(self, topics: Iterable[str]) -> bool:
        return any(self.can_subscribe(topic) for topic in topics)

    def payload_for(self, matcher_source: str) -> dict[str, object] | None:
        """The payload of the first subscribe detail matching the subscription's matcher
        string taken as a topic (the spec's rule)."""
        for grant in self.subscribe:
            if any(m.matches(matcher_source) for m in grant.matchers):
                return grant.payload
        return None


ANONYMOUS = MercureGrants()


class ReadGrant:
    """``topic in grant``: may this subscriber read private events of ``topic``. The hub
    asks once per private event per subscriber; answers are cached (bounded)."""

    __slots__ = ("_answers", "_grants")

    def __init__(self, grants: MercureGrants) -> None:
        self._grants = grants
        self._answers: dict[str, bool] = {}

    def __contains__(self, topic: object) -> bool:
        if not isinstance(topic, str) or not self._grants.subscribe:
            return False
        answer = self._answers.get(topic)
        if answer is None:
            if len(self._answers) >= READ_CACHE_SIZE:
                self._answers.clear()
            answer = self._answers[topic] = self._grants.can_subscribe(topic)
        return answer


_NO_PRIVATE_TOPICS: frozenset[str] = frozenset()


def read_grant(grants: MercureGrants) -> Container[str]:
    """What a stream asks ``topic in ...`` of. Kept for the stream's whole life, so
    grants that read nothing private (every anonymous stream) share one empty set."""
    return ReadGrant(grants) if grants.subscribe else _NO_PRIVATE_TOPICS


def verify_access_token(
    verifier: TokenVerifier,
    token: str,
    *,
    audience: str | None,
    issuers: list[str],
    hub_url: str,
    max_matcher_length: int,
) -> tuple[MercureGrants, float]:
    """The grants of a valid Mercure access token and its ``exp``; raises
    ``InvalidTokenError``."""
    if audience is None:
        raise InvalidTokenError("this hub accepts no token: JWT_AUDIENCE is not set")
    if not issuers:
        raise InvalidTokenError("this hub accepts no token: JWT_ISSUER is not set")
    claims = verifier.decode(
        token, types=ACCESS_TOKEN_TYPES, audience=audience, issuers=issuers, require=("exp",)
    )
    expires = claims["exp"]
    if not isinstance(expires, int | float):
        raise InvalidTokenError("exp must be a number")
    return _grants(claims.get("authorization_details"), hub_url, max_matcher_length), expires


def _grants(details: object, hub_url: str, max_length: int) -> MercureGrants:
    if details is None:
        return ANONYMOUS
    if not isinstance(details, list):
        raise InvalidTokenError("authorization_details must be an array")
    if len(details) > MAX_DETAILS:
        raise InvalidTokenError(f"more than {MAX_DETAILS} authorization details")
    publish: list[Matcher] = []
    subscribe: list[SubscribeGrant] = []
    for detail in details:
        if not isinstance(detail, dict) or detail.get("type") != AUTHORIZATION_DETAIL_TYPE:
            continue  # another API's detail: not ours to judge
        actions = detail.get("actions")
        if not isinstance(actions, list) or not actions:
            raise InvalidTokenError("a Mercure detail needs a non-empty actions array")
        if not all(isinstance(action, str) for action in actions):
            raise InvalidTokenError("actions must be strings")
        matchers = _matchers(detail.get("topics"), hub_url, max_length)
        payload = detail.get("payload")
        if payload is not None and not isinstance(payload, dict):
            raise InvalidTokenError("payload must be an object")
        if "publish" in actions:
            publish.extend(matchers)
        if "subscribe" in actions:
            subscribe.append(SubscribeGrant(matchers, payload))
    return MercureGrants(tuple(publish), tuple(subscribe))


def _matchers(topics: object, hub_url: str, max_length: int) -> tuple[Matcher, ...]:
    if not isinstance(topics, list) or not topics:
        raise InvalidTokenError("a Mercure detail needs a non-empty topics array")
    if len(topics) > MAX_TOPICS_PER_DETAIL:
        raise InvalidTokenError(f"more than {MAX_TOPICS_PER_DETAIL} topics in one detail")
    matchers: list[Matcher] = []
    for entry in topics:
        if not isinstance(entry, dict) or not isinstance(entry.get("match"), str):
            raise InvalidTokenError("each topic matcher must be an object with a match string")
        kind = entry.get("match_type", EXACT)
        if not isinstance(kind, str):
            raise InvalidTokenError("match_type must be a string")
        try:
            matchers.append(
                parse_matcher(kind, entry["match"], hub_url=hub_url, max_length=max_length)
            )
        except InvalidMatcherError as exc:
            raise InvalidTokenError(f"invalid topic matcher: {exc}") from None
    return tuple(matchers)
