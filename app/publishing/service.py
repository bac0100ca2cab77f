"""``PublishService``: what happens to a publish, whichever front it came in by.

Herald's API (``POST /events…``, :mod:`app.api.publish_handler`) and the Mercure hub
(``POST /.well-known/mercure``, :mod:`app.mercure.routes`) differ in how a publisher
presents itself and its events: a publish token or JWT and a JSON body, or a Mercure
JWT and a form. Everything after that is here, so a rule cannot hold on one front and
not on the other.

Design decisions (read before changing):

* One order of checks, the order of cost and of what they reveal. Each front calls,
  in turn: its own authentication (401/403); ``check_rate`` (429); ``read_body``
  (413, :mod:`app.publishing.bodies`) and its own body format (415/422, or Mercure's
  400); ``drafts`` or ``encoded_draft`` (channel names, encoding, size: 422/413);
  ``check_grants`` (every channel of every event: 403); then, for a request with an
  idempotency key, the key's syntax (422, :mod:`app.publishing.idempotency`); and only
  then ``publish`` or ``publish_once`` (503, or 422 for a key used with another
  request). All or nothing: a refused request has published nothing and consumed no id.
* An idempotency key is looked up by the broker in the step that numbers the events,
  never read here first (``app.broker.idempotency``): a retry racing the original on
  another worker waits for nothing and gets the replay. It is looked at only after the
  grants, so a key says nothing to a publisher who may not publish the request.
* The rate is checked after authentication, so a wrong token spends nobody's bucket,
  and before the body is read, so a publisher over its rate costs no parsing. It
  counts requests: a batch spends one turn, and is itself bounded by
  ``PUBLISH_BATCH_MAX`` and ``MAX_BATCH_BYTES``. The bucket is the token's (hashed:
  tables and Redis keys never hold a credential), or the address's without one.
* No front reaches the broker. Publishing goes through ``publish`` here, which maps
  the broker's refusal to a 503 with the ``Retry-After`` of any refusal by a server
  that cannot serve now (``DEFAULT_RETRY_AFTER_SECONDS``); the positions a front needs
  (the head, whether an id can be resumed) are methods of the hub.
* Built once per lifespan and called on every publish of the fast path: what a call
  reads is copied onto the service's slots at construction (settings and the limits'
  on/off do not change while it runs), one attribute lookup each instead of a chain
  through the hub and its settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from app.broker.base import BrokerUnavailableError, Draft, IdempotencyConflictError, Published
from app.core.config import Settings
from app.limits import LimitExceededError, publisher_key
from app.publishing.errors import PublishForbiddenError, PublishRefusedError
from app.publishing.idempotency import IdempotencyKeyReusedError
from app.sse.hub import DEFAULT_RETRY_AFTER_SECONDS, Hub
from app.wire.channels import InvalidChannelError, event_channels
from app.wire.encoding import EncodingError, encode_parsed_body
from app.wire.event import Event

__all__ = ["PublishGrants", "PublishItem", "PublishService", "check_channels", "item_label"]


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs per field
class PublishItem:
    """One event as the client asked for it: its channels are checked by ``drafts``."""

    channels: list[str]
    data: object
    event: str | None = None
    private: bool = False


class PublishGrants(Protocol):
    """What a publisher's token grants: Herald's ``Grants`` or Mercure's ``MercureGrants``."""

    def can_publish(self, channel: str, /) -> bool: ...


def item_label(index: int, batch: bool) -> str:
    """What prefixes a refusal's detail: the item's index in a batch, nothing otherwise."""
    return f"item {index}: " if batch else ""


def check_channels(grants: PublishGrants, channels: Iterable[str], where: str = "") -> None:
    """403 unless ``grants`` cover every one of ``channels``; ``where`` prefixes the detail."""
    for channel in channels:
        if not grants.can_publish(channel):
            raise PublishForbiddenError(f"{where}token does not grant publishing to {channel!r}")


class PublishService:
    """The rules of a publish after its front has read who is publishing and what."""

    __slots__ = (
        "_limits",
        "_publish_drafts",
        "_publish_drafts_once",
        "idempotent",
        "max_channels",
        "max_event_bytes",
        "rate_limited",
        "subscriber_count",
    )

    def __init__(self, settings: Settings, hub: Hub) -> None:
        self._limits = hub.limits
        self._publish_drafts = hub.publish_drafts
        self._publish_drafts_once = hub.publish_drafts_once
        # Whether a publish's idempotency key counts (PUBLISH_IDEMPOTENCY_SECONDS > 0): a
        # front ignores the key, unread, when it does not.
        self.idempotent = settings.publish_idempotency_seconds > 0
        # Whether check_rate has anything to check: a front on a hot path skips the call
        # (and the coroutine it would build) when it has not.
        self.rate_limited = hub.limits.publishes_limited
        self.max_channels = settings.publish_max_channels
        self.max_event_bytes = settings.max_event_bytes
        # Herald's answer to a publish reports the local streams on its channels.
        self.subscriber_count = hub.subscriber_count

    async def check_rate(self, token: str | None, client: str) -> None:
        """Spend one publish of this publisher's rate: ``token`` as presented (None without
        one), ``client`` its address. 429 with ``Retry-After`` when its bucket is empty."""
        if not self.rate_limited:
            return
        try:
            await self._limits.take_publish(publisher_key(token, client))
        except LimitExceededError as exc:
            raise PublishRefusedError(429, exc.detail, retry_after=exc.retry_after) from None

    def drafts(
        self, items: Sequence[PublishItem], batch: bool, *, checked_size: bool
    ) -> list[Draft]:
        """The items as events ready to publish, encoded; 422 or 413 naming the first that
        cannot be (by its index when ``batch``). ``checked_size``: the whole body is within
        ``MAX_EVENT_BYTES`` already, so no event's encoded size needs checking. A batch
        repeats its channels: each distinct list is validated once (and the events share
        its tuple in history)."""
        limit, max_bytes = self.max_channels, self.max_event_bytes
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
                raise PublishRefusedError(422, f"{item_label(index, batch)}{exc}") from None
            # A path publish's whole body is within MAX_EVENT_BYTES already; an event taken
            # from a batch is held to the same limit on its encoded size.
            if not checked_size and len(body) > max_bytes:
                raise PublishRefusedError(
                    413,
                    f"{item_label(index, batch)}event larger than MAX_EVENT_BYTES"
                    f" ({max_bytes} bytes)",
                )
            drafts.append(Draft(names, body, item.private))
        return drafts

    def encoded_draft(
        self, channels: Sequence[str], body: bytes, *, private: bool, event_id: str | None
    ) -> Draft:
        """One event another protocol's front validated and encoded under its own rules
        (Mercure's topics are not Herald channel names), with the publisher's own id if it
        chose one (never one shaped like a position)."""
        return Draft(tuple(dict.fromkeys(channels)), body, private, event_id)

    def check_grants(
        self, grants: PublishGrants, drafts: Sequence[Draft], batch: bool = False
    ) -> None:
        """403 unless ``grants`` cover every channel of every draft (by its index when
        ``batch``)."""
        for index, draft in enumerate(drafts):
            check_channels(grants, draft.channels, item_label(index, batch))

    async def publish(self, drafts: Sequence[Draft]) -> list[Event]:
        """Publish ``drafts`` with consecutive ids, all or none, and return their events in
        order; 503 with ``Retry-After`` while the broker cannot take them."""
        try:
            return await self._publish_drafts(drafts)
        except BrokerUnavailableError as exc:
            raise PublishRefusedError(
                503, str(exc), retry_after=DEFAULT_RETRY_AFTER_SECONDS
            ) from None

    async def publish_once(self, drafts: Sequence[Draft], key: str) -> Published:
        """``publish`` at most once per ``key`` within the window: a repeat with the same
        drafts gets the first publish's events, ``replayed``; 422 if ``key`` was used with
        other drafts; 503 with ``Retry-After`` while the broker cannot take them."""
        try:
            return await self._publish_drafts_once(drafts, key)
        except BrokerUnavailableError as exc:
            raise PublishRefusedError(
                503, str(exc), retry_after=DEFAULT_RETRY_AFTER_SECONDS
            ) from None
        except IdempotencyConflictError:
            raise IdempotencyKeyReusedError from None
