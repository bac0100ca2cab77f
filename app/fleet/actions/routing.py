"""One bus, several kinds of request: a worker's single handler routes each by its ``kind``.

A bus takes one handler per worker (``ActionBus.start``). Operator actions
(``app.admin``) came first and carry no ``kind``; a later user of the bus
(the Mercure subscription API's gather, ``app.mercure.gather``) names its
requests with :data:`KIND` and registers a handler for that name here.

Design decisions:

1. A request without ``kind`` goes to the default handler, so requests from
   workers of an older Herald (operator actions only) keep working.
2. A ``kind`` nobody registered gets no answer (``None``), exactly like a
   request not addressed to this worker: the asking worker reports it as
   missing, which is the truth during a rolling deploy where a newer worker
   asks an older one.
"""

from __future__ import annotations

from app.fleet.actions.base import Answer, Handler, Request

__all__ = ["KIND", "HandlerRouter"]

KIND = "kind"


class HandlerRouter:
    """The bus handler of one worker: hands each request to the handler of its ``kind``."""

    def __init__(self, default: Handler) -> None:
        self._default = default
        self._by_kind: dict[str, Handler] = {}

    def add(self, kind: str, handler: Handler) -> None:
        if kind in self._by_kind:
            raise ValueError(f"a handler for {kind!r} is already registered")
        self._by_kind[kind] = handler

    async def __call__(self, request: Request) -> Answer | None:
        kind = request.get(KIND)
        if kind is None:
            return await self._default(request)
        handler = self._by_kind.get(kind) if isinstance(kind, str) else None
        return None if handler is None else await handler(request)
