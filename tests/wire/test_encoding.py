"""The wire encoder: exact bytes in, exact bytes out, and refusals for what SSE cannot carry."""

from __future__ import annotations

import pytest

from app.wire.encoding import (
    MAX_EVENT_NAME_LENGTH,
    PING_FRAME,
    EncodingError,
    encode_body,
    encode_comment,
    encode_frame,
    encode_parsed_body,
    encode_retry,
    validate_event_name,
)
from app.wire.parser import SSEParser

# --- exact bytes -------------------------------------------------------------


def test_string_is_sent_as_itself_on_one_data_line() -> None:
    assert encode_body("hello world") == b"data: hello world\n"


def test_empty_string_is_one_empty_data_line() -> None:
    assert encode_body("") == b"data: \n"


def test_multi_line_string_gets_one_data_line_per_line_including_empty_ones() -> None:
    assert encode_body("a\n\nb\n") == b"data: a\ndata: \ndata: b\ndata: \n"


def test_leading_spaces_are_kept_after_the_single_separator_space() -> None:
    # The parser strips exactly one space after the colon, so two must remain.
    assert encode_body("  indented") == b"data:   indented\n"


def test_unicode_string_is_utf8_encoded() -> None:
    assert encode_body("héllo ✓ 🎉") == "data: héllo ✓ 🎉\n".encode()
    assert encode_body("é") == b"data: \xc3\xa9\n"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, b"data: 0\n"),
        (-17, b"data: -17\n"),
        (2.5, b"data: 2.5\n"),
        (True, b"data: true\n"),
        (False, b"data: false\n"),
        (None, b"data: null\n"),
        ([], b"data: []\n"),
        ([1, "two", None], b'data: [1,"two",null]\n'),
        ({}, b"data: {}\n"),
        ({"a": 1, "b": [True, 2.5]}, b'data: {"a":1,"b":[true,2.5]}\n'),
    ],
    ids=[
        "zero",
        "negative",
        "float",
        "true",
        "false",
        "null",
        "empty-list",
        "list",
        "empty-obj",
        "obj",
    ],
)
def test_json_values_are_sent_compact(value: object, expected: bytes) -> None:
    assert encode_body(value) == expected


def test_json_string_with_newline_stays_on_one_line() -> None:
    assert encode_body({"text": "a\nb"}) == b'data: {"text":"a\\nb"}\n'


def test_json_unicode_is_not_ascii_escaped() -> None:
    assert encode_body({"name": "café"}) == 'data: {"name":"café"}\n'.encode()


def test_json_carriage_return_is_escaped_not_refused() -> None:
    # Inside JSON a CR is the two characters \r, which SSE carries fine.
    assert encode_body({"t": "a\rb"}) == b'data: {"t":"a\\rb"}\n'


def test_event_name_line_precedes_the_data() -> None:
    assert encode_body("x", "update") == b"event: update\ndata: x\n"
    assert encode_body({"n": 1}, "tick") == b'event: tick\ndata: {"n":1}\n'


def test_event_name_of_maximum_length_is_accepted() -> None:
    name = "e" * MAX_EVENT_NAME_LENGTH
    assert validate_event_name(name) == name
    assert encode_body(1, name) == b"event: " + name.encode() + b"\ndata: 1\n"


def test_encode_frame_adds_id_line_and_dispatching_blank_line() -> None:
    assert encode_frame("1700000000000-3", b"data: x\n") == b"id: 1700000000000-3\ndata: x\n\n"


def test_encode_retry_is_a_retry_line_and_blank_line() -> None:
    assert encode_retry(3000) == b"retry: 3000\n\n"
    assert encode_retry(0) == b"retry: 0\n\n"


def test_encode_comment_prefixes_each_line() -> None:
    assert encode_comment("ping") == b": ping\n\n"
    assert encode_comment("one\ntwo") == b": one\n: two\n\n"
    assert encode_comment("ping") == PING_FRAME


# --- refusals ----------------------------------------------------------------


@pytest.mark.parametrize("data", ["a\rb", "a\r\nb", "\r"])
def test_carriage_return_in_string_data_is_refused(data: str) -> None:
    with pytest.raises(EncodingError, match="carriage return"):
        encode_body(data)


@pytest.mark.parametrize("name", ["a\nb", "a\rb", "a\r\n", "\n"])
def test_line_break_in_event_name_is_refused(name: str) -> None:
    with pytest.raises(EncodingError, match="line break"):
        encode_body("x", name)


def test_empty_event_name_is_refused() -> None:
    with pytest.raises(EncodingError, match="empty"):
        encode_body("x", "")


def test_too_long_event_name_is_refused() -> None:
    with pytest.raises(EncodingError, match="longer than"):
        encode_body("x", "e" * (MAX_EVENT_NAME_LENGTH + 1))


def test_lone_surrogate_in_event_name_is_refused() -> None:
    with pytest.raises(EncodingError, match="lone surrogate"):
        encode_body("x", "bad\udc80")


def test_lone_surrogate_in_string_data_is_refused() -> None:
    with pytest.raises(EncodingError, match="lone surrogate"):
        encode_body("bad\ud800")


def test_lone_surrogate_inside_a_json_value_is_refused() -> None:
    with pytest.raises(EncodingError, match="lone surrogate"):
        encode_body({"key": ["ok", "bad\ud800"]})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {"x": float("-inf")}])
def test_non_finite_numbers_are_refused(value: object) -> None:
    with pytest.raises(EncodingError, match="not a JSON value"):
        encode_body(value)


def test_value_that_is_not_json_is_refused() -> None:
    with pytest.raises(EncodingError, match="not a JSON value"):
        encode_body({"when": object()})


# --- round trip through a browser-like parser --------------------------------


@pytest.mark.parametrize(
    "data",
    [
        "",
        "\n",
        "\n\n",
        "  two leading spaces",
        " ",
        "trailing newline\n",
        "a\n\nb",
        ": looks like a comment",
        "data: looks like a field",
        "id: 99",
        "naïve ☃ 🎉 漢字",
        "\ufeffstarts with a BOM",
        "tab\there",
    ],
)
def test_string_round_trips_through_the_parser_unchanged(data: str) -> None:
    parser = SSEParser()
    wire = encode_frame("5-1", encode_body(data, "custom"))
    messages = parser.feed(wire)
    assert len(messages) == 1
    assert (messages[0].data, messages[0].event, messages[0].id) == (data, "custom", "5-1")


def test_every_byte_split_of_a_frame_parses_the_same() -> None:
    wire = encode_frame("7-0", encode_body("ünï\n\ncode ✓"))
    for cut in range(len(wire) + 1):
        parser = SSEParser()
        messages = parser.feed(wire[:cut]) + parser.feed(wire[cut:])
        assert [m.data for m in messages] == ["ünï\n\ncode ✓"], cut


# --- the publish API's encoder (values a JSON parser produced) ---------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"text": "x" * 40, "n": 1},
        [1, 2.5, -0.0, None, True, False, "é", {"nested": ["a\nb", "\u2028"]}],
        {"quote": '"', "backslash": "\\", "control": "\u0001\t"},
        1e16,
        12,
        [],
        {},
    ],
)
def test_parsed_values_encode_to_the_same_json_value(value: object) -> None:
    import json

    body = encode_parsed_body(value, "update")
    general = encode_body(value, "update")
    assert body.startswith(b"event: update\ndata: ") and body.endswith(b"\n")
    assert body.count(b"\n") == 2  # one event line, one data line: compact JSON
    assert json.loads(body.split(b"data: ", 1)[1]) == json.loads(general.split(b"data: ", 1)[1])


def test_parsed_strings_are_encoded_as_text_like_encode_body() -> None:
    assert encode_parsed_body("two\nlines") == encode_body("two\nlines")
    with pytest.raises(EncodingError, match="carriage return"):
        encode_parsed_body("a\rb")


def test_values_orjson_refuses_go_to_the_general_encoder() -> None:
    huge = 2**80  # past 64 bits: the stdlib's JSON takes it
    assert encode_parsed_body({"n": huge}) == encode_body({"n": huge})
    with pytest.raises(EncodingError, match="lone surrogate"):
        encode_parsed_body({"s": "\ud800"})
