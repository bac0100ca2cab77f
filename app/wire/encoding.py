"""SSE wire encoding: a pure function of the event, no I/O.

Herald encodes each published event once; the resulting bytes are shared by
every subscriber's queue, so nothing here may depend on the connection.

Rules (the browser's ``event.data`` must be exactly what was published):

* a string goes out as itself, one ``data:`` line per line of text; the
  browser joins them back with ``\\n``;
* any other JSON value goes out as compact JSON (which never contains a raw
  newline);
* a carriage return cannot survive the trip (the SSE parser treats ``\\r`` as a
  line end and joins lines with ``\\n``), so a string holding one is refused
  rather than silently altered;
* text must be valid Unicode (a lone surrogate cannot be UTF-8 encoded).
"""

from __future__ import annotations

import json

import orjson

__all__ = [
    "MAX_EVENT_NAME_LENGTH",
    "PING_FRAME",
    "EncodingError",
    "encode_body",
    "encode_comment",
    "encode_frame",
    "encode_parsed_body",
    "encode_position",
    "encode_retry",
    "validate_event_name",
]

MAX_EVENT_NAME_LENGTH = 128
PING_FRAME = b": ping\n\n"
# Built once: json.dumps with any option builds a new encoder on every call.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class EncodingError(ValueError):
    """The event cannot be carried by SSE unchanged; the message says why."""


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise EncodingError(f"{what} is not valid Unicode (it holds a lone surrogate)") from None


def validate_event_name(event: str) -> str:
    if not event:
        raise EncodingError("event name must not be empty")
    if len(event) > MAX_EVENT_NAME_LENGTH:
        raise EncodingError(f"event name is longer than {MAX_EVENT_NAME_LENGTH} characters")
    if "\n" in event or "\r" in event:
        raise EncodingError("event name must not contain a line break")
    _utf8(event, "event name")
    return event


def encode_body(data: object, event: str | None = None) -> bytes:
    """The ``event:`` and ``data:`` lines of one event, without id or terminator."""
    if isinstance(data, str):
        if "\r" in data:
            raise EncodingError(
                "data holds a carriage return, which SSE cannot deliver unchanged; use \\n"
            )
        text = data
    else:
        try:
            text = _COMPACT_JSON.encode(data)
        except (TypeError, ValueError) as exc:
            raise EncodingError(f"data is not a JSON value: {exc}") from None
    payload = b"data: " + _utf8(text, "data").replace(b"\n", b"\ndata: ") + b"\n"
    if event is None:
        return payload
    return b"event: " + _utf8(validate_event_name(event), "event name") + b"\n" + payload


def encode_parsed_body(data: object, event: str | None = None) -> bytes:
    """``encode_body`` for a value a JSON parser produced (string keys, no NaN): what the
    publish API decodes. orjson writes it ten times faster than the stdlib encoder, the
    same compact JSON (a float may be spelled differently, ``1e16`` for ``1e+16``, the
    same number). A value orjson refuses (an integer past 64 bits, a lone surrogate)
    goes to ``encode_body``, which takes it or explains why not. Not for other callers:
    orjson writes NaN as ``null`` where ``encode_body`` refuses it."""
    if isinstance(data, str):
        return encode_body(data, event)
    try:
        payload = b"data: " + orjson.dumps(data) + b"\n"  # compact JSON has no raw newline
    except orjson.JSONEncodeError:
        return encode_body(data, event)
    if event is None:
        return payload
    return b"event: " + _utf8(validate_event_name(event), "event name") + b"\n" + payload


def encode_frame(event_id: str, body: bytes) -> bytes:
    """A complete event: its id line, its body and the blank line that dispatches it.
    (UTF-8: a publisher-supplied id may be an IRI; callers keep line breaks out.)"""
    return b"id: " + event_id.encode() + b"\n" + body + b"\n"


def encode_position(event_id: str) -> bytes:
    """An ``id:`` line with no data: the client's last event id becomes ``event_id``
    and no event is dispatched (WHATWG: a blank line with an empty data buffer)."""
    return b"id: " + event_id.encode("ascii") + b"\n\n"


def encode_retry(retry_ms: int) -> bytes:
    return b"retry: %d\n\n" % retry_ms


def encode_comment(text: str) -> bytes:
    return b"".join(b": " + line + b"\n" for line in _utf8(text, "comment").splitlines()) + b"\n"
