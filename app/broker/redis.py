"""``redis://`` / ``rediss://``: Redis Streams as the backplane for many workers and instances.

Design decisions (read before changing):

1. One stream per channel, key ``<prefix>:{<channel>}``: the braces are a hash
   tag, so every key of a channel sits in one hash slot and a Redis Cluster can
   shard channels. ``XADD … MAXLEN ~ SSE_HISTORY_SIZE`` bounds each stream and
   ``EXPIRE`` (refreshed on every publish) drops idle channels.
2. The stream entry id *is* the SSE event id, so ``Last-Event-ID`` works on any
   worker of any instance, after restarts.
3. One reader per worker, on its own connection, for all the channels this
   worker has subscribers on: ``XREAD BLOCK`` over every channel's last id, then
   local fan-out into the bounded queues. Never one Redis connection per client.
   When a new channel is subscribed, the blocked read is interrupted with
   ``CLIENT UNBLOCK`` so the new channel is picked up at once.
4. The reader's socket timeout is longer than its block time: with redis-py's
   defaults a socket timeout shorter than the block turns every quiet
   ``XREAD BLOCK`` into an error.
5. Redis lost while running: publishes raise ``BrokerUnavailableError`` (the API
   answers 503); open streams stay open; the reader retries with capped
   exponential backoff and resumes from the last id it saw per channel, so
   subscribers miss nothing still in history. Unreachable at start-up:
   ``connect`` fails fast with a clear error.
6. Events published locally are not delivered locally directly: they arrive
   through the reader like everyone else's, so every worker sees one order.
7. Replay reads ``XRANGE (after +`` per channel. A channel's history is known
   complete after ``after`` unless entries were trimmed and the oldest retained
   one is newer than ``after`` (then: ``reset``, conservatively), or the stream
   expired (missing key while ``after`` is older than the channel TTL).
   Known limit: ids of *different* channels can tie within one millisecond of
   Redis time (each stream numbers its own entries). On a multi-channel stream,
   a resume that falls exactly between two such events can skip the second;
   single-channel streams, and events a millisecond apart, resume exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from app.broker.base import Broker, BrokerUnavailableError, EventListener, Replay
from app.sse.encoding import encode_frame
from app.sse.event import Event
from app.sse.event_id import EventKey, format_event_id, parse_event_id

__all__ = ["RedisBroker", "redact_url"]

logger = logging.getLogger("herald.broker")

DEFAULT_KEY_PREFIX = "herald"
READ_BLOCK_MS = 5000
READ_COUNT = 1000
CONNECT_TIMEOUT_SECONDS = 5.0
# Longer than the block: a quiet XREAD BLOCK must not look like a dead socket.
READER_SOCKET_TIMEOUT_SECONDS = READ_BLOCK_MS / 1000 + 10
COMMAND_TIMEOUT_SECONDS = 5.0
BACKOFF_INITIAL_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 5.0
# Python 3.11's asyncio.wait_for (used by redis-py around socket I/O) can swallow a
# cancellation that lands as the I/O completes (CPython gh-86296): so stopping the
# reader is a flag it checks plus a bounded wait, never an unbounded await.
READER_STOP_SECONDS = 2.0
BODY_FIELD = b"b"
PRIVATE_FIELD = b"p"  # present (b"1") on private events only


def redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _event(entry_id: bytes, channel: str, fields: dict[bytes, bytes]) -> Event:
    """A stream entry as an Event: the entry id is the event id."""
    event_id = entry_id.decode()
    body = fields.get(BODY_FIELD, b"")
    private = fields.get(PRIVATE_FIELD) == b"1"
    return Event(_key_of(entry_id), event_id, channel, encode_frame(event_id, body), private)


def _key_of(event_id: bytes) -> EventKey:
    key = parse_event_id(event_id.decode())
    assert key is not None, event_id  # Redis ids always parse
    return key


class RedisBroker(Broker):
    def __init__(
        self,
        url: str,
        *,
        history_size: int,
        channel_ttl_seconds: float,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        block_ms: int = READ_BLOCK_MS,
    ) -> None:
        self.url = url
        self.history_size = max(1, history_size)
        self.channel_ttl_ms = int(channel_ttl_seconds * 1000)
        self.key_prefix = key_prefix
        self.block_ms = block_ms
        self.state = "disconnected"
        self.reconnects = 0
        self.read_errors = 0
        self._listener: EventListener | None = None
        self._commands: aioredis.Redis | None = None
        self._reader: aioredis.Redis | None = None
        self._reader_id: int | None = None
        self._positions: dict[str, bytes] = {}
        self._interest: dict[str, int] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # --- keys ------------------------------------------------------------

    def key(self, channel: str) -> str:
        return f"{self.key_prefix}:{{{channel}}}"

    def _channel_of(self, key: bytes) -> str:
        text = key.decode()
        return text[len(self.key_prefix) + 2 : -1]

    @property
    def client(self) -> aioredis.Redis:
        """The command connection pool, for other parts of Herald that keep state in this Redis
        (``app.cluster.redis``); never the reader's connection, which is blocked in ``XREAD``."""
        if self._commands is None:
            raise RuntimeError("the Redis broker is not connected")
        return self._commands

    # --- lifecycle -------------------------------------------------------

    async def connect(self, listener: EventListener) -> None:
        self._listener = listener
        self._closing = False
        options: dict[str, Any] = {
            "socket_connect_timeout": CONNECT_TIMEOUT_SECONDS,
            "health_check_interval": 30,
        }
        self._commands = aioredis.from_url(
            self.url, socket_timeout=COMMAND_TIMEOUT_SECONDS, **options
        )
        self._reader = aioredis.from_url(
            self.url,
            socket_timeout=READER_SOCKET_TIMEOUT_SECONDS,
            single_connection_client=True,
            **options,
        )
        try:
            await self._commands.ping()
        except (RedisError, OSError) as exc:
            await self.disconnect()
            raise ConnectionError(f"cannot reach Redis at {redact_url(self.url)}: {exc}") from None
        self.state = "ok"
        self._task = asyncio.create_task(self._read_loop(), name="herald redis reader")

    async def disconnect(self) -> None:
        self._closing = True
        self._wakeup.set()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=READER_STOP_SECONDS)
        for client in (self._reader, self._commands):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
        if task is not None and not task.done():
            # Closing the connection fails the read; the loop then sees _closing.
            await asyncio.wait({task}, timeout=READER_STOP_SECONDS)
            if not task.done():
                logger.warning("redis reader did not stop in time; leaving it")
        self._reader = self._commands = None
        self._listener = None
        self.state = "disconnected"

    # --- publish ---------------------------------------------------------

    async def publish(self, channel: str, body: bytes, private: bool = False) -> Event:
        assert self._commands is not None, "connect() first"
        key = self.key(channel)
        try:
            async with self._commands.pipeline(transaction=False) as pipe:
                fields: dict[bytes, bytes] = {BODY_FIELD: body}
                if private:
                    fields[PRIVATE_FIELD] = b"1"
                pipe.xadd(
                    key,
                    fields,  # type: ignore[arg-type]  # redis-py's dict type is invariant
                    maxlen=self.history_size,
                    approximate=True,
                )
                pipe.pexpire(key, self.channel_ttl_ms)
                entry_id, _ = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._mark_down(exc)
            raise BrokerUnavailableError(
                "the event backplane (Redis) is unavailable; retry later"
            ) from None
        return _event(entry_id, channel, fields)

    # --- subscriptions ---------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        count = self._interest.get(channel, 0)
        self._interest[channel] = count + 1
        if count:
            return
        self._positions[channel] = await self._current_position(channel)
        await self._interrupt_reader()

    async def unsubscribe(self, channel: str) -> None:
        count = self._interest.get(channel, 0) - 1
        if count > 0:
            self._interest[channel] = count
            return
        self._interest.pop(channel, None)
        self._positions.pop(channel, None)

    async def _current_position(self, channel: str) -> bytes:
        """The id live delivery starts after: the stream's newest entry (replay covers the rest)."""
        assert self._commands is not None
        try:
            newest = await self._commands.xrevrange(self.key(channel), count=1)
            if newest:
                return cast(bytes, newest[0][0])
            seconds, micros = await self._commands.time()
            return f"{seconds * 1000 + micros // 1000 - 1}-0".encode()
        except (RedisError, OSError) as exc:
            self._mark_down(exc)
            # Redis is down: nothing can be published meanwhile, so "from the
            # start of what exists" loses nothing once it is back.
            return b"0-0"

    async def _interrupt_reader(self) -> None:
        self._wakeup.set()
        if self._reader_id is None or self._commands is None:
            return
        with contextlib.suppress(RedisError, OSError):
            await self._commands.client_unblock(self._reader_id)

    # --- the reader ------------------------------------------------------

    async def _read_loop(self) -> None:
        backoff = BACKOFF_INITIAL_SECONDS
        while not self._closing:
            if not self._positions:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            self._wakeup.clear()
            streams = {self.key(channel): last for channel, last in self._positions.items()}
            try:
                assert self._reader is not None
                if self._reader_id is None:
                    self._reader_id = await self._reader.client_id()
                response = await self._reader.xread(
                    streams,  # type: ignore[arg-type]
                    count=READ_COUNT,
                    block=self.block_ms,
                )
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self._closing:
                    return
                self.read_errors += 1
                self._reader_id = None
                self._mark_down(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
                continue
            if self.state != "ok":
                logger.info("redis reader reconnected to %s", redact_url(self.url))
                self.reconnects += 1
                self.state = "ok"
            backoff = BACKOFF_INITIAL_SECONDS
            if response:
                self._deliver(cast(list[Any], response))

    def _deliver(self, response: list[Any]) -> None:
        events: list[Event] = []
        for raw_key, entries in response:
            channel = self._channel_of(raw_key)
            if channel not in self._positions:
                continue  # unsubscribed while the read was in flight
            for entry_id, fields in entries:
                self._positions[channel] = entry_id
                events.append(_event(entry_id, channel, fields))
        # One read returns entries grouped by stream; deliver them in id order.
        events.sort(key=lambda event: event.key)
        listener = self._listener
        if listener is not None:
            for event in events:
                listener(event)

    def _mark_down(self, exc: BaseException) -> None:
        if self.state == "ok":
            logger.warning("redis unavailable at %s: %s", redact_url(self.url), exc)
        self.state = "down"

    # --- replay ----------------------------------------------------------

    async def replay(self, channels: Sequence[str], last_event_id: str) -> Replay:
        assert self._commands is not None
        after = parse_event_id(last_event_id)
        try:
            seconds, micros = await self._commands.time()
            async with self._commands.pipeline(transaction=False) as pipe:
                for channel in channels:
                    pipe.xinfo_stream(self.key(channel))
                    if after is not None:
                        pipe.xrange(self.key(channel), min=f"({format_event_id(after)}", max="+")
                results = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError) as exc:
            self._mark_down(exc)
            # History cannot be checked now: say so rather than pretend nothing was missed.
            return Replay(reset=True, reason="history_unavailable")
        now_ms = seconds * 1000 + micros // 1000
        step = 1 if after is None else 2
        infos = results[::step]
        if any(isinstance(r, Exception) and not isinstance(r, ResponseError) for r in results):
            return Replay(reset=True, reason="history_unavailable")
        known = [info for info in infos if isinstance(info, dict)]
        head_key = max((_key_of(info["last-generated-id"]) for info in known), default=None)
        head = format_event_id(head_key) if head_key is not None else None
        if after is None or after[0] > now_ms:
            return Replay(reset=True, reason="unknown_id", head=head)
        events: list[Event] = []
        for index, channel in enumerate(channels):
            info, entries = results[2 * index], results[2 * index + 1]
            if not isinstance(info, dict):  # no such key: never published, or expired
                if after[0] < now_ms - self.channel_ttl_ms:
                    return Replay(reset=True, reason="history_expired", head=head)
                continue
            trimmed = info["entries-added"] > info["length"]
            first = info.get("first-entry")
            if trimmed and first is not None and _key_of(first[0]) > after:
                return Replay(reset=True, reason="history_expired", head=head)
            events.extend(_event(entry_id, channel, fields) for entry_id, fields in entries)
        events.sort(key=lambda event: event.key)
        return Replay(events=events)

    # --- housekeeping ----------------------------------------------------

    def sweep(self, now: float) -> int:
        return 0  # Redis expires idle channel streams itself (PEXPIRE on publish)

    def trim_history(self, keep: int) -> int:
        return 0  # history lives in Redis, not in this process's memory

    def stats(self) -> dict[str, object]:
        return {
            "url": redact_url(self.url),
            "state": self.state,
            "channels_read": len(self._positions),
            "reconnects": self.reconnects,
            "read_errors": self.read_errors,
        }
