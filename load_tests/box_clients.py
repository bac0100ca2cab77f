"""The box test's crowds: browsers that behave as ``EventSource`` does, each crowd in its own
processes.

A crowd process (:func:`crowd_main`) runs one :class:`CrowdPlan`'s share of browsers on raw
asyncio sockets (``tests/leak/raw_http.py`` opens the streams and decodes the chunked body)
and reports a :class:`CrowdTally` to the driver every second, and once more when told to stop.

Design decisions (read before changing):

1. **EventSource's rules, not a load tool's.** WHATWG's processing model, as Chromium and
   Firefox implement it: a response that is not ``200`` with ``text/event-stream`` *fails*
   the connection and the browser never tries again (a fatal refusal: a lost browser, which
   is why a server must never refuse with a non-200); a network error, or a stream that
   ends or is cut, *reestablishes* it after the reconnection time (the last ``retry:`` read,
   3 s until one is), sending ``Last-Event-ID`` = the last id dispatched
   (:class:`~load_tests.chaos_clients.BrowserCursorParser` commits it at the blank line, as
   a browser does). A small jitter is added, as a crowd of real browsers spreads out.
2. **Deferred is a survivable refusal.** A ``200`` stream that ends within
   ``DEFERRED_SECONDS`` without one event is counted apart from cuts: it is how a server
   can say "later" to an ``EventSource`` without losing it.
3. **One address per browser.** Every browser sends its own ``X-Forwarded-For`` address
   (198.18.0.0/15, which no deployment trusts as a proxy), as browsers behind a platform's
   proxy arrive, so per-address limits see a crowd, not one client. The sockets themselves
   bind to ``SOURCE_SHARE`` browsers per 127.x.y.z source address, so the ephemeral ports
   of one source address are never exhausted.
4. **A stalled reader cannot see its cut.** It sets a 4 KB ``SO_RCVBUF`` before connecting,
   reads the head and the opening frames, then pauses its transport (asyncio's own buffer
   would otherwise keep reading for it). After a stall it drains what is readable: that
   is where an RST or EOF from the server shows, and then it reconnects as a browser does.
5. **Bounded.** Browsers, opens in flight (``OPEN_CONCURRENCY``), every wait (open, drain,
   stop) and the process's life are bounded; a stop cancels every browser and aborts its
   socket.
6. **Browsers are elsewhere.** A crowd process runs at a lower CPU priority (``nice``) than
   the server: the box under test stands alone on its CPUs in production, and the
   browsers it serves are other machines. On a test machine with a core or two the crowd
   would otherwise take half the CPU, and ``/health`` would measure the load generator.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import random
import string
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from typing import Any

from app.wire.parser import SSEMessage
from load_tests.chaos_clients import BrowserCursorParser
from load_tests.generator import raise_open_file_limit
from tests.leak.raw_http import KeepAliveClient, SseSocket, open_sse

__all__ = [
    "CROWD_KINDS",
    "DEFAULT_RETRY_MS",
    "CrowdPlan",
    "CrowdTally",
    "EventSourceState",
    "crowd_main",
    "forwarded_address",
    "source_address",
]

CROWD_KINDS = ("idle", "stalled", "mercure", "responses")
DEFAULT_RETRY_MS = 3000
"""A browser's reconnection time until the server sends ``retry:``."""
RECONNECT_JITTER_SECONDS = (0.0, 0.5)
DEFERRED_SECONDS = 2.0
FED_WINDOW_SECONDS = 5.0
"""An open browser is fed if an event reached it this recently."""
OPEN_TIMEOUT_SECONDS = 15.0
OPEN_CONCURRENCY = 200
OPENING_FRAMES_TIMEOUT_SECONDS = 10.0
READ_BYTES = 65536
STALL_RECEIVE_BUFFER = 4096
DRAIN_QUIET_SECONDS = 0.05
DRAIN_MAX_SECONDS = 0.5
SOURCE_SHARE = 200
FORWARDED_BASE = ipaddress.IPv4Address("198.18.0.0")
FORWARDED_PER_CROWD = 20_000
REPORT_SECONDS = 1.0
STOP_POLL_SECONDS = 0.1
GO_TIMEOUT_SECONDS = 120.0
RESPONSE_STALL_SHARE = 3
"""Every third response follower stalls before reading its answer."""
RESPONSE_TIMEOUT_SECONDS = 30.0
POST_TIMEOUT_SECONDS = 10.0
MAX_RETRY_AFTER_SECONDS = 10.0


def forwarded_address(crowd: int, browser: int) -> str:
    """The ``X-Forwarded-For`` address of a crowd's browser: one each, never a trusted proxy."""
    return str(FORWARDED_BASE + crowd * FORWARDED_PER_CROWD + browser)


def source_address(crowd: int, process: int, browser: int) -> str:
    """The 127.0.0.0/8 address a browser's socket binds to (``SOURCE_SHARE`` browsers each)."""
    block = browser // SOURCE_SHARE
    return f"127.{10 + crowd}.{process}.{1 + block % 250}"


@dataclass(slots=True)
class CrowdTally:
    """What one crowd's browsers did and met."""

    browsers: int = 0
    opened: int = 0
    """Streams answered ``200 text/event-stream``."""
    fatal: int = 0
    """Browsers stopped for good by a refusal (one per browser at most)."""
    fatal_reasons: Counter[str] = field(default_factory=Counter)
    deferred: int = 0
    cuts: int = 0
    """Open streams that ended (EOF, RST, the last chunk) while the browser wanted more."""
    reconnects: int = 0
    resumes: int = 0
    """Opens that sent ``Last-Event-ID`` and got a stream."""
    network_errors: Counter[str] = field(default_factory=Counter)
    events: int = 0
    resets: int = 0
    open_now: int = 0
    fed_now: int = 0
    extra: Counter[str] = field(default_factory=Counter)
    """Crowd-specific counts (responses: runs started, refused, done, failed)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "browsers": self.browsers,
            "opened": self.opened,
            "fatal": self.fatal,
            "fatal_reasons": dict(self.fatal_reasons),
            "deferred": self.deferred,
            "cuts": self.cuts,
            "reconnects": self.reconnects,
            "resumes": self.resumes,
            "network_errors": dict(self.network_errors),
            "events": self.events,
            "resets": self.resets,
            "open_now": self.open_now,
            "fed_now": self.fed_now,
            "extra": dict(self.extra),
        }

    @classmethod
    def merged(cls, documents: list[dict[str, Any]]) -> CrowdTally:
        """The sum of several processes' tallies (``as_dict`` documents)."""
        total = cls()
        for document in documents:
            for name, value in document.items():
                if isinstance(value, dict):
                    getattr(total, name).update(value)
                else:
                    setattr(total, name, getattr(total, name) + value)
        return total


class EventSourceState:
    """One browser's ``EventSource`` bookkeeping across its connections; I/O free."""

    def __init__(self) -> None:
        self.last_event_id = ""
        self.retry_ms = DEFAULT_RETRY_MS
        self.open = False
        self.stopped = False
        self.fatal_reason: str | None = None
        self.attempts = 0
        self.opened_at = 0.0
        self.last_event_at: float | None = None
        self.stream_events = 0
        self._parser = BrowserCursorParser("", self._commit)

    def _commit(self, event_id: str) -> None:
        self.last_event_id = event_id

    def attempt(self) -> bool:
        """A connection is about to be made; True if it is a reconnection."""
        self.attempts += 1
        return self.attempts > 1

    def on_response(self, status: int, content_type: str, now: float) -> bool:
        """The response head arrived; True if the stream is open, False if the browser stopped
        (``fatal_reason`` says why)."""
        if status != 200:
            self.fatal_reason = f"HTTP {status}"
        elif content_type.split(";")[0].strip().lower() != "text/event-stream":
            self.fatal_reason = f"content-type {content_type or 'missing'}"
        if self.fatal_reason is not None:
            self.stopped = True
            return False
        self.open = True
        self.opened_at = now
        self.stream_events = 0
        self._parser = BrowserCursorParser(self.last_event_id, self._commit)
        return True

    def feed(self, body: bytes, now: float) -> list[SSEMessage]:
        """Body bytes of the open stream; the events they completed."""
        messages = self._parser.feed(body)
        if self._parser.retry is not None:
            self.retry_ms = self._parser.retry
        self._parser.comments.clear()  # heartbeats: nothing to keep
        if messages:
            self.stream_events += len(messages)
            self.last_event_at = now
        return messages

    @property
    def positioned(self) -> bool:
        """The stream's opening frames have been dispatched (its position is known)."""
        return bool(self._parser.committed)

    def on_end(self, now: float) -> str:
        """The open stream ended: ``deferred`` (at once, without an event) or ``cut``."""
        self.open = False
        if self.stream_events == 0 and now - self.opened_at < DEFERRED_SECONDS:
            return "deferred"
        return "cut"

    def reconnect_delay(self, rng: random.Random) -> float:
        return self.retry_ms / 1000 + rng.uniform(*RECONNECT_JITTER_SECONDS)

    def fed(self, now: float, window: float = FED_WINDOW_SECONDS) -> bool:
        return self.open and self.last_event_at is not None and now - self.last_event_at <= window


@dataclass(frozen=True, slots=True)
class CrowdPlan:
    """One process's share of a crowd."""

    kind: str
    crowd_index: int
    """The crowd's number: separates its addresses from other crowds'."""
    process_index: int
    first: int
    """Index of this process's first browser in the crowd."""
    count: int
    host: str
    port: int
    channels: tuple[str, ...]
    ramp_seconds: float
    seed: int
    stall_seconds: tuple[float, float] = (5.0, 15.0)
    response_input_chars: int = 8000
    nice: int = 0
    """Added to the process's niceness (design note 6)."""


@dataclass(slots=True)
class _Browser:
    index: int
    path: str
    forwarded_for: str
    source: str
    state: EventSourceState = field(default_factory=EventSourceState)


def _path(kind: str, channel: str) -> str:
    if kind == "mercure":
        return f"/.well-known/mercure?match={channel}"
    return f"/events/{channel}"


class _Crowd:
    def __init__(self, plan: CrowdPlan) -> None:
        self.plan = plan
        self.rng = random.Random(
            plan.seed * 1_000_003 + plan.crowd_index * 101 + plan.process_index
        )
        self.tally = CrowdTally(browsers=plan.count)
        self.gate = asyncio.Semaphore(OPEN_CONCURRENCY)
        self.browsers = [
            _Browser(
                index=plan.first + offset,
                path=_path(plan.kind, plan.channels[(plan.first + offset) % len(plan.channels)]),
                forwarded_for=forwarded_address(plan.crowd_index, plan.first + offset),
                source=source_address(plan.crowd_index, plan.process_index, offset),
            )
            for offset in range(plan.count)
        ]

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        self.tally.open_now = sum(b.state.open for b in self.browsers)
        self.tally.fed_now = sum(b.state.fed(now) for b in self.browsers)
        return self.tally.as_dict()

    async def run_browser(self, browser: _Browser, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.plan.kind == "responses":
            await self._responder(browser)
            return
        stall = self.plan.stall_seconds if self.plan.kind == "stalled" else None
        await self._event_source(browser, browser.path, stall)

    async def _open(self, browser: _Browser, path: str, stalled: bool) -> SseSocket | None:
        """One connection attempt; None after a network error (counted)."""
        state = browser.state
        try:
            async with self.gate, asyncio.timeout(OPEN_TIMEOUT_SECONDS):
                return await open_sse(
                    self.plan.host,
                    self.plan.port,
                    path,
                    last_event_id=state.last_event_id or None,
                    receive_buffer=STALL_RECEIVE_BUFFER if stalled else None,
                    timeout=OPEN_TIMEOUT_SECONDS,
                    headers={"X-Forwarded-For": browser.forwarded_for},
                    source_address=browser.source,
                )
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            self.tally.network_errors[type(exc).__name__] += 1
            return None

    async def _event_source(
        self,
        browser: _Browser,
        path: str,
        stall: tuple[float, float] | None,
        until: Callable[[SSEMessage], bool] | None = None,
    ) -> bool:
        """Connect, read, reconnect as ``EventSource`` does until stopped; True when ``until``
        accepted an event (the caller closes the source), False when the browser gave up."""
        state = browser.state
        while True:
            if state.attempt():
                self.tally.reconnects += 1
            sse = await self._open(browser, path, stall is not None)
            if sse is None:
                await asyncio.sleep(state.reconnect_delay(self.rng))
                continue
            resuming = bool(state.last_event_id)
            if not state.on_response(sse.status, sse.headers.get("content-type", ""), _now()):
                sse.reset()
                self.tally.fatal += 1
                self.tally.fatal_reasons[state.fatal_reason or "?"] += 1
                return False
            self.tally.opened += 1
            self.tally.resumes += resuming
            try:
                if stall is None:
                    done = await self._read(sse, state, until)
                else:
                    done = await self._read_stalled(sse, state, stall)
            finally:
                sse.writer.transport.abort()
            if done:
                state.open = False
                return True
            outcome = state.on_end(_now())
            if outcome == "deferred":
                self.tally.deferred += 1
            else:
                self.tally.cuts += 1
            await asyncio.sleep(state.reconnect_delay(self.rng))

    def _consume(self, sse: SseSocket, state: EventSourceState, chunk: bytes) -> list[SSEMessage]:
        messages = state.feed(sse.body.feed(chunk), _now())
        self.tally.events += len(messages)
        self.tally.resets += sum(message.event == "reset" for message in messages)
        return messages

    async def _read(
        self,
        sse: SseSocket,
        state: EventSourceState,
        until: Callable[[SSEMessage], bool] | None,
    ) -> bool:
        """Read to the end of the stream; True if ``until`` accepted an event first."""
        while True:
            try:
                chunk = await sse.reader.read(READ_BYTES)
            except OSError:
                return False
            if not chunk:
                return False
            messages = self._consume(sse, state, chunk)
            if until is not None and any(until(message) for message in messages):
                return True
            if sse.body.finished:
                return False

    async def _read_stalled(
        self, sse: SseSocket, state: EventSourceState, stall: tuple[float, float]
    ) -> bool:
        """Opening frames, then stalls with a drain after each; returns (False) when cut."""
        transport = sse.writer.transport
        assert isinstance(transport, asyncio.Transport)  # a socket's: it reads too
        try:
            async with asyncio.timeout(OPENING_FRAMES_TIMEOUT_SECONDS):
                while not state.positioned:
                    chunk = await sse.reader.read(READ_BYTES)
                    if not chunk:
                        return False
                    self._consume(sse, state, chunk)
        except (OSError, TimeoutError):
            return False
        while True:
            transport.pause_reading()
            await asyncio.sleep(self.rng.uniform(*stall))
            transport.resume_reading()
            if await self._drain(sse, state):
                return False

    async def _drain(self, sse: SseSocket, state: EventSourceState) -> bool:
        """Read what is readable now (bounded in time); True if the stream ended."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + DRAIN_MAX_SECONDS
        while loop.time() < give_up:
            try:
                async with asyncio.timeout(DRAIN_QUIET_SECONDS):
                    chunk = await sse.reader.read(READ_BYTES)
            except TimeoutError:
                return False
            except OSError:
                return True
            if not chunk:
                return True
            self._consume(sse, state, chunk)
            if sse.body.finished:
                return True
        return False

    async def _responder(self, browser: _Browser) -> None:
        """A page asking for long answers: start a run, follow its stream to ``done``, again."""
        client = KeepAliveClient(
            self.plan.host, self.plan.port, {"X-Forwarded-For": browser.forwarded_for}
        )
        words = string.ascii_lowercase
        try:
            while True:
                size = self.plan.response_input_chars
                text = " ".join(
                    "".join(self.rng.choices(words, k=7)) for _ in range(max(1, size // 8))
                )[:size]
                body = json.dumps({"input": text, "producer": "echo", "cache": False}).encode()
                try:
                    answer = await client.request(
                        "POST", "/api/responses", body, timeout=POST_TIMEOUT_SECONDS
                    )
                except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                    self.tally.network_errors[f"POST {type(exc).__name__}"] += 1
                    await client.aclose()
                    await asyncio.sleep(self.rng.uniform(0.5, 1.5))
                    continue
                if answer.status != 201:
                    self.tally.extra[f"runs refused HTTP {answer.status}"] += 1
                    retry = float(answer.headers.get("retry-after", "1") or 1)
                    await asyncio.sleep(
                        min(MAX_RETRY_AFTER_SECONDS, retry) * self.rng.uniform(1, 1.5)
                    )
                    continue
                self.tally.extra["runs started"] += 1
                stream_url = answer.json()["stream_url"]
                browser.state = EventSourceState()
                stall = (
                    self.plan.stall_seconds if browser.index % RESPONSE_STALL_SHARE == 0 else None
                )
                finished = await self._follow(browser, stream_url, stall)
                if not finished:
                    return  # the browser stopped on a fatal refusal
        finally:
            await client.aclose()

    async def _follow(
        self, browser: _Browser, stream_url: str, stall: tuple[float, float] | None
    ) -> bool:
        def final(message: SSEMessage) -> bool:
            if message.event == "done":
                self.tally.extra["runs done"] += 1
                return True
            if message.event == "error":
                self.tally.extra["runs failed"] += 1
                return True
            return False

        if stall is not None:
            await asyncio.sleep(self.rng.uniform(*stall))  # the tab is busy before it listens
        try:
            async with asyncio.timeout(RESPONSE_TIMEOUT_SECONDS):
                return await self._event_source(browser, stream_url, None, final)
        except TimeoutError:
            self.tally.extra["runs not finished in time"] += 1
            return True


def _now() -> float:
    return time.monotonic()


async def _crowd(plan: CrowdPlan, go: Event, stop: Event, results: Queue[Any]) -> None:
    crowd = _Crowd(plan)
    key = (plan.kind, plan.process_index)
    results.put(("ready", key, {}))
    # Every crowd starts its ramp together, however long each process took to start.
    await asyncio.to_thread(go.wait, GO_TIMEOUT_SECONDS)
    tasks = [
        asyncio.create_task(crowd.run_browser(b, crowd.rng.uniform(0, plan.ramp_seconds)))
        for b in crowd.browsers
    ]
    next_report = time.monotonic() + REPORT_SECONDS
    try:
        while not stop.is_set():
            await asyncio.sleep(STOP_POLL_SECONDS)
            if time.monotonic() >= next_report:
                results.put(("progress", key, crowd.snapshot()))
                next_report += REPORT_SECONDS
        results.put(("final", key, crowd.snapshot()))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    results.put(("closed", key, crowd.snapshot()))


def crowd_main(plan: CrowdPlan, go: Event, stop: Event, results: Queue[Any]) -> None:
    """A crowd process's entry point (``multiprocessing``, spawn)."""
    if plan.nice:
        os.nice(plan.nice)
    raise_open_file_limit()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_crowd(plan, go, stop, results))
