"""The benchmark's load generator: raw asyncio sockets in a process of its own.

``load_tests/benchmark.py`` starts one of these per server under test and drives
it with one JSON command per line on stdin; each command is answered with one
JSON line on stdout (logs go to stderr)::

    {"cmd": "connect", "total": 1000}      open subscribers up to 1000, wait for their first bytes
    {"cmd": "disconnect"}                  close them all
    {"cmd": "fanout", ...}                 closed-loop publishing, deliveries per second
    {"cmd": "latency", ...}                publishing at a fixed rate, publish-to-delivery latency
    {"cmd": "quit"}

Design decisions (read before changing):

1. Subscribers are ``asyncio.Protocol`` objects on uvloop when it is installed,
   not streams: one callback per received segment, no per-connection task, no
   per-event Python objects. The generator must never be what limits a server,
   so every measurement reports the generator's own CPU use next to the result.
2. The HTTP response is decoded properly (status line, chunked transfer coding)
   and events are counted only in complete SSE frames — up to the last blank
   line (``\\n\\n`` from Herald, ``\\r\\n\\r\\n`` from sse-starlette's default
   separator) — so neither a TCP segment boundary nor a chunk boundary can
   split or double an event. A frame counts once per ``data:`` line; Herald's
   ``retry:`` frame, ids and ``: ping`` comments hold none, and the payload
   never contains one.
3. Subscriber 0 also feeds everything it receives to Herald's WHATWG parser
   (``app/wire/parser.py``); the reports compare the parser's event count and
   the first event's data with the fast counter, so a counting error shows.
4. Every published event is a compact JSON object ``{"s": seq, "t": sent, "p":
   padding}``; Herald re-encodes JSON compactly and the baseline sends the body
   as is, so both deliver the same ``data:`` line. ``t`` is this process's
   monotonic clock when the request is written, so the latency is measured on
   one clock, with no cross-process skew.
5. Fan-out is closed-loop: publishers keep at most ``window`` events between the
   newest published and the oldest one every subscriber has received. The
   server always has queued work (so it runs flat out), yet no subscriber queue
   ever holds more than ``window`` events — below both servers' queue size of
   100 — so neither Herald's overflow policy nor the baseline's dropping
   decides the figure.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import logging
import math
import os
import re
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from app.wire.parser import SSEParser

__all__ = ["Generator", "SubscriberProtocol", "Target", "main", "percentile"]

logger = logging.getLogger("herald.bench.generator")

CONNECT_CONCURRENCY = 256
"""Connections being opened at once: well under uvicorn's listen backlog (2048)."""
WINDOW_POLL_SECONDS = 0.0005
DRAIN_POLL_SECONDS = 0.01
MAX_PUBLISH_CONNECTIONS = 512
NEVER = sys.maxsize
"""Frontier value of a closed subscriber, so it no longer holds publishers back."""

_SENT = re.compile(rb'"t":([0-9.eE+-]+)')
_DATA = b"data:"


@dataclass(frozen=True, slots=True)
class Target:
    """How to subscribe to and publish on one server under test."""

    host: str
    port: int
    subscribe_path: str
    publish_path: str
    wrap_publish: bool
    """Herald takes ``{"data": <event>}``; the baseline puts the raw body in its queues."""
    publish_status: int

    def subscribe_request(self) -> bytes:
        return (
            f"GET {self.subscribe_path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Accept: text/event-stream\r\nCache-Control: no-store\r\n\r\n"
        ).encode()

    def publish_request(self, event: bytes) -> bytes:
        body = b'{"data":' + event + b"}" if self.wrap_publish else event
        head = (
            f"POST {self.publish_path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        return head + body


@dataclass(slots=True)
class Totals:
    """Counters shared by every subscriber of one generator."""

    deliveries: int = 0
    disconnects: int = 0
    # Events each subscriber has received, by subscriber index. Every subscriber
    # is connected before the first publish and every event goes to all of them,
    # so the smallest count says which events everyone has: counting rather than
    # reading sequence numbers is immune to publishes overtaking each other.
    received: list[int] = field(default_factory=list)
    # Publish-to-delivery latencies in seconds, collected only while measuring latency.
    latencies: array.array[float] | None = None


def event_payload(seq: int, padding: str) -> bytes:
    sent = time.monotonic()
    return json.dumps({"s": seq, "t": sent, "p": padding}, separators=(",", ":")).encode()


def _frame_end(buffer: bytes) -> int:
    """Length of the prefix of ``buffer`` made of complete SSE frames."""
    if buffer.endswith(b"\n\n") or buffer.endswith(b"\r\n\r\n"):
        return len(buffer)
    lf = buffer.rfind(b"\n\n")
    crlf = buffer.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


class SubscriberProtocol(asyncio.Protocol):
    """One SSE subscriber: a raw HTTP/1.1 request, then counted frames."""

    def __init__(self, index: int, request: bytes, totals: Totals, check_with_parser: bool) -> None:
        self.index = index
        self.request = request
        self.totals = totals
        self.first_bytes: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.closing = False
        self.lost = False
        self.status = 0
        self._head = b""
        self._in_body = False
        self._chunked = True
        self._chunk_left = 0
        self._skip = 0
        self._chunk_buffer = b""
        self._pending = b""
        self.parser = SSEParser() if check_with_parser else None
        self.parsed_events = 0
        self.first_parsed_data: str | None = None
        self.counted_events = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.first_bytes.done():
            self.first_bytes.set_exception(ConnectionError(f"closed before a response ({exc})"))
        if not self.closing:
            self.lost = True
            self.totals.disconnects += 1
        if self.index < len(self.totals.received):
            self.totals.received[self.index] = NEVER

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        received_at = time.monotonic()
        if not self._in_body:
            data = self._read_head(data)
            if not self._in_body:
                return
        payload = self._dechunk(data) if self._chunked else data
        if not payload:
            return
        if self.parser is not None:
            for message in self.parser.feed(payload):
                if message.event == "message":
                    self.parsed_events += 1
                    if self.first_parsed_data is None:
                        self.first_parsed_data = message.data
        buffer = self._pending + payload if self._pending else payload
        end = _frame_end(buffer)
        self._pending = buffer[end:]
        if end:
            self._count(buffer[:end] if end < len(buffer) else buffer, received_at)

    def _read_head(self, data: bytes) -> bytes:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            return b""
        head, rest = self._head[:end], self._head[end + 4 :]
        self._head = b""
        status_line, _, headers = head.partition(b"\r\n")
        parts = status_line.split(b" ", 2)
        self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if self.status != 200:
            self.first_bytes.set_exception(ConnectionError(f"HTTP {self.status}"))
            self.close()
            return b""
        self._chunked = b"transfer-encoding: chunked" in headers.lower()
        self._in_body = True
        self.first_bytes.set_result(None)
        return rest

    def _dechunk(self, data: bytes) -> bytes:
        buffer = self._chunk_buffer + data if self._chunk_buffer else data
        parts: list[bytes] = []
        position = 0
        size = len(buffer)
        while position < size:
            if self._skip:  # the CRLF after a chunk's data
                step = min(self._skip, size - position)
                position += step
                self._skip -= step
                continue
            if self._chunk_left:
                step = min(self._chunk_left, size - position)
                parts.append(buffer[position : position + step])
                position += step
                self._chunk_left -= step
                if not self._chunk_left:
                    self._skip = 2
                continue
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                break
            chunk_size = int(buffer[position:line_end].split(b";", 1)[0], 16)
            position = line_end + 2
            if chunk_size == 0:  # the server ended the body
                position = size
                break
            self._chunk_left = chunk_size
        self._chunk_buffer = buffer[position:]
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _count(self, frames: bytes, received_at: float) -> None:
        events = frames.count(_DATA)
        if not events:
            return
        self.counted_events += events
        totals = self.totals
        totals.deliveries += events
        totals.received[self.index] += events
        if totals.latencies is not None:
            latencies = totals.latencies
            for sent in _SENT.findall(frames):
                latencies.append(received_at - float(sent))


class Publisher:
    """One keep-alive HTTP/1.1 connection that publishes one event at a time."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> Publisher:
        self._reader, self._writer = await asyncio.open_connection(
            self.target.host, self.target.port
        )
        return self

    async def publish(self, seq: int, padding: str) -> None:
        assert self._reader is not None and self._writer is not None
        self._writer.write(self.target.publish_request(event_payload(seq, padding)))
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, _, headers = head.partition(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        for line in headers.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self._reader.readexactly(length)
        if status != self.target.publish_status:
            raise RuntimeError(f"publish answered {status}: {body[:200]!r}")

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not ordered:
        raise ValueError("no samples")
    rank = min(len(ordered), max(1, math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


class Generator:
    """The subscribers and publishers of one server under test."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.totals = Totals()
        self.subscribers: list[SubscriberProtocol] = []
        self.next_seq = 1

    # --- subscribers ---

    async def connect(self, total: int, wait_seconds: float = 60.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        request = self.target.subscribe_request()
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        errors: Counter[str] = Counter()
        started = time.monotonic()

        async def open_one(index: int) -> SubscriberProtocol | None:
            protocol = SubscriberProtocol(index, request, self.totals, index == 0)
            async with gate:
                try:
                    await loop.create_connection(
                        lambda: protocol, self.target.host, self.target.port
                    )
                    await asyncio.wait_for(protocol.first_bytes, wait_seconds)
                except (OSError, TimeoutError) as exc:
                    errors[str(exc) or type(exc).__name__] += 1
                    protocol.close()
                    return None
            return protocol

        first = len(self.totals.received)
        self.totals.received.extend([0] * max(0, total - first))
        opened = await asyncio.gather(*(open_one(index) for index in range(first, total)))
        for protocol in opened:
            if protocol is not None:
                self.subscribers.append(protocol)
        # Failed slots must not hold the fan-out frontier back.
        for index, protocol in zip(range(first, total), opened, strict=True):
            if protocol is None:
                self.totals.received[index] = NEVER
        return {
            "connections": self.alive(),
            "failed": sum(errors.values()),
            "errors": dict(errors.most_common(5)),
            "seconds": round(time.monotonic() - started, 3),
        }

    def alive(self) -> int:
        return sum(1 for s in self.subscribers if not (s.closing or s.lost))

    async def disconnect(self) -> dict[str, Any]:
        for subscriber in self.subscribers:
            subscriber.close()
        closed = len(self.subscribers)
        self.subscribers.clear()
        self.totals = Totals()
        await asyncio.sleep(0.2)  # let the transports finish closing
        return {"closed": closed}

    def frontier(self) -> int:
        """How many of the events sent so far every open subscriber has received."""
        return min(self.totals.received, default=NEVER)

    def sent(self) -> int:
        return self.next_seq - 1

    def parser_check(self) -> dict[str, Any]:
        sample = next((s for s in self.subscribers if s.parser is not None), None)
        if sample is None:
            return {"checked": False}
        return {
            "checked": True,
            "counted": sample.counted_events,
            "parsed": sample.parsed_events,
            "agree": sample.counted_events == sample.parsed_events,
            "first_data": sample.first_parsed_data,
        }

    async def _drain(self, limit_seconds: float) -> bool:
        deadline = time.monotonic() + limit_seconds
        while self.frontier() < self.sent():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        return True

    async def _publishers(self, count: int) -> list[Publisher]:
        return [await Publisher(self.target).open() for _ in range(count)]

    # --- measurements ---

    async def fanout(
        self, warmup: float, duration: float, window: int, publishers: int, payload_bytes: int
    ) -> dict[str, Any]:
        padding = "x" * payload_bytes
        connections = await self._publishers(publishers)
        stop = asyncio.Event()
        published = 0

        async def keep_publishing(publisher: Publisher) -> None:
            nonlocal published
            while not stop.is_set():
                if self.sent() + 1 - self.frontier() > window:
                    await asyncio.sleep(WINDOW_POLL_SECONDS)
                    continue
                seq = self.next_seq
                self.next_seq += 1
                await publisher.publish(seq, padding)
                published += 1

        disconnects_before = self.totals.disconnects
        tasks = [asyncio.create_task(keep_publishing(p)) for p in connections]
        try:
            await asyncio.sleep(warmup)
            deliveries, published_before = self.totals.deliveries, published
            cpu, wall = time.process_time(), time.monotonic()
            await asyncio.sleep(duration)
            deliveries = self.totals.deliveries - deliveries
            window_end = time.monotonic()
            cpu, wall = time.process_time() - cpu, window_end - wall
            published_in_window = published - published_before
        finally:
            stop.set()
            await asyncio.gather(*tasks)
            for publisher in connections:
                await publisher.close()
        drained = await self._drain(limit_seconds=60.0)
        return {
            "subscribers": self.alive(),
            "seconds": round(wall, 3),
            # On the system-wide monotonic clock, so the orchestrator can line
            # the server's CPU samples up with exactly this window.
            "window": [window_end - wall, window_end],
            "deliveries": deliveries,
            "deliveries_per_second": round(deliveries / wall, 1),
            "events_per_second": round(published_in_window / wall, 1),
            "events_in_flight": window,
            "publishers": publishers,
            "generator_cpu": round(cpu / wall, 3),
            "disconnects": self.totals.disconnects - disconnects_before,
            "drained": drained,
            "parser_check": self.parser_check(),
        }

    async def latency(
        self, rate: float, duration: float, drain: float, publishers: int, payload_bytes: int
    ) -> dict[str, Any]:
        padding = "x" * payload_bytes
        # Open loop: the schedule does not wait for answers. A server that falls
        # behind answers late, so more connections are opened as needed (up to
        # MAX_PUBLISH_CONNECTIONS) rather than letting the rate sag with it.
        connections = await self._publishers(publishers)
        idle = list(connections)
        returned = asyncio.Event()
        subscribers = self.alive()
        disconnects_before = self.totals.disconnects
        self.totals.latencies = array.array("d")
        interval = 1.0 / rate
        count = max(1, round(duration * rate))
        max_late = 0.0
        in_flight: set[asyncio.Task[None]] = set()

        async def publish_one(publisher: Publisher, seq: int) -> None:
            try:
                await publisher.publish(seq, padding)
            finally:
                idle.append(publisher)
                returned.set()

        cpu, started = time.process_time(), time.monotonic()
        first_seq = self.next_seq
        last_send = started
        try:
            for k in range(count):
                due = started + k * interval
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                while not idle:
                    if len(connections) < MAX_PUBLISH_CONNECTIONS:
                        connections.append(await Publisher(self.target).open())
                        idle.append(connections[-1])
                    else:
                        returned.clear()
                        await returned.wait()
                last_send = time.monotonic()
                max_late = max(max_late, last_send - due)
                task = asyncio.create_task(publish_one(idle.pop(), self.next_seq))
                self.next_seq += 1
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            await asyncio.gather(*in_flight)
            drained = await self._drain(limit_seconds=drain)
            cpu, wall = time.process_time() - cpu, time.monotonic() - started
        finally:
            samples = sorted(self.totals.latencies)
            self.totals.latencies = None
            for publisher in connections:
                await publisher.close()
        expected = count * subscribers
        sending = last_send - started + interval
        result: dict[str, Any] = {
            "subscribers": subscribers,
            "rate": rate,
            "published": count,
            "first_seq": first_seq,
            "achieved_rate": round(count / sending, 2),
            "max_send_lateness_ms": round(max_late * 1000, 1),
            "publish_connections": len(connections),
            "expected_deliveries": expected,
            "deliveries": len(samples),
            "delivered_ratio": round(len(samples) / expected, 4) if expected else None,
            "drained": drained,
            "disconnects": self.totals.disconnects - disconnects_before,
            "generator_cpu": round(cpu / wall, 3),
            "parser_check": self.parser_check(),
        }
        for name, fraction in (("p50_ms", 0.50), ("p99_ms", 0.99), ("max_ms", 1.0)):
            result[name] = round(percentile(samples, fraction) * 1000, 3) if samples else None
        return result


def raise_open_file_limit() -> int:
    """Lift the soft ``RLIMIT_NOFILE`` to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


async def serve_commands(generator: Generator) -> None:
    loop = asyncio.get_running_loop()
    handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
        "connect": lambda c: generator.connect(c["total"], c.get("timeout_each", 60.0)),
        "disconnect": lambda c: generator.disconnect(),
        "fanout": lambda c: generator.fanout(
            c["warmup"], c["duration"], c["window"], c["publishers"], c["payload_bytes"]
        ),
        "latency": lambda c: generator.latency(
            c["rate"], c["duration"], c["drain"], c["publishers"], c["payload_bytes"]
        ),
    }
    while True:
        # A thread reads stdin so the event loop keeps serving the sockets meanwhile.
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        try:
            reply = {"ok": True, **(await handlers[command["cmd"]](command))}
        except Exception as exc:  # reported to the orchestrator, which fails the run
            logger.exception("command %s failed", command["cmd"])
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    await generator.disconnect()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--subscribe-path", required=True)
    parser.add_argument("--publish-path", required=True)
    parser.add_argument("--wrap-publish", action="store_true")
    parser.add_argument("--publish-status", type=int, default=200)
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="generator: %(message)s")
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    raise_open_file_limit()
    target = Target(
        args.host,
        args.port,
        args.subscribe_path,
        args.publish_path,
        args.wrap_publish,
        args.publish_status,
    )
    try:
        import uvloop
    except ImportError:  # plain asyncio works, a little slower
        asyncio.run(serve_commands(Generator(target)))
    else:
        uvloop.run(serve_commands(Generator(target)))


if __name__ == "__main__":
    main()
