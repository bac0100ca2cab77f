"""The benchmark's generator counts what a browser would see, however the bytes are cut."""

from __future__ import annotations

import array
import json
import random
import time
from collections.abc import Callable

import pytest

from load_tests.generator import SubscriberProtocol, Totals, percentile

EVENTS = 40
SENT_AGO_SECONDS = 0.25


def _payload(seq: int) -> bytes:
    sent = time.monotonic() - SENT_AGO_SECONDS
    return json.dumps({"s": seq, "t": sent, "p": "x" * 30}, separators=(",", ":")).encode()


def herald_body() -> bytes:
    """Herald's frames: retry first, ids, LF line ends, heartbeat comments."""
    frames = [b"retry: 3000\n\n"]
    for seq in range(1, EVENTS + 1):
        frames.append(b"id: 1795245896600-%d\ndata: %s\n\n" % (seq, _payload(seq)))
        if seq % 7 == 0:
            frames.append(b": ping\n\n")
    return b"".join(frames)


def baseline_body() -> bytes:
    """sse-starlette's defaults: CRLF separators, data only, dated ping comments."""
    frames = []
    for seq in range(1, EVENTS + 1):
        frames.append(b"data: %s\r\n\r\n" % _payload(seq))
        if seq % 7 == 0:
            frames.append(b": ping - 2026-11-21 09:00:00.000000+00:00\r\n\r\n")
    return b"".join(frames)


def chunked_response(body: bytes, rng: random.Random) -> bytes:
    """A 200 response whose HTTP chunks cut the body at random places, frames included."""
    parts = [b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"]
    parts.append(b"Transfer-Encoding: chunked\r\n\r\n")
    position = 0
    while position < len(body):
        size = rng.randint(1, 90)
        chunk = body[position : position + size]
        parts.append(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        position += size
    return b"".join(parts)


def segments(wire: bytes, rng: random.Random) -> list[bytes]:
    """TCP segments of random sizes, down to single bytes."""
    cuts = []
    position = 0
    while position < len(wire):
        size = rng.choice([1, 2, 3, rng.randint(1, 64), rng.randint(64, 400)])
        cuts.append(wire[position : position + size])
        position += size
    return cuts


@pytest.mark.parametrize("body", [herald_body, baseline_body], ids=["herald", "baseline"])
@pytest.mark.parametrize("seed", range(12))
async def test_every_event_counted_once_and_timed(body: Callable[[], bytes], seed: int) -> None:
    rng = random.Random(seed)
    wire = chunked_response(body(), rng)
    totals = Totals(received=[0], latencies=array.array("d"))
    subscriber = SubscriberProtocol(0, b"", totals, check_with_parser=True)

    for segment in segments(wire, rng):
        subscriber.data_received(segment)

    assert subscriber.first_bytes.done() and subscriber.first_bytes.exception() is None
    assert totals.deliveries == EVENTS
    assert totals.received == [EVENTS]
    # The WHATWG parser, fed the same bytes, agrees with the fast count.
    assert subscriber.parsed_events == EVENTS
    assert json.loads(subscriber.first_parsed_data or "")["s"] == 1
    assert len(totals.latencies or []) == EVENTS
    assert all(SENT_AGO_SECONDS <= latency < 10 for latency in totals.latencies or [])


async def test_a_refused_stream_fails_its_first_bytes() -> None:
    totals = Totals(received=[0])
    subscriber = SubscriberProtocol(0, b"", totals, check_with_parser=False)

    subscriber.data_received(
        b'HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\n{"detail": "full"}'
    )

    with pytest.raises(ConnectionError, match="HTTP 503"):
        subscriber.first_bytes.result()
    assert totals.deliveries == 0


def test_percentile_is_nearest_rank() -> None:
    samples = [float(value) for value in range(1, 101)]
    assert percentile(samples, 0.50) == 50.0
    assert percentile(samples, 0.99) == 99.0
    assert percentile(samples, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
