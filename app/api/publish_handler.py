"""Herald's publish front: one ``POST /events…`` request, from the ASGI scope to the answer.

:class:`app.asgi.EventsFastPath` answers every publish with :func:`handle_publish`
before FastAPI sees it; the documented routes in ``app.api.routes.events`` call the
same function (they are what the OpenAPI schema shows, and what answers if the fast
path is not installed). So the rules, status codes and ``{"detail": ...}`` bodies
cannot drift apart. What this front does itself is read who is publishing (Herald's
publish token or JWT) and its JSON body (:mod:`app.api.publish_bodies`); the rules
after that, and their order, are the publish service's (:mod:`app.publishing`), which
the Mercure hub's publish follows too.

Design decisions (read before changing):

* Nothing runs in a thread and nothing is built per request that can be built once:
  the headers are read in one pass over the ASGI scope, the body straight from
  ``receive``, the answer is bytes. A sync dependency would run in anyio's worker
  threads, and the framework's per-request machinery costs several times the publish
  itself (docs/performance.md).
* The path's channel is checked before the body is read: its grant (403) before the
  rate (429), its name (422) before the size (413).
* Answers are built as bytes without a JSON encoder: ids and channel names are
  validated ASCII without quotes or backslashes (``CHANNEL_PATTERN``).
* ``Idempotency-Key``: one key for the whole request (a batch is one unit), read
  after the grants and looked up by the broker as it numbers the events (the publish
  service's order). A replay is the first answer again (202, the same ids, the same
  shape; the subscriber count is today's) with ``Idempotent-Replayed: true``. A
  header sent twice is refused: two keys cannot both name one request.
* The publish context: what every publish reads is gathered once per lifespan in a
  :class:`PublishContext` (``HeraldApp.publishing``), because Starlette's ``State``
  resolves each attribute in Python, a cost each publish would pay again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from fastapi import HTTPException
from starlette.types import Receive, Scope

from app.api.publish_bodies import parse_batch, parse_single
from app.auth.client_address import TrustedProxies
from app.auth.requests import bearer_from_header, publisher_grants
from app.auth.tokens import TokenVerifier
from app.core.config import Settings
from app.publishing import (
    REPLAYED_HEADER,
    ClientGoneError,
    PublishRefusedError,
    PublishService,
    check_channels,
    parse_idempotency_key,
    read_body,
)
from app.wire.channels import InvalidChannelError, validate_channel
from app.wire.event import Event

__all__ = ["PublishAnswer", "PublishContext", "handle_publish"]

_JSON = b"application/json"
_REPLAYED = (REPLAYED_HEADER.lower().encode(), b"true")


@dataclass(frozen=True, slots=True)
class PublishContext:
    """What every publish reads, built once per lifespan (see "The publish context")."""

    settings: Settings
    service: PublishService
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


def _refusal(status: int, detail: object, headers: Iterable[tuple[str, str]]) -> PublishAnswer:
    body = json.dumps({"detail": detail}, ensure_ascii=False, separators=(",", ":")).encode()
    answer = _answer(status, body)
    for name, value in headers:
        answer.headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    return answer


def _refused(exc: PublishRefusedError) -> PublishAnswer:
    retry = () if exc.retry_after is None else (("Retry-After", str(exc.retry_after)),)
    return _refusal(exc.status, exc.detail, retry)


class _Headers:
    """The request headers a publish needs, read in one pass (uvicorn lowercases names)."""

    __slots__ = (
        "authorization",
        "content_length",
        "forwarded_for",
        "idempotency_key",
        "idempotency_keys",
        "media_type",
    )

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        self.authorization = ""
        self.content_length: bytes | None = None
        self.forwarded_for: str | None = None
        self.idempotency_key: bytes | None = None
        self.idempotency_keys = 0
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
            elif name == b"idempotency-key":
                self.idempotency_key = value
                self.idempotency_keys += 1
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
    # One frame for the whole request, the refusals included: a publish is short and
    # repeated thousands of times a second, and a wrapper coroutine is paid by each.
    settings, service = context.settings, context.service
    try:
        headers = _Headers(scope["headers"])
        peer = scope.get("client")
        client = context.proxies.client(peer[0] if peer else "", headers.forwarded_for)
        token = bearer_from_header(headers.authorization) if headers.authorization else None
        grants = publisher_grants(token, settings, context.tokens, client)
        if channel is not None and grants is not None:
            check_channels(grants, (channel,))
        if service.rate_limited:  # the key hashes the token: only worth it when limited
            await service.check_rate(token, client)
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
        drafts = service.drafts(items, batch, checked_size=channel is not None)
        if grants is not None:
            service.check_grants(grants, drafts, batch)
        replayed = False
        if headers.idempotency_key is None or not service.idempotent:
            events = await service.publish(drafts)
        else:
            if headers.idempotency_keys > 1:
                raise PublishRefusedError(422, "give one Idempotency-Key header")
            key = parse_idempotency_key(headers.idempotency_key)
            published = await service.publish_once(drafts, key)
            events, replayed = published.events, published.replayed
    except HTTPException as exc:
        return _refusal(exc.status_code, exc.detail, (exc.headers or {}).items())
    except PublishRefusedError as exc:
        return _refused(exc)
    except ClientGoneError:
        return None
    if batch:
        answer = _answer(202, b'{"ids":["' + '","'.join(e.id for e in events).encode() + b'"]}')
    else:
        answer = _answer(202, _published(service, events[0]))
    if replayed:
        answer.headers.append(_REPLAYED)
    return answer


def _published(service: PublishService, event: Event) -> bytes:
    channels = event.channels
    names = '","'.join(channels)
    return (
        f'{{"id":"{event.id}","channel":"{channels[0]}","channels":["{names}"],'
        f'"subscribers":{service.subscriber_count(channels)}}}'
    ).encode()
