"""A Mercure publish request: the form body parsed and every field checked, once.

This is where publisher data enters (the trust boundary ``Update.Validate`` is
in Mercure's Go hub): after ``parse_update`` nothing can inject an SSE field.
Every rule the spec gives is a 400 (``PublishRejected``) and every size limit a
413 (``PublishTooLarge``); unknown fields are ignored, as the spec requires.

Decisions where the spec leaves room:

* An empty ``id``, ``type`` or ``retry`` is treated as absent.
* A supplied ``id`` that has the shape of a Herald position (``123`` or
  ``123-4``) is refused: positions are the hub's own cursors, and a publisher id
  that parsed as one would resume from the wrong place.
* Without an ``id`` the hub generates ``urn:uuid:<random>`` (an IRI, as the spec
  requires, and opaque, as it recommends for private updates).
* Several ``topic`` fields (alternate topics) make one event on several Herald
  channels (the hub's multi-channel events): a subscriber matching any of them
  gets it once, and a private one reaches subscribers authorized for any of
  them. A topic repeated is counted once.
* A supplied ``id`` is the publish's idempotency key (the spec's "Publish Request
  Replay": a hub may check ids for replay and reject duplicates). Within
  ``PUBLISH_IDEMPOTENCY_SECONDS`` the same update with the same id is not dispatched
  again and is answered 200 with the id, as the first was: a publisher whose answer
  was lost retries safely. The same id with another update is a duplicate: 409.
  An ``Idempotency-Key`` header, if sent, is the key instead (with Herald's rules and
  answers: 422 for a key reused with another update); without a supplied id the
  generated one then follows from the key, so a retry is the same update.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from hashlib import blake2b
from urllib.parse import parse_qsl

from app.mercure.topics import (
    EARLIEST,
    MERCURE_EVENT_TYPE,
    WILDCARD,
    forbidden_character,
    in_reserved_namespace,
)
from app.wire.event_id import parse_event_id

__all__ = [
    "PublishRejected",
    "PublishTooLarge",
    "Update",
    "encode_update",
    "id_key",
    "key_update_id",
    "parse_update",
]

# A key made from an id holds a space, which an Idempotency-Key cannot: the two never meet.
_ID_KEY_PREFIX = "mercure id "
_KEYED_ID_NAMESPACE = uuid.UUID("0f1c6f2e-5d57-4c8e-9d3b-7f1c2a4e6b90")

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class PublishRejected(ValueError):
    """400: the request breaks a rule of the spec; the message is client-safe."""


class PublishTooLarge(ValueError):
    """413: the request exceeds a size limit."""


@dataclass(frozen=True, slots=True)
class Update:
    topics: tuple[str, ...]
    data: str
    private: bool
    id: str
    supplied_id: bool
    type: str | None
    retry: int | None

    @property
    def topic(self) -> str:
        """The canonical topic."""
        return self.topics[0]


def _check_characters(name: str, value: str) -> None:
    bad = forbidden_character(value)
    if bad is not None:
        raise PublishRejected(f"{name} holds the forbidden character {bad}")


def parse_update(body: bytes, *, hub_url: str, max_topics: int, max_field_length: int) -> Update:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PublishRejected("the body is not valid UTF-8") from None
    try:
        pairs = parse_qsl(text, keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise PublishRejected("the form holds a percent-encoded value that is not UTF-8") from None
    fields: dict[str, list[str]] = {}
    for name, value in pairs:
        fields.setdefault(name, []).append(value)
    topics = fields.get("topic", [])
    if not topics:
        raise PublishRejected("give at least one topic field")
    if len(topics) > max_topics:
        raise PublishTooLarge(f"more than {max_topics} topic fields")
    for topic in topics:
        if len(topic) > max_field_length:
            raise PublishTooLarge(f"a topic is longer than {max_field_length} characters")
        if not topic:
            raise PublishRejected("a topic must not be empty")
        _check_characters("a topic", topic)
        if topic == WILDCARD:
            raise PublishRejected("the topic '*' is reserved for the wildcard matcher")
        if in_reserved_namespace(topic, hub_url):
            raise PublishRejected("topics under the hub's own path are reserved for the hub")
    supplied = _last(fields, "id", max_field_length)
    if supplied is not None:
        _check_characters("id", supplied)
        if supplied.startswith("#"):
            raise PublishRejected("an id must not start with '#'")
        if supplied == EARLIEST:
            raise PublishRejected("the id 'earliest' is reserved")
        if parse_event_id(supplied) is not None:
            raise PublishRejected("ids of the form 123 or 123-4 are the hub's own positions")
    kind = _last(fields, "type", max_field_length)
    if kind is not None:
        _check_characters("type", kind)
        if kind == MERCURE_EVENT_TYPE:
            raise PublishRejected("the type 'mercure' is reserved for the hub's own events")
    retry_text = _last(fields, "retry", max_field_length)
    retry = None
    if retry_text is not None:
        if not (retry_text.isascii() and retry_text.isdigit()):
            raise PublishRejected("retry must consist of ASCII digits only")
        retry = int(retry_text)
    data = "\n".join(fields.get("data", [])[-1:])
    return Update(
        topics=tuple(dict.fromkeys(topics)),
        data=data,
        private="private" in fields,
        id=supplied if supplied is not None else f"urn:uuid:{uuid.uuid4()}",
        supplied_id=supplied is not None,
        type=kind,
        retry=retry,
    )


def id_key(supplied_id: str) -> str:
    """The idempotency key a supplied id stands for: a digest, so a long id makes a short
    key (in-process records and Redis key names stay bounded)."""
    return _ID_KEY_PREFIX + blake2b(supplied_id.encode(), digest_size=16).hexdigest()


def key_update_id(key: str) -> str:
    """The id of an update published under an ``Idempotency-Key`` without one of its own:
    the same for every retry (``urn:uuid:``, a name-based UUID of the key)."""
    return f"urn:uuid:{uuid.uuid5(_KEYED_ID_NAMESPACE, key)}"


def _last(fields: dict[str, list[str]], name: str, max_length: int) -> str | None:
    values = fields.get(name)
    if not values or not values[-1]:
        return None
    if len(values[-1]) > max_length:
        raise PublishTooLarge(f"{name} is longer than {max_length} characters")
    return values[-1]


def encode_update(update: Update) -> bytes:
    """The SSE fields after ``id:``: ``event:``, ``retry:``, one ``data:`` per line."""
    lines: list[str] = []
    if update.type is not None:
        lines.append(f"event: {update.type}\n")
    if update.retry is not None:
        lines.append(f"retry: {update.retry}\n")
    lines.extend(f"data: {line}\n" for line in _LINE_BREAK.split(update.data))
    return "".join(lines).encode("utf-8")
