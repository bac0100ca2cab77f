"""The Mercure hub's HTTP surface: ``/.well-known/mercure`` (subscribe, publish), the
subscription API under it, and the protected resource metadata (RFC 9728).

One hub underneath: a Mercure topic is a Herald channel of the same name, so a
Mercure update and a Herald event are the same event in the same sequence, with
the same history, backplane, limits, memory guard and metrics. Topics here follow
Mercure's rules (``app.mercure.topics``), not Herald's channel-name pattern. A publish
goes through the publish service of Herald's own (``app.publishing``): one rate per
publisher, the same grant check, the same broker call and the same 503. A supplied
``id`` (or an ``Idempotency-Key`` header) makes the publish idempotent
(``app.mercure.publishing``): a retry is answered with the id and not dispatched again.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.auth.client_address import client_address
from app.mercure.gather import GatherBusy, SubscriptionGather, SubscriptionQuery
from app.mercure.grants import AUTHORIZATION_DETAIL_TYPE, read_grant
from app.mercure.matchers import (
    EXACT,
    MATCHER_TYPES,
    URLPATTERN,
    InvalidMatcherError,
    Matcher,
    parse_matcher,
)
from app.mercure.publishing import (
    PublishRejected,
    PublishTooLarge,
    encode_update,
    id_key,
    key_update_id,
    parse_update,
)
from app.mercure.requests import (
    METADATA_PATH,
    MercureRefusal,
    authenticate,
    hub_url,
    same_origin,
)
from app.mercure.stream import MercureStreamResponse
from app.mercure.subscriptions import (
    SUBSCRIPTIONS_PATH,
    Subscription,
    SubscriptionRegistry,
    SubscriptionsFull,
    new_subscriber_id,
)
from app.mercure.topics import EARLIEST, HUB_PATH, forbidden_character
from app.publishing import (
    IDEMPOTENCY_KEY_HEADER,
    REPLAYED_HEADER,
    ClientGoneError,
    IdempotencyKeyReusedError,
    PublishForbiddenError,
    PublishRefusedError,
    PublishService,
    parse_idempotency_key,
    read_body,
)
from app.sse.hub import DEFAULT_RETRY_AFTER_SECONDS

__all__ = ["router"]

router = APIRouter(tags=["mercure"])

LAST_EVENT_ID_QUERY = "last_event_id"
MAX_LAST_EVENT_ID_LENGTH = 1024
MATCH_PREFIX = "match"
LAST_EVENT_ID_RESPONSE_HEADER = "Mercure-Last-Event-ID"


def _refused(request: Request, refusal: MercureRefusal) -> JSONResponse:
    return JSONResponse(
        {"detail": refusal.detail}, status_code=refusal.status, headers=refusal.headers(request)
    )


def _bad(detail: str) -> MercureRefusal:
    return MercureRefusal(400, detail, challenge=False)


def _query(request: Request) -> list[tuple[str, str]]:
    raw = request.scope.get("query_string", b"").decode("latin-1")
    try:
        return parse_qsl(raw, keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise _bad("the query string holds a value that is not UTF-8") from None


def _matchers(request: Request, pairs: list[tuple[str, str]]) -> list[tuple[str, Matcher]]:
    settings = request.app.state.settings
    found: list[tuple[str, Matcher]] = []
    for name, value in pairs:
        if not name.lower().startswith(MATCH_PREFIX):
            continue
        kind = EXACT if name == MATCH_PREFIX else name[len(MATCH_PREFIX) + 1 :]
        if name != MATCH_PREFIX and (not name.startswith("match_") or kind not in MATCHER_TYPES):
            raise _bad(f"unknown matcher parameter {name[:40]!r}: use match or match_urlpattern")
        if len(found) >= settings.mercure_max_matchers:
            raise _bad(f"more than {settings.mercure_max_matchers} matchers")
        try:
            matcher = parse_matcher(
                kind,
                value,
                hub_url=hub_url(settings),
                max_length=settings.mercure_max_matcher_length,
            )
        except InvalidMatcherError as exc:
            raise _bad(f"{name}: {exc}") from None
        found.append((kind, matcher))
    if not found:
        raise _bad("give at least one match or match_urlpattern parameter")
    return found


def _last_event_id(request: Request, pairs: list[tuple[str, str]]) -> str | None:
    header = request.headers.get("last-event-id")
    query = next((v for n, v in pairs if n == LAST_EVENT_ID_QUERY), None)
    chosen = header if header is not None else query
    if chosen is None:
        return None
    if len(chosen) > MAX_LAST_EVENT_ID_LENGTH or forbidden_character(chosen) is not None:
        raise _bad("the last event id is too long or holds a forbidden character")
    return chosen


async def _resume_point(request: Request, requested: str) -> str:
    """The id the stream resumes from: the requested one if the hub knows it, else
    ``earliest`` (the spec's answer for an id that does not exist or was discarded).
    Also the value of the ``Mercure-Last-Event-ID`` response header."""
    if requested == EARLIEST:
        return EARLIEST
    # None: the broker cannot answer now; the stream waits for it and resolves the id then.
    resumable = await request.app.state.hub.can_resume_after(requested)
    return EARLIEST if resumable is False else requested


@router.get(HUB_PATH, summary="Subscribe (Mercure)", response_model=None)
async def subscribe(request: Request) -> Response:
    state = request.app.state
    settings = state.settings
    try:
        pairs = _query(request)
        matchers = _matchers(request, pairs)
        last_event_id = _last_event_id(request, pairs)
        presented = authenticate(request, settings, state.tokens)
        if presented.anonymous and not settings.allow_anonymous:
            raise MercureRefusal(401, "a token is required to subscribe", challenge=True)
    except MercureRefusal as refusal:
        return _refused(request, refusal)
    headers: dict[str, str] = {}
    if last_event_id is not None:
        last_event_id = await _resume_point(request, last_event_id)
        headers[LAST_EVENT_ID_RESPONSE_HEADER] = last_event_id
    subscriber = new_subscriber_id()
    subscriptions = tuple(
        {
            (kind, m.source): Subscription(
                kind, m.source, subscriber, presented.grants.payload_for(m.source)
            )
            for kind, m in matchers
        }.values()
    )
    registry: SubscriptionRegistry = state.mercure_subscriptions
    try:
        registry.check_room(len(subscriptions))
    except SubscriptionsFull as exc:
        return JSONResponse(
            {"detail": str(exc)},
            status_code=503,
            headers={"Retry-After": str(DEFAULT_RETRY_AFTER_SECONDS)},
        )
    exact = tuple(dict.fromkeys(m.source for _, m in matchers if m.is_exact))
    patterns = tuple(dict.fromkeys(m for _, m in matchers if not m.is_exact))
    return MercureStreamResponse(
        state.hub,
        exact,
        patterns=patterns,
        last_event_id=last_event_id,
        client=client_address(request),
        read_grant=read_grant(presented.grants),
        expires_at=presented.expires_at,
        subscriptions=subscriptions,
        registry=registry,
        headers=headers,
    )


@router.post(HUB_PATH, summary="Publish (Mercure)", response_model=None)
async def publish(request: Request) -> Response:
    # Who may publish and the form are Mercure's; the rate, the grants, the broker and their
    # order are the publish service's (app.publishing), as for Herald's own publish.
    state = request.app.state
    settings = state.settings
    service: PublishService = state.publish_service
    try:
        presented = authenticate(request, settings, state.tokens)
        if presented.anonymous:
            raise MercureRefusal(401, "publishing requires an access token", challenge=True)
        if presented.by_cookie and not same_origin(request):
            raise MercureRefusal(
                403, "a publish authorized by cookie must come from this origin", challenge=False
            )
        await service.check_rate(presented.token, client_address(request))
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            raise _bad("the body must be application/x-www-form-urlencoded")
        declared = request.headers.get("content-length")
        body = await read_body(
            request.receive,
            None if declared is None else declared.encode("latin-1"),
            settings.mercure_max_body_bytes,
            "MERCURE_MAX_BODY_BYTES",
        )
        update = parse_update(
            body,
            hub_url=hub_url(settings),
            max_topics=settings.mercure_max_topics,
            max_field_length=settings.mercure_max_matcher_length,
        )
        draft = service.encoded_draft(
            update.topics, encode_update(update), private=update.private, event_id=update.id
        )
        service.check_grants(presented.grants, [draft])
        header_key = _idempotency_key(request) if service.idempotent else None
        if header_key is not None and not update.supplied_id:
            draft.event_id = key_update_id(header_key)  # a retry is the same update
        key = header_key
        if key is None and update.supplied_id and service.idempotent:
            key = id_key(update.id)
        replayed = False
        if key is None:
            (event,) = await service.publish([draft])
        else:
            try:
                published = await service.publish_once([draft], key)
            except IdempotencyKeyReusedError:
                if header_key is not None:
                    raise
                detail = "this id was published with a different update: a duplicate"
                return JSONResponse({"detail": detail}, status_code=409)
            (event,), replayed = published.events, published.replayed
    except MercureRefusal as refusal:
        return _refused(request, refusal)
    except PublishForbiddenError as exc:
        forbidden = MercureRefusal(403, exc.detail, "insufficient_scope", challenge=True)
        return _refused(request, forbidden)
    except PublishRefusedError as exc:
        retry = {} if exc.retry_after is None else {"Retry-After": str(exc.retry_after)}
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=retry)
    except PublishRejected as exc:
        return JSONResponse({"detail": str(exc)}, status_code=400)
    except PublishTooLarge as exc:
        return JSONResponse({"detail": str(exc)}, status_code=413)
    except ClientGoneError:  # the client went away before its body arrived: nobody reads this
        return Response(status_code=400)
    headers = {REPLAYED_HEADER: "true"} if replayed else None
    return Response(event.id, media_type="text/plain; charset=utf-8", headers=headers)


def _idempotency_key(request: Request) -> str | None:
    """The request's ``Idempotency-Key``, if it sent one (Herald's rules: 422 otherwise)."""
    values = request.headers.getlist(IDEMPOTENCY_KEY_HEADER)
    if not values:
        return None
    if len(values) > 1:
        raise PublishRefusedError(422, f"give one {IDEMPOTENCY_KEY_HEADER} header")
    return parse_idempotency_key(values[0].encode("latin-1"))


@router.get(METADATA_PATH, summary="Protected resource metadata (RFC 9728)")
async def metadata(request: Request) -> dict[str, Any]:
    settings = request.app.state.settings
    resource = settings.jwt_audience or str(request.base_url).rstrip("/") + HUB_PATH
    return {
        "resource": resource,
        "authorization_details_types_supported": [AUTHORIZATION_DETAIL_TYPE],
        "bearer_methods_supported": ["header"],
        "mercure_cookie": settings.mercure_cookie_name,
        "mercure_matcher_types_supported": [EXACT, URLPATTERN],
        "mercure_subscriptions": True,
    }


async def _head_id(request: Request) -> str:
    head: str | None = await request.app.state.hub.head_id()
    return EARLIEST if head is None else head


@router.get(SUBSCRIPTIONS_PATH, summary="Active subscriptions (Mercure)", response_model=None)
@router.get(SUBSCRIPTIONS_PATH + "/{rest:path}", include_in_schema=False, response_model=None)
async def subscriptions(request: Request, rest: str = "") -> Response:
    """Every worker's subscriptions (``app.mercure.gather``), consistent with the cursor."""
    state = request.app.state
    raw_path = request.scope.get("raw_path", b"").decode("latin-1").split("?")[0]
    try:
        presented = authenticate(request, state.settings, state.tokens)
        if presented.anonymous:
            raise MercureRefusal(401, "the subscription API requires a token", challenge=True)
        if not presented.grants.can_subscribe(raw_path):
            raise MercureRefusal(
                403,
                "the token does not grant subscribe on this URL",
                "insufficient_scope",
                challenge=True,
            )
    except MercureRefusal as refusal:
        return _refused(request, refusal)
    segments = [unquote(part) for part in raw_path[len(SUBSCRIPTIONS_PATH) :].split("/")[1:]]
    if len(segments) not in (0, 2, 3):
        return JSONResponse({"detail": "no such resource"}, 404)
    # The cursor first, the subscriptions after: see app.mercure.gather, decision 2.
    head = await _head_id(request)
    link = (
        f'<{str(request.base_url).rstrip("/")}{HUB_PATH}>; rel="mercure"; '
        f'last-event-id="{head}"; type="mercure"; content-type="application/json"'
    )
    headers = {"Link": link, "Cache-Control": "must-revalidate"}
    gather: SubscriptionGather = state.mercure_gather
    if len(segments) == 3:
        found = state.mercure_subscriptions.get(raw_path)
        if found is not None:  # held here: no need to ask the others
            return JSONResponse(found.document(), headers=headers)
        query = SubscriptionQuery(topic=raw_path)
    else:
        query = SubscriptionQuery(*segments)
    try:
        gathered = await gather.gather(query)
    except GatherBusy as exc:
        return JSONResponse({"detail": str(exc)}, 503, headers={"Retry-After": "1"})
    if len(segments) == 3:
        if gathered.documents:
            return JSONResponse(gathered.documents[0], headers=headers)
        if not gathered.complete:  # the worker holding it may be the one that did not answer
            detail = "not every worker answered; retry"
            return JSONResponse({"detail": detail}, 503, headers={"Retry-After": "1"})
        return JSONResponse({"detail": "no such subscription"}, 404, headers=headers)
    document = {
        "id": raw_path,
        "type": "subscriptions",
        "subscriptions": gathered.documents,
        "complete": gathered.complete,
    }
    return JSONResponse(document, headers=headers)
