"""The chaos test's clients: subscribers that drop and resume like browsers, and publishers.

Both are raw asyncio sockets (``tests/leak/raw_http.py`` opens the streams and
decodes the chunked body); they report into a :class:`~load_tests.chaos_ledger.Ledger`
and a :class:`Tally`.

Design decisions (read before changing):

1. **The cursor is a browser's.** WHATWG sets an EventSource's last event ID
   from the id buffer when a frame is *dispatched* (at its blank line), whether
   or not the frame has data, and a new stream's id buffer starts from that
   value (as in Chromium). :class:`BrowserCursorParser` adds exactly that to
   ``app.wire.parser.SSEParser``, which updates its id on the ``id:`` line
   itself: resuming from an id whose frame was cut before its blank line would
   skip that event, and the tool, not the server, would have lost it.
2. **A subscriber never resends what it cannot know.** No ``Last-Event-ID``
   header until an id has been dispatched; afterwards always the last one.
3. **Cuts are chosen by the client, counted by who made them.** A subscriber
   draws each stream's life from an exponential distribution (mean
   ``CUT_MEAN_SECONDS``), or for ``EARLY_CUT_SHARE`` of its streams from the
   first 50 ms, so that some cuts land before the stream's first event (a
   flaky mobile link does that), and ends it with FIN or RST at random. A
   stream that ends any other way (EOF, the chunked body's last chunk, a reset
   from the server) is a server-side cut. Reconnecting takes a fraction of a
   second, shorter than a browser's ``retry:`` of 3 s, to put more resumes
   into the same run.
4. **A publish is tried once.** The publisher does not resend a request whose
   answer it did not get (``raw_http.KeepAliveClient`` does, which is right
   for its idempotent uses but would publish twice here); such a publish is a
   failure, and if the event was stored anyway it shows as delivered but never
   acknowledged.
5. **Slow readers** connect with a 4 KB ``SO_RCVBUF``, read 1 KB at a time with
   a pause, and now and then stall for up to 3 s, so their queues overflow
   and the server cuts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from app.wire.parser import SSEMessage, SSEParser
from load_tests.chaos_ledger import Ledger, SubscriberRecord

# raw_http's head parser is private to it but exactly what a publish answer needs.
from tests.leak.raw_http import SseSocket, _parse_head, open_sse

__all__ = [
    "BrowserCursorParser",
    "Control",
    "Publisher",
    "StreamReading",
    "Subscriber",
    "Tally",
    "event_document",
]

CUT_MEAN_SECONDS = 2.5
EARLY_CUT_SHARE = 0.15
EARLY_CUT_SECONDS = 0.05
RECONNECT_AFTER_CLIENT_CUT = (0.0, 0.3)
RECONNECT_AFTER_SERVER_CUT = (0.05, 0.5)
RETRY_AFTER_OPEN_FAILURE = (0.2, 1.0)
OPEN_TIMEOUT_SECONDS = 5.0
READ_BYTES = 65536
SLOW_RECEIVE_BUFFER = 4096
SLOW_READ_BYTES = 1024
SLOW_READ_PAUSE_SECONDS = 0.02
SLOW_STALL_MEAN_INTERVAL = 3.0
SLOW_STALL_SECONDS = (0.5, 3.0)
PUBLISH_TIMEOUT_SECONDS = 5.0
PUBLISH_FAILURE_PAUSE_SECONDS = 0.1
PUBLISH_PADDING = "x" * 48
# Shares of the publish requests: one event on two channels, and batches (POST /events)
# of BATCH_SIZES events, a third of them on two channels; the rest one event, one channel.
MULTI_CHANNEL_SHARE = 0.2
BATCH_SHARE = 0.2
BATCH_SIZES = (2, 5)
MAX_PUBLISH_LAG_SECONDS = 1.0
"""A publisher that falls further behind its schedule skips ahead instead of bursting."""


@dataclass(slots=True)
class Control:
    """The phases of a run, shared by every client."""

    publishing: bool = True
    quiet: bool = False
    """Publishers stopped: no more client cuts or stalls; subscribers only catch up."""


@dataclass(slots=True)
class Tally:
    """Counters of what the clients did and met (the ledger judges the events)."""

    opens: int = 0
    open_failures: Counter[str] = field(default_factory=Counter)
    server_cuts: int = 0
    client_cuts_fin: int = 0
    client_cuts_rst: int = 0
    publish_failures: Counter[str] = field(default_factory=Counter)


def event_document(channel: str | list[str], publisher: int, seq: int) -> dict[str, object]:
    """What a publisher sends as ``data``: enough to name the publish that made it (``c``
    lists the channels of an event published on several)."""
    return {"c": channel, "p": publisher, "n": seq, "x": PUBLISH_PADDING}


class BrowserCursorParser(SSEParser):
    """``SSEParser`` plus the EventSource's last event ID, committed at each dispatch."""

    def __init__(self, last_event_id: str, on_commit: Callable[[str], None]) -> None:
        super().__init__()
        self.last_event_id = last_event_id  # the id buffer starts from the persisted value
        self.committed = last_event_id
        self._on_commit = on_commit

    def _line(self, line: str) -> SSEMessage | None:
        if not line:  # dispatch: step 1 sets the last event ID, data or not
            self.committed = self.last_event_id
            if self.committed:
                self._on_commit(self.committed)
        return super()._line(line)


class StreamReading:
    """One stream's body bytes into the subscriber's record; I/O free, so it can be tested."""

    def __init__(self, record: SubscriberRecord, last_event_id: str) -> None:
        self.record = record
        self.parser = BrowserCursorParser(last_event_id, record.saw_id)

    @property
    def last_event_id(self) -> str:
        return self.parser.committed

    def feed(self, body: bytes, now: float) -> None:
        if not body:
            return
        self.record.opened(now)
        for message in self.parser.feed(body):
            if message.event == "reset":
                self.record.reset()
                continue
            try:
                document = json.loads(message.data)
                named, origin = document["c"], (document["p"], document["n"])
            except (ValueError, KeyError, TypeError):
                self.record.malformed += 1
                continue
            # An event on several channels is one event per channel in the ledger: this
            # subscriber received each of those it asked for (none: misrouted, on the first).
            names = [named] if isinstance(named, str) else list(named)
            for channel in [n for n in names if n in self.record.channels] or names[:1]:
                self.record.delivered(channel, message.id, origin)


class Subscriber:
    """One browser-like client: open, read, get cut or cut, resume with the last id."""

    def __init__(
        self,
        record: SubscriberRecord,
        host: str,
        port: int,
        *,
        slow: bool,
        rng: random.Random,
        tally: Tally,
        control: Control,
    ) -> None:
        self.record = record
        self.host = host
        self.port = port
        self.slow = slow
        self.rng = rng
        self.tally = tally
        self.control = control
        self.last_event_id = ""
        query = "&".join(f"channel={channel}" for channel in sorted(record.channels))
        self.path = f"/events?{query}"

    async def run(self) -> None:
        while True:
            try:
                sse = await open_sse(
                    self.host,
                    self.port,
                    self.path,
                    last_event_id=self.last_event_id or None,
                    receive_buffer=SLOW_RECEIVE_BUFFER if self.slow else None,
                    timeout=OPEN_TIMEOUT_SECONDS,
                )
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                self.tally.open_failures[type(exc).__name__] += 1
                await asyncio.sleep(self.rng.uniform(*RETRY_AFTER_OPEN_FAILURE))
                continue
            if sse.status != 200:
                self.tally.open_failures[f"HTTP {sse.status}"] += 1
                sse.reset()
                await asyncio.sleep(self.rng.uniform(*RETRY_AFTER_OPEN_FAILURE))
                continue
            self.tally.opens += 1
            if self.slow:
                # asyncio's StreamReader would otherwise keep reading the socket into
                # its own buffer up to 128 KB, and the 4 KB window would never fill.
                sse.reader._limit = SLOW_READ_BYTES  # type: ignore[attr-defined, unused-ignore]
            try:
                client_cut = await self._read(sse)
            finally:
                sse.writer.transport.abort()  # idempotent; frees the socket however we left
            delay = RECONNECT_AFTER_CLIENT_CUT if client_cut else RECONNECT_AFTER_SERVER_CUT
            await asyncio.sleep(self.rng.uniform(*delay))

    async def _read(self, sse: SseSocket) -> bool:
        """Read one stream until someone cuts it; True if this client did."""
        loop = asyncio.get_running_loop()
        reading = StreamReading(self.record, self.last_event_id)
        if self.rng.random() < EARLY_CUT_SHARE:
            life = self.rng.uniform(0, EARLY_CUT_SECONDS)
        else:
            life = self.rng.expovariate(1 / CUT_MEAN_SECONDS)
        cut_at = loop.time() + life
        stall_at = loop.time() + self.rng.expovariate(1 / SLOW_STALL_MEAN_INTERVAL)
        read_bytes = SLOW_READ_BYTES if self.slow else READ_BYTES
        try:
            while True:
                if self.control.quiet:
                    cut_at = float("inf")
                try:
                    async with asyncio.timeout_at(cut_at if cut_at < float("inf") else None):
                        chunk = await sse.reader.read(read_bytes)
                except TimeoutError:
                    await self._cut(sse)
                    return True
                except OSError:
                    chunk = b""
                if not chunk:
                    self.tally.server_cuts += 1
                    return False
                reading.feed(sse.body.feed(chunk), time.monotonic())
                if sse.body.finished:
                    self.tally.server_cuts += 1
                    return False
                if self.slow:
                    await asyncio.sleep(SLOW_READ_PAUSE_SECONDS)
                    if not self.control.quiet and loop.time() >= stall_at:
                        await asyncio.sleep(self.rng.uniform(*SLOW_STALL_SECONDS))
                        stall_at = loop.time() + self.rng.expovariate(1 / SLOW_STALL_MEAN_INTERVAL)
        finally:
            self.last_event_id = reading.last_event_id

    async def _cut(self, sse: SseSocket) -> None:
        if self.rng.random() < 0.5:
            self.tally.client_cuts_fin += 1
            await sse.close()
        else:
            self.tally.client_cuts_rst += 1
            sse.reset()


class Publisher:
    """Publishes at a fixed rate over one kept-alive connection, each publish tried once."""

    def __init__(
        self,
        index: int,
        host: str,
        port: int,
        *,
        token: str,
        channels: list[str],
        rate: float,
        rng: random.Random,
        ledger: Ledger,
        tally: Tally,
        control: Control,
    ) -> None:
        self.index = index
        self.host = host
        self.port = port
        self.token = token
        self.channels = channels
        self.interval = 1 / rate
        self.rng = rng
        self.ledger = ledger
        self.tally = tally
        self.control = control
        self.seq = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.rng.uniform(0, self.interval)
        try:
            while self.control.publishing:
                next_at = max(next_at + self.interval, loop.time() - MAX_PUBLISH_LAG_SECONDS)
                await asyncio.sleep(max(0.0, next_at - loop.time()))
                if not self.control.publishing:
                    break
                if not await self._publish(*self._next_request()):
                    self._close()
                    await asyncio.sleep(PUBLISH_FAILURE_PAUSE_SECONDS)
        finally:
            self._close()

    def _event(self, channels: list[str]) -> tuple[list[str], int, dict[str, object]]:
        self.seq += 1
        named: str | list[str] = channels[0] if len(channels) == 1 else channels
        return channels, self.seq, event_document(named, self.index, self.seq)

    def _channels(self, multi_share: float) -> list[str]:
        if self.rng.random() < multi_share:
            return self.rng.sample(self.channels, 2)
        return [self.rng.choice(self.channels)]

    def _next_request(self) -> tuple[str, object, list[tuple[list[str], int]]]:
        """(path, JSON body, the events in it: channels and sequence number each)."""
        shape = self.rng.random()
        if shape < BATCH_SHARE:
            items, events = [], []
            for _ in range(self.rng.randint(*BATCH_SIZES)):
                channels, seq, document = self._event(self._channels(1 / 3))
                items.append({"channels": channels, "data": document})
                events.append((channels, seq))
            return "/events", items, events
        channels, seq, document = self._event(
            self._channels(MULTI_CHANNEL_SHARE / (1 - BATCH_SHARE))
        )
        body: dict[str, object] = {"data": document}
        if len(channels) > 1:
            body["channels"] = channels[1:]
        return f"/events/{channels[0]}", body, [(channels, seq)]

    async def _publish(
        self, path: str, document: object, events: list[tuple[list[str], int]]
    ) -> bool:
        body = json.dumps(document, separators=(",", ":")).encode()
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {self.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                if self._writer is None or self._reader is None or self._reader.at_eof():
                    self._close()
                    self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
                sent_at = time.monotonic()
                self._writer.write(request)
                head = await self._reader.readuntil(b"\r\n\r\n")
                status, headers = _parse_head(head[: -len(b"\r\n\r\n")])
                payload = await self._reader.readexactly(int(headers.get("content-length", "0")))
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            self.tally.publish_failures[type(exc).__name__] += 1
            return False
        if headers.get("connection", "").lower() == "close":
            self._close()
        if status != 202:
            self.tally.publish_failures[f"HTTP {status}"] += 1
            return True
        try:
            answer = json.loads(payload)
            ids = answer["ids"] if path == "/events" else [answer["id"]]
            if len(ids) != len(events):
                raise ValueError(ids)
        except (ValueError, KeyError, TypeError):
            self.tally.publish_failures["202 without its ids"] += 1
            return True
        acked_at = time.monotonic()
        for event_id, (channels, seq) in zip(ids, events, strict=True):
            for channel in channels:
                self.ledger.ack(channel, event_id, (self.index, seq), sent_at, acked_at)
        return True

    def _close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            with contextlib.suppress(OSError, RuntimeError):
                writer.transport.abort()
