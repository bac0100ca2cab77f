"""Herald's publish requests and answers as bytes and values, without I/O.

* ``publish``: ``POST /events/<channel>`` with ``{"data": ..., "event": ..., "private": ...}``,
  answered ``202 {"id", "channel", "channels", "subscribers"}``;
* ``publish_to``: ``POST /events`` with one object naming ``"channels"``, answered the same;
* ``publish_batch``: ``POST /events`` with an array of such objects, answered
  ``202 {"ids": [...]}``.

A replayed answer (a repeated ``Idempotency-Key``) is the first answer with
``Idempotent-Replayed: true``. Bodies are encoded here, before the first attempt, so a value
JSON cannot carry (NaN, an object JSON does not know) fails the call with ValueError or
TypeError without sending anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import quote

from ._models import BatchItem, BatchResult, PublishResult, channel_names

__all__ = [
    "IDEMPOTENCY_KEY_HEADER",
    "REPLAYED_HEADER",
    "PreparedPublish",
    "error_detail",
    "prepare_batch",
    "prepare_multi",
    "prepare_single",
    "was_replayed",
]

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_DETAIL_CHARS = 1000

ResultT = TypeVar("ResultT", PublishResult, BatchResult)
Reader = Callable[[object, bool, str, int], ResultT]
"""Reads a 2xx answer's JSON into a result, given (answer, replayed, key, attempts)."""


@dataclass(frozen=True, slots=True)
class PreparedPublish(Generic[ResultT]):
    """One publish ready to send as often as it takes: the path under the base URL, the
    encoded body, and how to read the answer."""

    path: str
    body: bytes
    read: Reader[ResultT]


def _encode(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _event_fields(data: object, event: str | None, private: bool) -> dict[str, object]:
    fields: dict[str, object] = {"data": data}
    if event is not None:
        fields["event"] = event
    if private:
        fields["private"] = True
    return fields


def prepare_single(
    channel: str, data: object, event: str | None, private: bool
) -> PreparedPublish[PublishResult]:
    (name,) = channel_names(channel)
    # Channel names are letters, digits and ._:/- ; anything else is escaped and Herald
    # answers 422 naming it, rather than the URL changing meaning.
    path = "/events/" + quote(name, safe="/:")
    return PreparedPublish(path, _encode(_event_fields(data, event, private)), _read_single)


def prepare_multi(
    channels: str | Iterable[str], data: object, event: str | None, private: bool
) -> PreparedPublish[PublishResult]:
    body = {"channels": list(channel_names(channels)), **_event_fields(data, event, private)}
    return PreparedPublish("/events", _encode(body), _read_single)


def prepare_batch(items: Iterable[BatchItem]) -> PreparedPublish[BatchResult]:
    entries: list[dict[str, object]] = []
    for item in items:
        if not isinstance(item, BatchItem):
            raise TypeError(f"a batch holds BatchItem objects, not {item!r}")
        entries.append(
            {"channels": list(item.channels), **_event_fields(item.data, item.event, item.private)}
        )
    if not entries:
        raise ValueError("a batch holds at least one event")
    return PreparedPublish("/events", _encode(entries), _read_batch)


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} is not a string")
    return value


def _read_single(answer: object, replayed: bool, key: str, attempts: int) -> PublishResult:
    if not isinstance(answer, dict):
        raise ValueError("the answer is not a JSON object")
    channels = answer.get("channels")
    subscribers = answer.get("subscribers")
    if not isinstance(channels, list) or not isinstance(subscribers, int):
        raise ValueError('the answer lacks "channels" or "subscribers"')
    return PublishResult(
        id=_text(answer.get("id"), '"id"'),
        channels=tuple(_text(name, "a channel") for name in channels),
        subscribers=subscribers,
        replayed=replayed,
        idempotency_key=key,
        attempts=attempts,
    )


def _read_batch(answer: object, replayed: bool, key: str, attempts: int) -> BatchResult:
    ids = answer.get("ids") if isinstance(answer, dict) else None
    if not isinstance(ids, list):
        raise ValueError('the answer lacks "ids"')
    return BatchResult(
        ids=tuple(_text(value, "an id") for value in ids),
        replayed=replayed,
        idempotency_key=key,
        attempts=attempts,
    )


def was_replayed(headers: Mapping[str, str]) -> bool:
    """Whether the answer repeats the first answer to its ``Idempotency-Key``."""
    return headers.get(REPLAYED_HEADER, "").strip().lower() == "true"


def error_detail(content: bytes) -> object:
    """Herald's ``detail`` of a refusal, or the body's text when it is not Herald's JSON (a
    proxy's page), shortened."""
    try:
        answer = json.loads(content)
    except ValueError:
        answer = None
    if isinstance(answer, dict) and "detail" in answer:
        return answer["detail"]
    text = content.decode("utf-8", errors="replace").strip()
    return text[:MAX_DETAIL_CHARS] or "(empty answer)"
