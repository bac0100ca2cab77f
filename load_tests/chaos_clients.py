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
4. **A publish is retried with its key until it is answered** (``keyed``, the
   default): each request carries an ``Idempotency-Key`` of its own, and one whose
   answer did not come (a connection cut or reset, a timeout, a 503 while Redis is
   away, a worker recycled under it) is sent again, with the same key and body, on a
   new connection, until a 202 comes (or ``RETRY_AFTER_STOP_SECONDS`` after
   publishing stops). ``ANSWER_CUT_SHARE`` of the tries are cut by the publisher
   itself (RST) right after the request is written, at a random point before the
   answer: the server may have published it, or not, or be publishing it. The ledger
   then checks that no publish reached a channel under two ids. Without ``keyed``, a
   publish is tried once (``raw_http.KeepAliveClient`` resends, which is right for
   its idempotent uses but would publish twice here), a failure is a failure, and an
   event stored anyway shows as delivered but never acknowledged.
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
ANSWER_CUT_SHARE = 0.1
ANSWER_CUT_DELAY_SECONDS = (0.0, 0.004)
"""How long after writing its request a publisher cuts it: from at once to mid-publish."""
RETRY_AFTER_STOP_SECONDS = 10.0
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
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
    """Tries that got no 202, by why; with keys most of them are retried."""
    publish_cuts: int = 0
    """Tries the publisher cut itself before the answer (then retried)."""
    publish_retries: int = 0
    replayed_answers: int = 0
    """202s marked ``Idempotent-Replayed``: a retry of a publish the server had taken."""
    keys_gave_up: int = 0
    """Keyed publishes still unanswered when retrying stopped."""


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
    """Publishes at a fixed rate over one kept-alive connection: each publish retried with
    its idempotency key until answered (``keyed``), or tried once (design note 4)."""

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
        keyed: bool = True,
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
        self.keyed = keyed
        self.seq = 0
        # Keys of this run only: a second run on the same Redis must not find them.
        self._key_prefix = f"chaos-{rng.getrandbits(64):016x}-{index}"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        # When the publish being tried was first written: the ledger's "sent" (a subscriber
        # that opened after the first try may rightly miss what that try published).
        self._first_sent_at: float | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + self.rng.uniform(0, self.interval)
        try:
            while self.control.publishing:
                next_at = max(next_at + self.interval, loop.time() - MAX_PUBLISH_LAG_SECONDS)
                await asyncio.sleep(max(0.0, next_at - loop.time()))
                if not self.control.publishing:
                    break
                path, document, events = self._next_request()
                self._first_sent_at = None
                if self.keyed:
                    await self._until_answered(path, document, events)
                elif await self._publish(path, document, events) is None:
                    self._close()
                    await asyncio.sleep(PUBLISH_FAILURE_PAUSE_SECONDS)
        finally:
            self._close()

    async def _until_answered(
        self, path: str, document: object, events: list[tuple[list[str], int]]
    ) -> None:
        """Send the request with its key until it is answered (a 202, or a refusal a retry
        cannot change), on a new connection after every failure."""
        key = f"{self._key_prefix}-{events[0][1]}"
        stop_by: float | None = None
        while True:
            cut = self.rng.random() < ANSWER_CUT_SHARE
            status = await self._publish(path, document, events, key=key, cut=cut)
            if status is not None and status not in RETRIED_STATUSES:
                return
            if not self.control.publishing:
                stop_by = stop_by or time.monotonic() + RETRY_AFTER_STOP_SECONDS
                if time.monotonic() > stop_by:
                    self.tally.keys_gave_up += 1
                    return
            self._close()
            self.tally.publish_retries += 1
            await asyncio.sleep(PUBLISH_FAILURE_PAUSE_SECONDS * self.rng.random())

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
        self,
        path: str,
        document: object,
        events: list[tuple[list[str], int]],
        *,
        key: str | None = None,
        cut: bool = False,
    ) -> int | None:
        """One try: the answer's status, or None when no answer came (the connection
        failed, timed out, or ``cut`` it on purpose after writing the request)."""
        body = json.dumps(document, separators=(",", ":")).encode()
        keyed = "" if key is None else f"Idempotency-Key: {key}\r\n"
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {self.token}\r\nContent-Type: application/json\r\n"
            f"{keyed}Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                if self._writer is None or self._reader is None or self._reader.at_eof():
                    self._close()
                    self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
                if self._first_sent_at is None:
                    self._first_sent_at = time.monotonic()
                sent_at = self._first_sent_at
                self._writer.write(request)
                if cut:
                    await self._writer.drain()
                    await asyncio.sleep(self.rng.uniform(*ANSWER_CUT_DELAY_SECONDS))
                    self._close()
                    self.tally.publish_cuts += 1
                    return None
                head = await self._reader.readuntil(b"\r\n\r\n")
                status, headers = _parse_head(head[: -len(b"\r\n\r\n")])
                payload = await self._reader.readexactly(int(headers.get("content-length", "0")))
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            self.tally.publish_failures[type(exc).__name__] += 1
            return None
        if headers.get("connection", "").lower() == "close":
            self._close()
        if status != 202:
            self.tally.publish_failures[f"HTTP {status}"] += 1
            return status
        try:
            answer = json.loads(payload)
            ids = answer["ids"] if path == "/events" else [answer["id"]]
            if len(ids) != len(events):
                raise ValueError(ids)
        except (ValueError, KeyError, TypeError):
            self.tally.publish_failures["202 without its ids"] += 1
            return status
        if headers.get("idempotent-replayed") == "true":
            self.tally.replayed_answers += 1
        acked_at = time.monotonic()
        for event_id, (channels, seq) in zip(ids, events, strict=True):
            for channel in channels:
                self.ledger.ack(channel, event_id, (self.index, seq), sent_at, acked_at)
        return status

    def _close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            with contextlib.suppress(OSError, RuntimeError):
                writer.transport.abort()
