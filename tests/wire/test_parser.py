"""The client-side parser reads a stream the way a browser's EventSource does."""

from __future__ import annotations

import itertools

import pytest

from app.wire.parser import SSEMessage, SSEParser


def feed_all(*chunks: bytes) -> tuple[SSEParser, list[SSEMessage]]:
    parser = SSEParser()
    messages: list[SSEMessage] = []
    for chunk in chunks:
        messages.extend(parser.feed(chunk))
    return parser, messages


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["LF", "CRLF"])
def test_lf_and_crlf_line_ends(eol: bytes) -> None:
    wire = eol.join([b"event: e", b"data: a", b"data: b", b"", b"data: c", b"", b""])
    _, messages = feed_all(wire)
    assert messages == [SSEMessage("e", "a\nb", ""), SSEMessage("message", "c", "")]


def test_cr_line_ends() -> None:
    # A CR ends a line at once, as in a browser, even as the last byte of a chunk.
    parser, messages = feed_all(b"event: e\rdata: a\rdata: b\r\rdata: c\r\r")
    assert messages == [SSEMessage("e", "a\nb", ""), SSEMessage("message", "c", "")]
    assert parser.feed(b":") == []


def test_mixed_line_ends() -> None:
    _, messages = feed_all(b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\n\n")
    assert [m.data for m in messages] == ["a\nb\nc", "d"]


def test_crlf_split_across_two_feeds_is_one_line_end() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    # Were the CR and LF taken as two line ends, the blank line between them
    # would dispatch "a" alone.
    assert parser.feed(b"\ndata: b\r") == []
    # The CR ending this chunk is a blank line: dispatch now, and the LF that
    # completes that CRLF in the next chunk is not a second line end.
    assert parser.feed(b"\n\r") == [SSEMessage("message", "a\nb", "")]
    assert parser.feed(b"\n") == []
    assert parser.feed(b"data: c\n\n") == [SSEMessage("message", "c", "")]


def test_leading_bom_is_dropped() -> None:
    _, messages = feed_all(b"\xef\xbb\xbfdata: x\n\n")
    assert [m.data for m in messages] == ["x"]


def test_leading_bom_split_across_feeds_is_dropped() -> None:
    _, messages = feed_all(b"\xef", b"\xbb", b"\xbfdata: x\n\n")
    assert [m.data for m in messages] == ["x"]


def test_only_the_leading_bom_is_dropped() -> None:
    # A later BOM becomes part of the field name, so the line is ignored.
    _, messages = feed_all(b"\xef\xbb\xbfdata: x\n\n", b"\xef\xbb\xbfdata: y\n\ndata: z\n\n")
    assert [m.data for m in messages] == ["x", "z"]


def test_comments_are_kept_and_do_not_dispatch() -> None:
    parser, messages = feed_all(b": ping\n:no space\n:\n\n")
    assert messages == []
    assert parser.comments == ["ping", "no space", ""]


def test_comment_between_data_lines_does_not_break_the_event() -> None:
    _, messages = feed_all(b"data: a\n: note\ndata: b\n\n")
    assert [m.data for m in messages] == ["a\nb"]


def test_retry_sets_reconnection_time() -> None:
    parser, messages = feed_all(b"retry: 5000\n\n")
    assert messages == []
    assert parser.retry == 5000


@pytest.mark.parametrize("value", [b"5x", b"-1", b"", b"1.5", "\u0665".encode()])
def test_retry_that_is_not_ascii_digits_is_ignored(value: bytes) -> None:
    parser, _ = feed_all(b"retry: 100\n", b"retry: " + value + b"\n")
    assert parser.retry == 100


def test_id_containing_nul_is_ignored() -> None:
    parser, messages = feed_all(b"id: 1\ndata: a\n\nid: bad\x00id\ndata: b\n\n")
    assert [m.id for m in messages] == ["1", "1"]
    assert parser.last_event_id == "1"


def test_id_persists_to_later_events() -> None:
    _, messages = feed_all(b"id: 7\ndata: a\n\ndata: b\n\nid: 8\ndata: c\n\n")
    assert [(m.data, m.id) for m in messages] == [("a", "7"), ("b", "7"), ("c", "8")]


def test_empty_id_resets_last_event_id() -> None:
    _, messages = feed_all(b"id: 7\ndata: a\n\nid\ndata: b\n\n")
    assert [m.id for m in messages] == ["7", ""]


def test_event_type_resets_after_dispatch() -> None:
    _, messages = feed_all(b"event: x\ndata: a\n\ndata: b\n\n")
    assert [m.event for m in messages] == ["x", "message"]


def test_data_without_space_after_colon() -> None:
    _, messages = feed_all(b"data:a\n\ndata:  b\n\n")
    assert [m.data for m in messages] == ["a", " b"]


def test_field_with_no_colon_has_empty_value() -> None:
    _, messages = feed_all(b"data\n\ndata\ndata\n\n")
    assert [m.data for m in messages] == ["", "\n"]


def test_unknown_fields_are_ignored() -> None:
    _, messages = feed_all(b"foo: bar\ndata: a\nDATA: b\n\n")
    assert [m.data for m in messages] == ["a"]


def test_no_dispatch_without_data() -> None:
    parser, messages = feed_all(b"event: x\nid: 3\n\n", b"data: y\n\n")
    # The id still counts; the event type was reset by the blank line.
    assert messages == [SSEMessage("message", "y", "3")]
    assert parser.last_event_id == "3"


def test_incomplete_event_at_end_of_input_is_not_dispatched() -> None:
    _, messages = feed_all(b"data: a\n\ndata: b\n")
    assert [m.data for m in messages] == ["a"]


def test_multibyte_utf8_split_across_feeds() -> None:
    wire = "data: café 🎉\n\n".encode()
    e_acute = wire.index(b"\xc3")
    emoji = wire.index(b"\xf0")
    cuts = [0, e_acute + 1, emoji + 1, emoji + 3, len(wire)]
    _, messages = feed_all(*(wire[a:b] for a, b in itertools.pairwise(cuts)))
    assert [m.data for m in messages] == ["café 🎉"]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    _, messages = feed_all(b"data: a\xffb\n\n")
    assert [m.data for m in messages] == ["a\ufffdb"]
