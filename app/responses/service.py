"""Streamed responses: cache, single flight, conversations and producer runs in one place.

``create()`` decides, in this order: a cache hit (a run that is finished at
once, producer not called) → an identical request already running (join it:
single flight) → a new run whose producer task belongs to the run. When a run
completes its text goes into the cache and the conversation; a failed run
caches nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.core.config import Settings
from app.responses.cache import ResponseCache, make_cache_key
from app.responses.conversations import ConversationStore
from app.responses.producers.base import Message, Producer, ProducerError
from app.responses.producers.echo import EchoProducer
from app.responses.producers.registry import ProducerRegistry
from app.responses.runs import Run, RunRegistry, RunsFullError
from app.sse.hub import StreamRefusedError

__all__ = ["Created", "ResponseService", "build_producers"]

logger = logging.getLogger("herald.responses")


def build_producers(settings: Settings, extra: list[Producer] | None = None) -> ProducerRegistry:
    registry = ProducerRegistry()
    registry.register(EchoProducer(delay_ms=settings.echo_delay_ms))
    if settings.upstream_base_url:
        from app.responses.producers.openai import OpenAIProducer

        api_key = settings.upstream_api_key
        registry.register(
            OpenAIProducer(
                settings.upstream_base_url,
                api_key.get_secret_value() if api_key else None,
                settings.upstream_model,
                timeout_seconds=settings.upstream_timeout_seconds,
            )
        )
    for producer in extra or []:
        registry.register(producer)
    if settings.default_producer not in registry:
        raise ValueError(
            f"DEFAULT_PRODUCER {settings.default_producer!r} is not registered "
            f"(known: {', '.join(registry.names())})"
        )
    return registry


@dataclass(frozen=True, slots=True)
class Created:
    run: Run
    cached: bool
    joined: bool


class ResponseService:
    def __init__(
        self,
        settings: Settings,
        producers: ProducerRegistry,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.producers = producers
        self.clock = clock
        self.cache = ResponseCache(
            max_items=settings.cache_max_items,
            max_bytes=settings.cache_max_bytes,
            ttl_seconds=settings.cache_ttl_seconds,
            clock=clock,
        )
        self.conversations = ConversationStore(
            max_conversations=settings.max_conversations,
            max_messages=settings.max_messages,
            max_content_messages=settings.max_content_messages,
            max_content_length=settings.max_content_length,
        )
        self.runs = RunRegistry(
            max_runs=settings.response_max_runs,
            retention_seconds=settings.response_retention_seconds,
            clock=clock,
        )
        # Extra refusals (the memory guard adds one), as on the hub.
        self.admission_checks: list[Callable[[], StreamRefusedError | None]] = []
        self.started = self.completed = self.failed = self.joined = self.cache_hits = 0

    async def stop(self) -> None:
        tasks = [run.task for run in self.runs.runs() if run.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for producer_name in self.producers.names():
            aclose = getattr(self.producers.get(producer_name), "aclose", None)
            if aclose is not None:
                await aclose()

    def admit(self) -> None:
        for check in self.admission_checks:
            refusal = check()
            if refusal is not None:
                raise refusal

    def create(
        self,
        input: str,
        producer_name: str | None = None,
        conversation_id: str | None = None,
        use_cache: bool = True,
    ) -> Created:
        """Start (or find) the run for this request. Raises ``UnknownProducerError``,
        ``StreamRefusedError``."""
        producer = self.producers.get(producer_name or self.settings.default_producer)
        self.admit()
        context = self.conversations.context(conversation_id) if conversation_id else ()
        key = make_cache_key(producer.name, input, context)
        if use_cache:
            in_flight = self.runs.in_flight(key)
            if in_flight is not None:
                self.joined += 1
                return Created(in_flight, cached=False, joined=True)
            hit = self.cache.get(key)
            if hit is not None:
                run = self._add(None)
                run.add_delta(hit)
                run.finish(self.clock(), cached=True)
                self.cache_hits += 1
                self._remember(conversation_id, input, hit)
                return Created(run, cached=True, joined=False)
        run = self._add(key if use_cache else None)
        run.task = asyncio.create_task(
            self._produce(run, producer, input, context, conversation_id, use_cache),
            name=f"response {run.id}",
        )
        self.started += 1
        return Created(run, cached=False, joined=False)

    def _add(self, key: str | None) -> Run:
        try:
            return self.runs.add(key, self.settings.response_max_kb * 1024)
        except RunsFullError as exc:
            raise StreamRefusedError(str(exc)) from None

    async def _produce(
        self,
        run: Run,
        producer: Producer,
        input: str,
        context: tuple[Message, ...],
        conversation_id: str | None,
        use_cache: bool,
    ) -> None:
        timeout = self.settings.response_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                async for chunk in producer.stream(input, context):
                    if chunk and not run.add_delta(chunk):
                        limit = self.settings.response_max_kb
                        raise ProducerError(f"response exceeded RESPONSE_MAX_KB ({limit} KB)")
        except ProducerError as exc:
            self._fail(run, str(exc))
        except TimeoutError:
            self._fail(run, f"response timed out after {timeout:g}s")
        except asyncio.CancelledError:
            self._fail(run, "server is shutting down")
            raise
        except Exception:
            logger.exception("producer %s failed on run %s", producer.name, run.id)
            self._fail(run, "the producer failed unexpectedly")
        else:
            text = run.text
            run.finish(self.clock())
            self.runs.finished(run)
            self.completed += 1
            if use_cache and run.key is not None:
                self.cache.set(run.key, text, conversation=conversation_id)
            self._remember(conversation_id, input, text)

    def _fail(self, run: Run, detail: str) -> None:
        run.fail(detail, self.clock())
        self.runs.finished(run)
        self.failed += 1
        logger.info("response %s failed: %s", run.id, detail)

    def _remember(self, conversation_id: str | None, input: str, answer: str) -> None:
        if conversation_id:
            self.conversations.append(conversation_id, "user", input)
            self.conversations.append(conversation_id, "assistant", answer)

    @property
    def follower_count(self) -> int:
        return sum(run.followers for run in self.runs.runs())

    def trim(self) -> int:
        """Memory pressure: forget finished runs now; returns bytes freed."""
        return self.runs.drop_finished()

    def stats(self) -> dict[str, object]:
        runs = self.runs.runs()
        return {
            "runs": len(runs),
            "running": sum(1 for run in runs if not run.finished),
            "followers": self.follower_count,
            "bytes": sum(run.size_bytes for run in runs),
            "max_runs": self.runs.max_runs,
            "started": self.started,
            "completed": self.completed,
            "failed": self.failed,
            "joined": self.joined,
            "cache_hits": self.cache_hits,
            "evicted": self.runs.evicted,
            "conversations": self.conversations.stats(),
        }
