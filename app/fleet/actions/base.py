"""The action bus interface: how one worker asks every other worker to act, and hears back.

Lifecycle: a bus belongs to one worker (it knows that worker's id).
:meth:`ActionBus.start` begins taking requests for this worker and hands each
to the handler; :meth:`ActionBus.ask` sends one request to the named workers
and returns the answers that arrived within ``within_seconds``, by worker;
:meth:`ActionBus.stop` stops taking requests. ``ask`` raises
:class:`ActionBusError` when the medium itself fails (Redis down): the caller
then reports every other worker as not reached.

A request and an answer are small JSON objects; the bus does not look inside
them beyond the fields it routes on (:data:`REQUEST_ID`, :data:`TARGETS`).
What they mean is ``app.admin``'s business.

Implementations beside it: ``local`` (this process only), ``sockets`` (the
workers of one gunicorn master, through Unix sockets in their shared
directory), ``redis`` (every worker sharing a Redis).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

__all__ = [
    "REQUEST_ID",
    "SENDER",
    "TARGETS",
    "ActionBus",
    "ActionBusError",
    "Answer",
    "Handler",
    "Request",
]

Request = dict[str, Any]
Answer = dict[str, Any]
Handler = Callable[[Request], Awaitable[Answer | None]]
"""Runs a request on this worker; ``None`` means "not addressed to me, no answer"."""

REQUEST_ID = "id"
SENDER = "from"
TARGETS = "targets"
"""The worker ids that must act; every other worker ignores the request."""


class ActionBusError(Exception):
    """The bus could not carry a request (Redis down, directory gone)."""


class ActionBus(ABC):
    kind: ClassVar[str]
    """Shown in every action's answer (``bus``): ``local``, ``sockets`` or ``redis``."""

    def __init__(self, worker: str) -> None:
        self.worker = worker

    @abstractmethod
    async def start(self, handler: Handler) -> None:
        """Take requests for this worker from now on."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop taking requests (on shutdown)."""

    @abstractmethod
    async def ask(
        self, request: Request, workers: Sequence[str], within_seconds: float
    ) -> dict[str, Answer]:
        """Send ``request`` to ``workers``; the answers in by ``within_seconds``, by worker."""
