"""Herald's publish bodies: one event, or a batch of them, as ``PublishItem``s for the
publish service (:mod:`app.publishing`, which also reads the body; who may publish is
``app.auth.requests``).

Pure functions of the bytes and headers, no framework objects, so the ASGI fast
path and the FastAPI route share them and every rule can be tested directly.
Each failure maps to exactly one status: 413 for a batch of too many events, 415
for an unsupported content type, 422 for anything malformed — in a batch, naming
the item's index.
Nothing is published unless every check passed.

Bodies:

* ``POST /events/<channel>``: ``{"data": <any>, "event": "name", "private": false,
  "channels": ["more", ...]}`` (only ``data`` required) or a ``text/plain`` body;
  the event goes on the path's channel and any ``channels`` listed;
* ``POST /events``: a JSON array of such objects, each also naming its
  ``"channel"`` and/or ``"channels"`` (a batch), or one such object alone.
"""

from __future__ import annotations

import json

import orjson
from fastapi import HTTPException

from app.publishing import PublishItem

__all__ = ["is_json", "parse_batch", "parse_single"]

SINGLE_FIELDS = frozenset({"data", "event", "private", "channels"})
ITEM_FIELDS = SINGLE_FIELDS | {"channel"}
_SINGLE_SHAPE = '{"data": ..., "event": "name"}'
_ITEM_SHAPE = '{"channel": "name", "data": ...}'
_MISSING = object()


def is_json(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(422, "body is not valid UTF-8") from None


# Built once: json.loads with any option builds a new decoder on every call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _json(body: bytes) -> object:
    # orjson parses a batch several times faster than the stdlib (docs/performance.md). It is
    # strict RFC 8259, so it accepts nothing the stdlib decoder below refuses; what it refuses
    # goes to that decoder, which either takes it (integers past 64 bits, lone surrogate
    # escapes) or names the problem in the 422.
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return _DECODER.decode(_text(body))
    except ValueError as exc:
        raise HTTPException(422, f"malformed JSON: {exc}") from None


def _item(payload: object, allowed: frozenset[str], shape: str, where: str) -> PublishItem:
    """One event object; ``where`` prefixes every detail (``"item 3: "`` in a batch).
    Runs once per event of a batch: lookups, not loops."""
    if not isinstance(payload, dict):
        raise HTTPException(422, f"{where or 'body '}must be a JSON object like {shape}")
    if not allowed.issuperset(payload):
        unknown = sorted(set(payload) - allowed)
        raise HTTPException(422, f"{where}unknown field(s): {', '.join(unknown)}")
    get = payload.get
    data = get("data", _MISSING)
    if data is _MISSING:
        raise HTTPException(422, f'{where}missing required field "data"')
    event = get("event")
    if event is not None and not isinstance(event, str):
        raise HTTPException(422, f'{where}field "event" must be a string')
    private = get("private", False)
    if private is not False and private is not True:
        raise HTTPException(422, f'{where}field "private" must be true or false')
    channel = get("channel")
    if channel is not None and not isinstance(channel, str):
        raise HTTPException(422, f'{where}field "channel" must be a string')
    channels: list[str] = [] if channel is None else [channel]
    listed = get("channels")
    if listed is not None:
        if not isinstance(listed, list) or not all(isinstance(name, str) for name in listed):
            raise HTTPException(422, f'{where}field "channels" must be a list of strings')
        channels += listed
    return PublishItem(channels, data, event, private)


def parse_single(body: bytes, media_type: str, channel: str) -> PublishItem:
    """The body of ``POST /events/<channel>``; the event's first channel is the path's."""
    if media_type == "text/plain":
        return PublishItem([channel], _text(body))
    if not is_json(media_type):
        raise HTTPException(415, "Content-Type must be application/json or text/plain")
    item = _item(_json(body), SINGLE_FIELDS, _SINGLE_SHAPE, "")
    item.channels.insert(0, channel)
    return item


def parse_batch(body: bytes, media_type: str, limit: int) -> tuple[list[PublishItem], bool]:
    """The body of ``POST /events``: its events, and whether it was a batch (an array)
    rather than one object. 413 over ``limit`` events."""
    if not is_json(media_type):
        raise HTTPException(415, "Content-Type must be application/json")
    payload = _json(body)
    if isinstance(payload, dict):
        item = _item(payload, ITEM_FIELDS, _ITEM_SHAPE, "")
        if not item.channels:
            raise HTTPException(422, 'body names no channel: give "channel" or "channels"')
        return [item], False
    if not isinstance(payload, list):
        raise HTTPException(422, f"body must be a JSON array of events like [{_ITEM_SHAPE}]")
    if not payload:
        raise HTTPException(422, "body is an empty batch: give at least one event")
    if len(payload) > limit:
        raise HTTPException(413, f"batch of {len(payload)} events (PUBLISH_BATCH_MAX is {limit})")
    items = []
    for index, entry in enumerate(payload):
        where = f"item {index}: "
        item = _item(entry, ITEM_FIELDS, _ITEM_SHAPE, where)
        if not item.channels:
            raise HTTPException(422, f'{where}names no channel: give "channel" or "channels"')
        items.append(item)
    return items, True
