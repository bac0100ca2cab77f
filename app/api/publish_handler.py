"""Publishing a request's events: one function behind both doors to ``POST /events``.

:class:`app.middleware.publish_fast_path.PublishFastPath` answers every publish
with :func:`handle_publish` before FastAPI sees it; the documented routes in
``app.api.routes.events`` call the same function (they are what the OpenAPI
schema shows, and what answers if the fast path is not installed). So the
rules, status codes and ``{"detail": ...}`` bodies cannot drift apart.

Design decisions (read before changing):

1. Nothing here runs in a thread and nothing is built per request that can be
   built once: the headers are read in one pass over the ASGI scope, the body
   straight from ``receive``, the answer is bytes. A profile of the FastAPI
   route showed three thread hops per publish (sync dependencies run in
   anyio's worker threads) and the framework's per-request machinery costing
   ten times the publish itself.
2. The order of checks is the order of cost and of what they reveal: who is
   publishing (401/403) and its rate (429) before the body is read; then size
   (413), type (415) and shape (422, naming the item of a batch); then the
   grants of every channel named (403); only then the broker (503). All or
   nothing: a refused request has published nothing and consumed no id.
3. ``PUBLISH_RATE_PER_SECOND`` counts requests: a batch spends one token, and
   is itself bounded by ``PUBLISH_BATCH_MAX`` and ``MAX_BATCH_BYTES``.
4. Answers are built as bytes without a JSON encoder: ids and channel names
   are validated ASCII without quotes or backslashes (``CHANNEL_PATTERN``).
5. What a publish reads is gathered once per lifespan in a :class:`PublishContext`
   (``HeraldApp.publishing``): Starlette's ``State`` resolves each attribute in
   Python, and the four a publish needs cost 1.5 µs, a sixth of the handler.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from fastapi import HTTPException
from starlette.types import Receive, Scope

from app.api.publishing import (
    ClientGoneError,
    PublishItem,
    parse_batch,
    parse_single,
    read_body,
)
from app.auth.client_address import TrustedProxies
from app.auth.requests import bearer_from_header, check_publish, publisher_grants
from app.auth.tokens import TokenVerifier
from app.broker.base import BrokerUnavailableError, Draft
from app.core.config import Settings
from app.limits import LimitExceededError, publisher_key
from app.sse.encoding import EncodingError, encode_parsed_body
from app.sse.event import Event
from app.sse.hub import Hub, InvalidChannelError, event_channels, validate_channel

__all__ = ["PublishAnswer", "PublishContext", "handle_publish"]

UNAVAILABLE_RETRY_AFTER = "5"
_JSON = b"application/json"


@dataclass(frozen=True, slots=True)
class PublishContext:
    """What every publish reads, built once per lifespan (design note 5)."""

    settings: Settings
    hub: Hub
    proxies: TrustedProxies
    tokens: TokenVerifier


@dataclass(slots=True)
class PublishAnswer:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]


def _answer(status: int, body: bytes) -> PublishAnswer:
    headers = [(b"content-type", _JSON), (b"content-length", b"%d" % len(body))]
    return PublishAnswer(status, body, headers)


def _refusal(exc: HTTPException) -> PublishAnswer:
    body = json.dumps({"detail": exc.detail}, ensure_ascii=False, separators=(",", ":")).encode()
    answer = _answer(exc.status_code, body)
    for name, value in (exc.headers or {}).items():
        answer.headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    return answer


class _Headers:
    """The request headers a publish needs, read in one pass (uvicorn lowercases names)."""

    __slots__ = ("authorization", "content_length", "forwarded_for", "media_type")

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        self.authorization = ""
        self.content_length: bytes | None = None
        self.forwarded_for: str | None = None
        media_type = b"application/json"
        for name, value in raw:
            if name == b"content-type":
                media_type = value
            elif name == b"content-length":
                self.content_length = value
            elif name == b"authorization":
                self.authorization = value.decode("latin-1")
            elif name == b"x-forwarded-for":
                self.forwarded_for = value.decode("latin-1")
        if media_type == b"application/json":
            self.media_type = "application/json"
        else:
            self.media_type = media_type.decode("latin-1").split(";")[0].strip().lower()


async def handle_publish(
    context: PublishContext, scope: Scope, receive: Receive, channel: str | None
) -> PublishAnswer | None:
    """Publish what the request asks: ``channel`` is the path's (``POST /events/<channel>``)
    or None (``POST /events``: a batch, or one event naming its channels). Returns the
    answer to send, or None when the client went away before its body arrived."""
    try:
        return await _publish(context, scope, receive, channel)
    except HTTPException as exc:
        return _refusal(exc)
    except ClientGoneError:
        return None


async def _publish(
    context: PublishContext, scope: Scope, receive: Receive, channel: str | None
) -> PublishAnswer:
    settings, hub = context.settings, context.hub
    headers = _Headers(scope["headers"])
    peer = scope.get("client")
    client = context.proxies.client(peer[0] if peer else "", headers.forwarded_for)
    token = bearer_from_header(headers.authorization) if headers.authorization else None
    grants = publisher_grants(token, settings, context.tokens, client)
    if channel is not None:
        check_publish(grants, (channel,))
    if hub.limits.publishes_limited:  # the key hashes the token: only worth it when limited
        try:
            await hub.limits.take_publish(publisher_key(token, client))
        except LimitExceededError as exc:
            raise HTTPException(
                429, exc.detail, headers={"Retry-After": str(exc.retry_after)}
            ) from None
    batch = False
    if channel is not None:
        try:
            validate_channel(channel)
        except InvalidChannelError as exc:
            raise HTTPException(422, str(exc)) from None
        body = await read_body(
            receive, headers.content_length, settings.max_event_bytes, "MAX_EVENT_BYTES"
        )
        items = [parse_single(body, headers.media_type, channel)]
    else:
        body = await read_body(
            receive, headers.content_length, settings.max_batch_bytes, "MAX_BATCH_BYTES"
        )
        items, batch = parse_batch(body, headers.media_type, settings.publish_batch_max)
    drafts = _drafts(hub, items, batch, checked_size=channel is not None)
    if grants is not None:
        for index, draft in enumerate(drafts):
            check_publish(grants, draft.channels, _where(index, batch))
    try:
        events = await hub.publish_drafts(drafts)
    except BrokerUnavailableError as exc:
        raise HTTPException(
            503, str(exc), headers={"Retry-After": UNAVAILABLE_RETRY_AFTER}
        ) from None
    if batch:
        return _answer(202, b'{"ids":["' + '","'.join(e.id for e in events).encode() + b'"]}')
    return _answer(202, _published(hub, events[0]))


def _drafts(hub: Hub, items: list[PublishItem], batch: bool, *, checked_size: bool) -> list[Draft]:
    """The request's events, encoded; 422 or 413 naming the first item that cannot be.
    A batch repeats its channels: each distinct list is validated once (and the events
    share its tuple in history)."""
    limit, max_bytes = hub.settings.publish_max_channels, hub.settings.max_event_bytes
    validated: dict[tuple[str, ...], tuple[str, ...]] = {}
    drafts = []
    for index, item in enumerate(items):
        try:
            asked = tuple(item.channels)
            names = validated.get(asked)
            if names is None:
                names = validated[asked] = event_channels(asked, limit)
            body = encode_parsed_body(item.data, item.event)
        except (InvalidChannelError, EncodingError) as exc:
            raise HTTPException(422, f"{_where(index, batch)}{exc}") from None
        # A path publish's whole body is within MAX_EVENT_BYTES already; an event taken
        # from a batch is held to the same limit on its encoded size.
        if not checked_size and len(body) > max_bytes:
            raise HTTPException(
                413, f"{_where(index, batch)}event larger than MAX_EVENT_BYTES ({max_bytes} bytes)"
            )
        drafts.append(Draft(names, body, item.private))
    return drafts


def _where(index: int, batch: bool) -> str:
    return f"item {index}: " if batch else ""


def _published(hub: Hub, event: Event) -> bytes:
    channels = event.channels
    names = '","'.join(channels)
    return (
        f'{{"id":"{event.id}","channel":"{channels[0]}","channels":["{names}"],'
        f'"subscribers":{hub.subscriber_count(channels)}}}'
    ).encode()
