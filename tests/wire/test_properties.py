"""Property tests: hostile input through the wire encoder and a spec-following parser.

Any string, any JSON value and any event name either survives encode → parse
unchanged or is refused with a clear ``EncodingError``; parsing an id never
raises, whatever the client sends.
"""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.wire.encoding import EncodingError, encode_body, encode_frame
from app.wire.event_id import parse_event_id
from app.wire.parser import SSEParser

EXAMPLES = settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def round_trip(data: object, event: str | None) -> tuple[str, str]:
    frame = encode_frame("1-0", encode_body(data, event))
    (message,) = SSEParser().feed(frame)
    return message.event, message.data


def _has_nan(value: object) -> bool:
    if isinstance(value, float):
        return math.isnan(value) or math.isinf(value)
    if isinstance(value, list):
        return any(_has_nan(item) for item in value)
    if isinstance(value, dict):
        return any(_has_nan(item) for item in value.values())
    return False


def _has_surrogate(value: object) -> bool:
    if isinstance(value, str):
        return any("\ud800" <= char <= "\udfff" for char in value)
    if isinstance(value, list):
        return any(_has_surrogate(item) for item in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    return False


@EXAMPLES
@given(st.text())
def test_any_string_survives_or_is_refused(text: str) -> None:
    try:
        event, data = round_trip(text, None)
    except EncodingError as exc:
        assert "\r" in text or "surrogate" in str(exc)
        return
    assert (event, data) == ("message", text)


@EXAMPLES
@given(json_values)
def test_any_json_value_survives_or_is_refused(value: object) -> None:
    if isinstance(value, str):
        return  # strings are sent as themselves: covered above
    try:
        _, data = round_trip(value, None)
    except EncodingError:
        assert _has_nan(value) or _has_surrogate(value)
        return
    assert json.loads(data) == value


@EXAMPLES
@given(st.text(max_size=200))
def test_any_event_name_survives_or_is_refused(name: str) -> None:
    try:
        event, data = round_trip("x", name)
    except EncodingError as exc:
        assert str(exc)  # a clear reason
        return
    assert (event, data) == (name or "message", "x")


@EXAMPLES
@given(st.text(max_size=300))
def test_event_id_parser_never_raises(raw: str) -> None:
    key = parse_event_id(raw)
    assert key is None or (key[0] >= 0 and key[1] >= 0)


@EXAMPLES
@given(st.binary(max_size=500))
def test_sse_parser_never_raises_on_arbitrary_bytes(chunk: bytes) -> None:
    parser = SSEParser()
    parser.feed(chunk)
    parser.feed(b"\n\n")
