"""The subscription API over every worker: each request gathers the live subscriptions of
every worker of the hub, over the bus that carries operator actions.

Each worker keeps its own subscriptions (``app.mercure.subscriptions``); the
worker that answers an API request asks every other live worker for theirs
(``app.fleet.actions``: Unix sockets between the workers of one gunicorn
master, Redis pub/sub across instances) and merges the answers with its own.

Design decisions (read the reason before "fixing" one):

1. Gathered live per request, not shared on a timer through the fleet view's
   snapshots. A snapshot is ~470 bytes rewritten every ``METRICS_SHARE_SECONDS``
   by every worker; a subscription set is up to ``MERCURE_SUBSCRIPTIONS_MAX`` x
   ~400 B (4 MB) per worker, and would still be up to one interval old. Asked
   live, the cost falls on API requests only, and the list is exact (2.).
2. The list is consistent with the cursor of the Link header (``last-event-id``).
   The route reads the cursor, the hub's last event id, *before* it gathers; and
   every worker adds a subscription to its registry before it publishes the
   ``active: true`` event, and removes it before ``active: false``
   (``app.mercure.stream``). So every subscription event up to the cursor is
   already reflected in every registry read afterwards: the list shows the hub
   at the cursor or later, never earlier. A client that then subscribes with
   ``last_event_id`` = the cursor, as the spec advises, is replayed the events
   after it; each sets the active state of one subscription (subscriber ids are
   unique per connection), so applying them on a list that already holds some
   of them ends in the hub's state, and no subscription is lost between the
   list and the stream.
3. Which workers: the fleet view's (``FleetView.peers``); every worker is
   listed there before it takes requests. A worker that died cannot answer, so
   its subscriptions are gone from the next list at once; until the exchange
   drops it (``METRICS_SHARE_SECONDS`` x 3, 15 s by default) a collection says
   ``"complete": false``. So does one that did not answer within
   ``MERCURE_SUBSCRIPTIONS_TIMEOUT_SECONDS``, or an exchange that is down (the
   other workers are then unknown). The spec lets a hub truncate a collection;
   ``complete`` (a member the spec allows) says when it did.
4. Bounded: a worker answers at most ``MERCURE_SUBSCRIPTIONS_LIST_MAX_KB`` of
   documents (their JSON bytes), the merged list is cut at the same budget (then
   ``complete`` is false too), and at most :data:`GATHERS_IN_FLIGHT` gathers run
   per worker at once; a request that cannot start one within the timeout is
   refused (:class:`GatherBusy`, 503).
5. Ordered by worker id, then by creation: the same list whichever worker answers.
6. With ``memory://`` and several workers each worker is its own hub (gunicorn
   warns at start): the list still covers every worker, but the cursor and the
   subscription events are those of the worker that answers.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.fleet.actions import ActionBus, ActionBusError, Answer, Request
from app.fleet.actions.base import REQUEST_ID, SENDER, TARGETS
from app.fleet.actions.routing import KIND
from app.fleet.view import FleetView
from app.mercure.subscriptions import SubscriptionRegistry

__all__ = [
    "GATHERS_IN_FLIGHT",
    "SUBSCRIPTIONS_KIND",
    "GatherBusy",
    "Gathered",
    "SubscriptionGather",
    "SubscriptionQuery",
    "within_budget",
]

SUBSCRIPTIONS_KIND = "mercure.subscriptions"
GATHERS_IN_FLIGHT = 2
_QUERY = "query"
_DOCUMENTS = "subscriptions"
_TRUNCATED = "truncated"
_QUERY_FIELDS = ("match_type", "match", "topic")

Document = dict[str, Any]


class GatherBusy(Exception):
    """Every gather slot of this worker stayed taken for the whole timeout."""


@dataclass(frozen=True, slots=True)
class SubscriptionQuery:
    """Which subscriptions: all, those of one matcher, or the one at ``topic``."""

    match_type: str | None = None
    match: str | None = None
    topic: str | None = None

    def params(self) -> dict[str, str]:
        return {name: value for name in _QUERY_FIELDS if (value := getattr(self, name))}

    @classmethod
    def from_params(cls, raw: object) -> SubscriptionQuery | None:
        """The query another worker sent, or ``None`` if it is not one."""
        if not isinstance(raw, dict) or not set(raw) <= set(_QUERY_FIELDS):
            return None
        if not all(isinstance(value, str) for value in raw.values()):
            return None
        return cls(**raw)


@dataclass(frozen=True, slots=True)
class Gathered:
    documents: list[Document]
    complete: bool


def _size(document: Document) -> int:
    return len(json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode())


def within_budget(documents: Iterable[Document], max_bytes: int) -> tuple[list[Document], bool]:
    """The leading documents whose JSON fits in ``max_bytes``, and whether some were cut."""
    kept: list[Document] = []
    used = 0
    for document in documents:
        used += _size(document)
        if used > max_bytes:
            return kept, True
        kept.append(document)
    return kept, False


def _documents(answer: Answer | None) -> tuple[list[Document], bool] | None:
    """The documents in another worker's answer and whether it cut them; ``None`` if none."""
    if answer is None:
        return None
    documents = answer.get(_DOCUMENTS)
    if not isinstance(documents, list) or not all(
        isinstance(d, dict) and isinstance(d.get("id"), str) and d.get("type") == "subscription"
        for d in documents
    ):
        return None
    return documents, answer.get(_TRUNCATED) is not False


class SubscriptionGather:
    """Answers other workers' gathers with this worker's subscriptions, and runs its own."""

    def __init__(
        self,
        registry: SubscriptionRegistry,
        fleet: FleetView,
        bus: ActionBus,
        *,
        timeout_seconds: float,
        max_bytes: int,
    ) -> None:
        self.registry = registry
        self.fleet = fleet
        self.bus = bus
        self.timeout_seconds = timeout_seconds
        self.max_bytes = max_bytes
        self._slots = asyncio.Semaphore(GATHERS_IN_FLIGHT)

    @property
    def worker(self) -> str:
        return self.fleet.worker

    def here(self, query: SubscriptionQuery) -> tuple[list[Document], bool]:
        """This worker's documents for ``query``, within the budget, and whether it cut them."""
        if query.topic is not None:
            found = self.registry.get(query.topic)
            selected = [] if found is None else [found]
        else:
            selected = self.registry.select(query.match_type, query.match)
        return within_budget((s.document() for s in selected), self.max_bytes)

    # --- this worker, asked by another -------------------------------------

    async def answer(self, request: Request) -> Answer | None:
        """The bus handler for :data:`SUBSCRIPTIONS_KIND`."""
        if self.worker not in (request.get(TARGETS) or ()):
            return None
        query = SubscriptionQuery.from_params(request.get(_QUERY))
        if query is None:
            return {"error": "refused: not a subscription query"}
        documents, truncated = self.here(query)
        return {_DOCUMENTS: documents, _TRUNCATED: truncated}

    # --- the worker that answers the API request ---------------------------

    async def gather(self, query: SubscriptionQuery) -> Gathered:
        """Every live worker's documents for ``query``; raises :class:`GatherBusy`."""
        try:
            async with asyncio.timeout(self.timeout_seconds):
                await self._slots.acquire()
        except TimeoutError:
            raise GatherBusy("too many subscription lists in progress; retry") from None
        try:
            return await self._gather(query)
        finally:
            self._slots.release()

    async def _gather(self, query: SubscriptionQuery) -> Gathered:
        peers = await self.fleet.peers()
        documents, truncated = self.here(query)
        by_worker = {self.worker: documents}
        complete = peers is not None and not truncated
        if peers:
            message: Request = {
                REQUEST_ID: uuid.uuid4().hex,
                SENDER: self.worker,
                TARGETS: peers,
                KIND: SUBSCRIPTIONS_KIND,
                _QUERY: query.params(),
            }
            try:
                answers = await self.bus.ask(message, peers, self.timeout_seconds)
            except ActionBusError:
                answers = {}
            for peer in peers:
                found = _documents(answers.get(peer))
                if found is None:
                    complete = False
                    continue
                by_worker[peer], cut = found
                complete = complete and not cut
        merged, cut = within_budget(
            (d for worker in sorted(by_worker) for d in by_worker[worker]), self.max_bytes
        )
        return Gathered(merged, complete and not cut)
