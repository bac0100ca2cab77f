"""Locust scenarios for Herald: subscribers, publishers, streamed responses, an admin poller.

Run headless against a server it starts itself, or a deployment, with
``python -m load_tests.run_locust`` (see docs/performance.md, "Load testing"); or use
Locust directly from the repository root::

    PUBLISH_TOKEN=... ADMIN_TOKEN=... python -m locust -f load_tests/locustfile.py \\
        --host https://herald.example.com

User classes:

* ``SubscriberUser`` — holds a stream on one of ``--channels`` channels for
  ``--hold-min``..``--hold-max`` seconds, then reconnects with ``Last-Event-ID``
  (as a browser does after a drop). Parses with Herald's WHATWG parser and
  reports every delivered event as its own request, type ``SSE`` name
  ``delivery``, whose response time is the publish-to-receive latency from the
  ``sent_at`` timestamp in the payload. ``reset`` and ``gap`` events, an id that
  does not increase (a duplicate after resume) and broken streams are failures.
* ``PublisherUser`` — ``POST /events/{channel}`` round-robin over the channels at
  ``--publish-rate`` events/s each, with ``PUBLISH_TOKEN`` from the environment.
* ``BatchPublisherUser`` — ``POST /events`` with ``--batch-size`` events (round-robin
  over the channels) every ``1/--batch-rate`` seconds; a batch counts as failed
  unless it is answered 202 with one id per event, in order.
* ``ResponsesUser`` — ``POST /api/responses`` (echo producer), then follows
  ``stream_url`` to ``done``; ``--cache-hit-ratio`` of the questions come from a
  small pool (cache hits after their first run), the rest are new (misses).
* ``AdminUser`` — polls ``GET /api/admin/metrics`` with ``ADMIN_TOKEN`` from the
  environment (stops itself when the token is unset) and reports the server's
  figures at the end.

Publishers, batch publishers, responders and admins are fixed counts
(``--publishers`` ...); every other user is a subscriber. At the end the run
fails (exit code 1) when the failure ratio is over ``--max-fail-ratio``, the p95
delivery latency is over ``--delivery-p95-ms``, fewer than ``--min-deliveries``
events arrived, or (with batch publishers) the p95 answer time of a batch is
over ``--batch-p95-ms`` or fewer than ``--min-batches`` batches were accepted.

Latency compares the publisher's clock with the subscriber's: on one machine
that is one clock; with distributed workers, keep their clocks in sync (NTP).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import sys
import time
import uuid
from argparse import ArgumentParser
from collections.abc import Callable
from pathlib import Path
from typing import Any

from locust import HttpUser, between, events, task
from locust.env import Environment
from locust.event import EventHook
from locust.exception import StopUser
from locust.runners import WorkerRunner
from locust.stats import RequestStats

# Locust puts only this file's directory on sys.path; the parser lives in the app package.
if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.wire.parser import SSEMessage, SSEParser

__all__ = [
    "AdminUser",
    "BatchPublisherUser",
    "PublisherUser",
    "ResponsesUser",
    "SubscriberUser",
    "threshold_problems",
]

logger = logging.getLogger("herald.locust")

SSE = "SSE"
DELIVERY = "delivery"
BATCH = "POST /events (batch)"
RESPONSE = "RESPONSE"
EVENT_STREAM = {"Accept": "text/event-stream"}
CONNECT_TIMEOUT_SECONDS = 10.0
RESPONSE_READ_TIMEOUT_SECONDS = 60.0
REFUSED_BACKOFF_SECONDS = 1.0
"""Pause after a refused stream (503, 429) before the next try, like EventSource's retry."""

# The admin poller's latest view of the server, reported when the run ends.
server_figures: dict[str, Any] = {}


def add_options(parser: ArgumentParser, **_kwargs: Any) -> None:
    group = parser.add_argument_group("Herald")
    group.add_argument("--channels", type=int, default=4, help="channels to spread streams over")
    group.add_argument("--channel-prefix", default="locust", help="channel names: <prefix>-<n>")
    group.add_argument("--publish-rate", type=float, default=5.0, help="events/s per publisher")
    group.add_argument("--payload-bytes", type=int, default=100, help="padding per event")
    group.add_argument("--hold-min", type=float, default=10.0, help="shortest stream, seconds")
    group.add_argument("--hold-max", type=float, default=30.0, help="longest stream, seconds")
    group.add_argument(
        "--stream-read-timeout",
        type=float,
        default=45.0,
        help="seconds without a byte (event or heartbeat) before a stream counts as broken",
    )
    group.add_argument("--cache-hit-ratio", type=float, default=0.5)
    group.add_argument("--hit-pool", type=int, default=10, help="questions that get repeated")
    group.add_argument("--responses-producer", default="echo")
    group.add_argument("--admin-interval", type=float, default=2.0, help="seconds between polls")
    group.add_argument("--publishers", type=int, default=1, help="publishing users")
    group.add_argument("--batch-publishers", type=int, default=1, help="batch publishing users")
    group.add_argument("--batch-size", type=int, default=100, help="events per batch")
    group.add_argument("--batch-rate", type=float, default=2.0, help="batches/s per user")
    group.add_argument("--batch-p95-ms", type=float, default=500.0)
    group.add_argument("--min-batches", type=int, default=1)
    group.add_argument("--responders", type=int, default=1, help="streamed-response users")
    group.add_argument("--admins", type=int, default=1, help="admin metrics pollers")
    group.add_argument("--delivery-p95-ms", type=float, default=500.0)
    group.add_argument("--max-fail-ratio", type=float, default=0.01)
    group.add_argument("--min-deliveries", type=int, default=1)


def fix_counts(environment: Environment, **_kwargs: Any) -> None:
    options = environment.parsed_options
    if options is None:
        return
    # Fixed counts are taken first; the remaining users are subscribers.
    PublisherUser.fixed_count = options.publishers
    BatchPublisherUser.fixed_count = options.batch_publishers
    ResponsesUser.fixed_count = options.responders
    AdminUser.fixed_count = options.admins


def _report(
    environment: Environment,
    request_type: str,
    name: str,
    response_time: float,
    length: int = 0,
    exception: Exception | None = None,
) -> None:
    # EventHook.fire is untyped; this is the signature Locust's stats listener takes.
    fire: Callable[..., object] = environment.events.request.fire
    fire(
        request_type=request_type,
        name=name,
        response_time=response_time,
        response_length=length,
        exception=exception,
        context={},
    )


class StreamProblem(Exception):
    """Something a browser would notice on a stream: a reset, a gap, a repeated event."""


def _event_key(event_id: str) -> tuple[int, int] | None:
    """Herald ids are ``<ms>-<seq>`` and increase along a stream."""
    millis, dash, seq = event_id.partition("-")
    if not (dash and millis.isdigit() and seq.isdigit()):
        return None
    return int(millis), int(seq)


class SubscriberUser(HttpUser):
    """An EventSource: stream, parse, report each delivery, resume with Last-Event-ID."""

    weight = 1

    def wait_time(self) -> float:
        return 0.0  # reconnect at once, as after a drop with a short retry

    def on_start(self) -> None:
        options = self.environment.parsed_options
        self.channel = f"{options.channel_prefix}-{random.randrange(options.channels)}"
        self.last_event_id = ""
        self.last_key: tuple[int, int] | None = None

    @task
    def listen(self) -> None:
        options = self.environment.parsed_options
        headers = dict(EVENT_STREAM)
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        hold_until = time.monotonic() + random.uniform(options.hold_min, options.hold_max)
        opened = time.monotonic()
        # stream=True: Locust reports the time to the response headers, then we read.
        response = self.client.get(
            f"/events/{self.channel}",
            headers=headers,
            stream=True,
            name="GET /events/[channel]",
            timeout=(CONNECT_TIMEOUT_SECONDS, options.stream_read_timeout),
        )
        if not response.ok:
            response.close()
            time.sleep(REFUSED_BACKOFF_SECONDS)
            return
        parser = SSEParser()
        ended_by_server = True
        try:
            for chunk in response.iter_content(chunk_size=None):
                for message in parser.feed(chunk):
                    self._deliver(message, len(chunk))
                if parser.last_event_id:
                    self.last_event_id = parser.last_event_id
                if time.monotonic() >= hold_until:
                    ended_by_server = False
                    break
        except OSError as exc:  # requests' errors are OSErrors: read timeout, reset
            ended_by_server = False
            _report(self.environment, SSE, "stream", _ms_since(opened), exception=exc)
        finally:
            response.close()
        if ended_by_server:
            # Not a failure: Herald ends streams on purpose (overflow, idle, shutdown)
            # and the client resumes; counted so a report shows how often.
            _report(self.environment, SSE, "stream ended by server", _ms_since(opened))

    def _deliver(self, message: SSEMessage, chunk_length: int) -> None:
        environment = self.environment
        if message.event in ("reset", "gap"):
            _report(
                environment,
                SSE,
                message.event,
                0.0,
                exception=StreamProblem(f"{message.event}: {message.data[:200]}"),
            )
            self.last_key = None
            return
        key = _event_key(message.id)
        if key is not None and self.last_key is not None and key <= self.last_key:
            problem = StreamProblem(f"event {message.id} again or out of order after resume")
            _report(environment, SSE, "order", 0.0, exception=problem)
            return
        self.last_key = key or self.last_key
        try:
            sent_at = float(json.loads(message.data)["sent_at"])
        except (ValueError, KeyError, TypeError) as exc:
            _report(environment, SSE, "foreign event", 0.0, exception=exc)
            return
        latency = max(0.0, (time.time() - sent_at) * 1000)
        _report(environment, SSE, DELIVERY, latency, len(message.data))


class PublisherUser(HttpUser):
    """Publishes timestamped events round-robin over the channels."""

    fixed_count = 1
    _sequence = itertools.count(1)

    def on_start(self) -> None:
        options = self.environment.parsed_options
        token = os.environ.get("PUBLISH_TOKEN", "")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.interval = 1.0 / options.publish_rate
        self.next_due = time.monotonic()

    def wait_time(self) -> float:
        # A fixed schedule, not a pause after each publish: a slow answer must
        # not lower the rate the server is asked to take.
        self.next_due += self.interval
        return max(0.0, self.next_due - time.monotonic())

    @task
    def publish(self) -> None:
        options = self.environment.parsed_options
        seq = next(self._sequence)
        channel = f"{options.channel_prefix}-{seq % options.channels}"
        data = {"sent_at": time.time(), "seq": seq, "pad": "x" * options.payload_bytes}
        self.client.post(
            f"/events/{channel}",
            json={"data": data},
            headers=self.headers,
            name="POST /events/[channel]",
        )


class BatchPublisherUser(HttpUser):
    """Publishes batches of timestamped events, each event on the next channel in turn."""

    fixed_count = 1

    def on_start(self) -> None:
        options = self.environment.parsed_options
        token = os.environ.get("PUBLISH_TOKEN", "")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.interval = 1.0 / options.batch_rate
        self.next_due = time.monotonic()

    def wait_time(self) -> float:
        self.next_due += self.interval  # a fixed schedule, as for PublisherUser
        return max(0.0, self.next_due - time.monotonic())

    @task
    def publish_batch(self) -> None:
        options = self.environment.parsed_options
        sent_at = time.time()
        items = []
        for _ in range(options.batch_size):
            seq = next(PublisherUser._sequence)
            data = {"sent_at": sent_at, "seq": seq, "pad": "x" * options.payload_bytes}
            items.append(
                {"channel": f"{options.channel_prefix}-{seq % options.channels}", "data": data}
            )
        with self.client.post(
            "/events", json=items, headers=self.headers, name=BATCH, catch_response=True
        ) as response:
            if response.status_code != 202:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
                return
            ids = response.json().get("ids")
            if not isinstance(ids, list) or len(ids) != len(items):
                response.failure(f"answered {ids!r:.200} for {len(items)} events")


class ResponsesUser(HttpUser):
    """Asks for streamed responses, some repeated (cache hits), and reads them to ``done``."""

    fixed_count = 1
    wait_time = between(0.5, 1.5)

    @task
    def ask(self) -> None:
        options = self.environment.parsed_options
        if random.random() < options.cache_hit_ratio:
            question = f"locust repeated question number {random.randrange(options.hit_pool)}"
        else:
            question = f"locust fresh question {uuid.uuid4().hex}"
        started = time.monotonic()
        with self.client.post(
            "/api/responses",
            json={"input": question, "producer": options.responses_producer},
            name="POST /api/responses",
            catch_response=True,
        ) as created:
            if created.status_code != 201:
                created.failure(f"HTTP {created.status_code}: {created.text[:200]}")
                return
            try:
                answer = created.json()
                stream_url, cached = str(answer["stream_url"]), bool(answer["cached"])
            except (ValueError, KeyError) as exc:
                created.failure(f"unexpected answer: {exc}")
                return
        name = "response (cache hit)" if cached else "response (produced)"
        problem = self._follow(stream_url, question)
        _report(self.environment, RESPONSE, name, _ms_since(started), exception=problem)

    def _follow(self, stream_url: str, question: str) -> Exception | None:
        response = self.client.get(
            stream_url,
            headers=EVENT_STREAM,
            stream=True,
            name="GET /api/responses/[id]/events",
            timeout=(CONNECT_TIMEOUT_SECONDS, RESPONSE_READ_TIMEOUT_SECONDS),
        )
        if not response.ok:
            response.close()
            return StreamProblem(f"stream answered HTTP {response.status_code}")
        parser = SSEParser()
        try:
            for chunk in response.iter_content(chunk_size=None):
                for message in parser.feed(chunk):
                    if message.event == "error":
                        return StreamProblem(f"error event: {message.data[:200]}")
                    if message.event == "done":
                        text = str(json.loads(message.data).get("text", ""))
                        if text.split() != question.split():
                            return StreamProblem(f"echo answered {text[:100]!r}")
                        return None
        except OSError as exc:
            return exc
        finally:
            response.close()
        return StreamProblem("stream ended before done")


class AdminUser(HttpUser):
    """Polls the admin metrics with ADMIN_TOKEN and keeps the server's latest figures."""

    fixed_count = 1

    def wait_time(self) -> float:
        return float(self.environment.parsed_options.admin_interval)

    def on_start(self) -> None:
        token = os.environ.get("ADMIN_TOKEN", "")
        if not token:
            logger.warning("ADMIN_TOKEN is not set: the admin metrics poller stops")
            raise StopUser()
        self.headers = {"Authorization": f"Bearer {token}"}

    @task
    def metrics(self) -> None:
        with self.client.get(
            "/api/admin/metrics",
            headers=self.headers,
            name="GET /api/admin/metrics",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
                return
            try:
                document = response.json()
                memory, sse = document["memory"], document["sse"]
                rss = int(memory["rss_bytes"])
                server_figures.update(
                    rss_bytes=rss,
                    peak_rss_bytes=max(rss, server_figures.get("peak_rss_bytes", 0)),
                    memory_level=memory["level"],
                    connections=sse["connections"],
                    published=sse["published"],
                    delivered=sse["delivered"],
                    dropped=sse["dropped"],
                    overflow_disconnects=sse["overflow_disconnects"],
                    cache_hit_rate=document["cache"]["hit_rate"],
                )
            except (ValueError, KeyError, TypeError) as exc:
                response.failure(f"unexpected metrics document: {exc!r}")


def _ms_since(started: float) -> float:
    return (time.monotonic() - started) * 1000


def threshold_problems(stats: RequestStats, options: Any) -> list[str]:
    """Why the run fails its thresholds (an empty list: it passes)."""
    problems = []
    ratio = stats.total.fail_ratio
    if ratio > options.max_fail_ratio:
        problems.append(f"failure ratio {ratio:.2%} > {options.max_fail_ratio:.2%}")
    delivery = stats.entries.get((DELIVERY, SSE))
    count = delivery.num_requests if delivery is not None else 0
    if count < options.min_deliveries:
        problems.append(f"{count} deliveries < --min-deliveries {options.min_deliveries}")
    if delivery is not None and count:
        p95 = delivery.get_response_time_percentile(0.95)
        if p95 > options.delivery_p95_ms:
            problems.append(f"p95 delivery latency {p95} ms > {options.delivery_p95_ms:g} ms")
    if getattr(options, "batch_publishers", 0):
        batches = stats.entries.get((BATCH, "POST"))
        accepted = batches.num_requests - batches.num_failures if batches is not None else 0
        if accepted < options.min_batches:
            problems.append(f"{accepted} batches accepted < --min-batches {options.min_batches}")
        if batches is not None and batches.num_requests:
            p95 = batches.get_response_time_percentile(0.95)
            if p95 > options.batch_p95_ms:
                problems.append(f"p95 batch answer {p95} ms > {options.batch_p95_ms:g} ms")
    return problems


def check_thresholds(environment: Environment, **_kwargs: Any) -> None:
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return  # the master judges the whole run
    stats = environment.stats
    delivery = stats.entries.get((DELIVERY, SSE))
    if delivery is not None and delivery.num_requests:
        logger.info(
            "deliveries: %d, latency p50 %s ms, p95 %s ms, p99 %s ms, max %.0f ms",
            delivery.num_requests,
            delivery.get_response_time_percentile(0.50),
            delivery.get_response_time_percentile(0.95),
            delivery.get_response_time_percentile(0.99),
            delivery.max_response_time or 0,
        )
    if server_figures:
        logger.info("server (admin metrics, last poll): %s", json.dumps(server_figures))
    problems = threshold_problems(stats, environment.parsed_options)
    for problem in problems:
        logger.error("threshold violated: %s", problem)
    if not problems:
        logger.info("thresholds met")
    environment.process_exit_code = 1 if problems else 0


def _listen(hook: EventHook, listener: Callable[..., None]) -> None:
    # EventHook.add_listener is untyped; going through a typed name keeps mypy strict.
    add: Callable[[Callable[..., None]], object] = hook.add_listener
    add(listener)


_listen(events.init_command_line_parser, add_options)
_listen(events.init, fix_counts)
_listen(events.quitting, check_thresholds)
