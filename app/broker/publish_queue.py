"""Publishes of concurrent requests batched into script calls, for both Redis brokers.

Design decisions (read before changing):

1. Each publish joins a queue, and a flusher task sends everything queued as one
   call, with at most ``PUBLISH_CALLS_IN_FLIGHT`` calls in flight. No timer: an
   idle broker sends at once, a busy one sends bigger calls. A batch
   (``POST /events``) is one publish, so one call.
2. Calls may run concurrently because Redis numbers the events, not we: each call
   is atomic, and the readers deliver in log order whatever order the answers come
   back in.
3. A request's events are contiguous in one call, so a batch stays all or none
   and in order. The queue is bounded by the requests in flight (each bounded by
   ``MAX_BATCH_BYTES``); a call carries at most ``PUBLISH_CALL_EVENTS`` events
   unless one request alone has more.
4. Nobody waits forever: a call that fails, raises or is cancelled answers every
   request it carried with ``BrokerUnavailableError`` (503), and ``close`` answers
   what is still queued the same way.
5. A keyed publish (``publish_once``) rides in a call like any other: the call names its
   drafts and key (``CallKey``), and the script looks the key up as it numbers them.
   Two requests with one key in the same call are looked up in order, so the second
   finds the first's record.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from app.broker.base import BrokerUnavailableError, Draft, IdempotencyConflictError, PublishKey

__all__ = [
    "PUBLISH_CALLS_IN_FLIGHT",
    "PUBLISH_CALL_EVENTS",
    "CallKey",
    "CallResult",
    "PendingPublish",
    "PublishQueue",
    "next_call",
]

logger = logging.getLogger("herald.broker")

PUBLISH_CALL_EVENTS = 1000
# Two calls in flight: while one waits for Redis, the next gathers what arrived meanwhile.
# One leaves requests waiting behind the call in flight; more make every call smaller.
PUBLISH_CALLS_IN_FLIGHT = 2


@dataclass(slots=True)
class CallResult:
    """What one call answers: each draft's entry id, in call order, and the indexes of the
    drafts that failed (their requests get 503), that a key's record answered (nothing
    published), and whose key is bound to other drafts (nothing published: refused)."""

    entry_ids: list[bytes]
    failed: set[int] = field(default_factory=set)
    replayed: set[int] = field(default_factory=set)
    conflicting: set[int] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class CallKey:
    """A keyed publish in a call: the call's drafts ``first`` to ``first + count - 1``."""

    first: int
    count: int
    key: PublishKey


class PendingPublish:
    """One ``publish`` call waiting for the flusher: its drafts, its key if any, and who
    awaits their ids; ``replayed`` once a key's record answered it."""

    __slots__ = ("drafts", "future", "key", "replayed")

    def __init__(
        self,
        drafts: Sequence[Draft],
        future: asyncio.Future[list[bytes]],
        key: PublishKey | None = None,
    ) -> None:
        self.drafts = drafts
        self.future = future
        self.key = key
        self.replayed = False


def next_call(pending: Sequence[PendingPublish]) -> int:
    """How many of the queued publishes the next script call carries: up to
    ``PUBLISH_CALL_EVENTS`` events, or one publish that alone has more."""
    taken, events = 0, 0
    for waiting in pending:
        if taken and events + len(waiting.drafts) > PUBLISH_CALL_EVENTS:
            break
        taken += 1
        events += len(waiting.drafts)
    return taken


class PublishQueue:
    """The queue and its flushers. ``send`` makes one call for a list of drafts; it raises
    ``BrokerUnavailableError`` when none of them was published (nothing is logged: the
    broker has said why), and any other exception is logged as a bug."""

    def __init__(
        self,
        send: Callable[[list[Draft], list[CallKey]], Awaitable[CallResult]],
        *,
        unavailable: str,
        task_name: str,
    ) -> None:
        self._send = send
        self._unavailable = unavailable
        self._task_name = task_name
        self._pending: list[PendingPublish] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self.calls = 0

    async def publish(self, drafts: Sequence[Draft]) -> list[bytes]:
        """The entry ids of ``drafts`` once a call has written them. Raises
        ``BrokerUnavailableError``."""
        return await self._enqueue(PendingPublish(drafts, self._future()))

    async def publish_once(
        self, drafts: Sequence[Draft], key: PublishKey
    ) -> tuple[list[bytes], bool]:
        """The entry ids of ``drafts`` once a call has written them or found them under
        ``key``, and whether it found them (nothing published). Raises
        ``BrokerUnavailableError`` or ``IdempotencyConflictError``."""
        pending = PendingPublish(drafts, self._future(), key)
        entry_ids = await self._enqueue(pending)
        return entry_ids, pending.replayed

    @staticmethod
    def _future() -> asyncio.Future[list[bytes]]:
        return asyncio.get_running_loop().create_future()

    async def _enqueue(self, pending: PendingPublish) -> list[bytes]:
        self._pending.append(pending)
        if len(self._flushers) < PUBLISH_CALLS_IN_FLIGHT:
            flusher = asyncio.create_task(self._flush(), name=self._task_name)
            self._flushers.add(flusher)
            flusher.add_done_callback(self._flushers.discard)
        return await pending.future

    async def close(self, wait_seconds: float) -> None:
        """Let the calls in flight answer (or fail) for up to ``wait_seconds``, before the
        connections they use close, then answer what is still queued with 503."""
        if self._flushers:
            await asyncio.wait(set(self._flushers), timeout=wait_seconds)
        for pending in self._pending:
            self._fail(pending)
        self._pending = []

    async def _flush(self) -> None:
        """Send what is queued as one call, again and again until nothing is."""
        while self._pending:
            taken = next_call(self._pending)
            call, self._pending = self._pending[:taken], self._pending[taken:]
            await self._call(call)

    async def _call(self, call: list[PendingPublish]) -> None:
        drafts: list[Draft] = []
        keys: list[CallKey] = []
        for pending in call:
            if pending.key is not None:
                keys.append(CallKey(len(drafts), len(pending.drafts), pending.key))
            drafts += pending.drafts
        try:
            result = await self._send(drafts, keys)
        except BrokerUnavailableError:
            for pending in call:
                self._fail(pending)
            return
        except BaseException as exc:  # a bug or a cancellation: nobody may wait forever
            for pending in call:
                self._fail(pending)
            if isinstance(exc, asyncio.CancelledError):
                raise
            logger.exception("publish call failed")
            return
        self.calls += 1
        start = 0
        entry_ids, failed = result.entry_ids, result.failed
        for pending in call:
            end = start + len(pending.drafts)
            if pending.future.done():
                pass  # its request has gone meanwhile
            elif pending.key is not None and not result.conflicting.isdisjoint(range(start, end)):
                pending.future.set_exception(IdempotencyConflictError(pending.key.key))
            elif failed.isdisjoint(range(start, end)):
                if pending.key is not None:
                    pending.replayed = result.replayed.issuperset(range(start, end))
                pending.future.set_result(entry_ids[start:end])
            else:
                self._fail(pending)
            start = end

    def _fail(self, pending: PendingPublish) -> None:
        if not pending.future.done():
            pending.future.set_exception(BrokerUnavailableError(self._unavailable))
