"""Requests over Redis: every worker of every instance sharing one backplane (and key prefix).

Keys and channels (``<prefix>`` is ``REDIS_KEY_PREFIX``):

* ``<prefix>:admin:actions`` — a pub/sub channel every worker subscribes to;
  a request is published there once, whatever the number of workers.
* ``<prefix>:admin:reply:<request id>`` — a list the addressed workers
  ``RPUSH`` their answers onto; the asking worker pops them with ``BLPOP``
  until every worker it named has answered or the timeout has passed. The
  list expires by itself (:data:`REPLY_TTL_SECONDS`), so late answers never
  pile up.

Design decisions:

1. Pub/sub for requests, a list for answers: a request must reach workers that
   nobody can enumerate cheaply, and is worth nothing later (an action not
   carried out at once must not be carried out minutes after, when Redis comes
   back), which is exactly pub/sub's at-most-once delivery. Answers go to one
   known reader, so a list with a blocking pop wastes no round trips.
2. Each worker's subscription is a connection of its own (``PubSub`` holds
   one out of the broker's command pool) and is re-made with capped backoff
   when Redis goes away; requests published meanwhile are simply not
   answered, and the asking worker names the workers that stayed silent.
3. A request names the workers that must act (``targets``); the others, and
   the sender itself, ignore it: an action never reaches more than it names.
4. ``BLPOP`` runs on the broker's command pool, whose socket timeout (5 s)
   exceeds the longest action wait (``ADMIN_ACTION_TIMEOUT_SECONDS`` ≤ 4 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from typing import Any, cast

from redis.exceptions import RedisError

from app.broker.capabilities import RedisAccess
from app.fleet.actions.base import (
    REQUEST_ID,
    SENDER,
    TARGETS,
    ActionBus,
    ActionBusError,
    Answer,
    Handler,
    Request,
)

__all__ = ["REPLY_TTL_SECONDS", "RedisBus"]

logger = logging.getLogger("herald.fleet")

REPLY_TTL_SECONDS = 60
LISTEN_POLL_SECONDS = 1.0
BACKOFF_INITIAL_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 5.0
STOP_SECONDS = 2.0
_WORKER = "worker"


class RedisBus(ActionBus):
    kind = "redis"

    def __init__(self, broker: RedisAccess, worker: str) -> None:
        super().__init__(worker)
        self.broker = broker
        self.channel = f"{broker.key_prefix}:admin:actions"
        self._reply_prefix = f"{broker.key_prefix}:admin:reply:"
        self._handler: Handler | None = None
        self._task: asyncio.Task[None] | None = None
        self._handling: set[asyncio.Task[None]] = set()
        self._closing = False
        self.subscribed = asyncio.Event()

    def reply_key(self, request_id: str) -> str:
        return f"{self._reply_prefix}{request_id}"

    # --- taking requests ---------------------------------------------------

    async def start(self, handler: Handler) -> None:
        self._handler = handler
        self._closing = False
        self._task = asyncio.create_task(self._listen_forever(), name="herald action listener")

    async def stop(self) -> None:
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # Bounded: a cancellation can be lost inside redis-py on Python 3.11
            # (see app.fleet.view, decision 6); the flag ends the loop anyway.
            await asyncio.wait({task}, timeout=STOP_SECONDS)
        for handling in list(self._handling):
            handling.cancel()

    async def _listen_forever(self) -> None:
        backoff = BACKOFF_INITIAL_SECONDS
        while not self._closing:
            pubsub = self.broker.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.subscribed.set()
                backoff = BACKOFF_INITIAL_SECONDS
                while not self._closing:
                    message = await pubsub.get_message(timeout=LISTEN_POLL_SECONDS)
                    if message is not None and message.get("type") == "message":
                        self._take(message["data"])
            except (RedisError, OSError) as exc:
                self.subscribed.clear()
                if not self._closing:
                    logger.warning("operator actions: Redis subscription lost (%s); retrying", exc)
                    await asyncio.sleep(backoff)
                    backoff = min(BACKOFF_MAX_SECONDS, backoff * 2)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]

    def _take(self, raw: bytes) -> None:
        try:
            request = json.loads(raw)
        except ValueError:
            return
        if not isinstance(request, dict) or request.get(SENDER) == self.worker:
            return
        if self.worker not in (request.get(TARGETS) or ()):
            return
        task = asyncio.create_task(self._answer(request), name="herald action")
        self._handling.add(task)
        task.add_done_callback(self._handling.discard)

    async def _answer(self, request: Request) -> None:
        assert self._handler is not None
        answer = await self._handler(request)
        if answer is None:
            return
        key = self.reply_key(str(request.get(REQUEST_ID)))
        payload = json.dumps({**answer, _WORKER: self.worker}, separators=(",", ":"))
        try:
            async with self.broker.client.pipeline(transaction=False) as pipe:
                pipe.rpush(key, payload)
                pipe.expire(key, REPLY_TTL_SECONDS)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            logger.warning("operator action answer could not be sent: %s", exc)

    # --- asking --------------------------------------------------------------

    async def ask(
        self, request: Request, workers: Sequence[str], within_seconds: float
    ) -> dict[str, Answer]:
        if not workers:
            return {}
        client = self.broker.client
        key = self.reply_key(str(request[REQUEST_ID]))
        expected = set(workers)
        answers: dict[str, Answer] = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_seconds
        try:
            await client.publish(self.channel, json.dumps(request, separators=(",", ":")))
            while not expected <= answers.keys():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                popped = cast(
                    list[bytes] | None, await client.blpop([key], timeout=max(0.01, remaining))
                )
                if popped is None:
                    break
                answer = _decode(popped[1])
                if answer is not None and answer.get(_WORKER) in expected:
                    answers[answer.pop(_WORKER)] = answer
            await client.delete(key)
        except (RedisError, OSError) as exc:
            raise ActionBusError(f"Redis: {exc}") from None
        return answers


def _decode(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
