"""Running an action on every worker it names, and one answer that adds them up.

The worker that received the request coordinates: it reads which workers are
alive (``app.fleet.view``), sends the action to the others over the bus
(``app.fleet.actions``), carries it out itself meanwhile, and waits for the
others' answers up to ``ADMIN_ACTION_TIMEOUT_SECONDS``.

The answer::

    {"action": "cleanup", "params": {"level": "light"},
     "workers": {"<id>": {...per-worker result...}, ...},
     "total": {...numbers summed over workers...},
     "answered": 2, "missing": ["<id>"], "failed": {"<id>": "why"},
     "complete": false, "bus": "redis", "exchange": {"kind": ..., "state": ...}}

Design decisions:

* ``missing`` names the workers the exchange lists that did not answer in
  time; ``failed`` those that answered with an error (or could not be
  reached). ``complete`` is true only when every named worker did it and the
  exchange could say which workers there are (``exchange.state`` ok). The
  status is 200 either way: the action happened where it could, and the body
  says exactly where.
* ``total`` sums every number of the per-worker results, recursively (bytes
  freed per part, RSS before and after, streams closed); a true/false figure
  counts the workers where it was true (``started``, ``heap_released``).
  Text and lists are per worker only.
* The coordinator acts on itself directly, never through the bus, so an action
  works on one worker even when Redis is down; the others are then reported
  as not reached.
* A worker acts on a request only when it is named in ``targets`` (the bus
  checks), so a stale or foreign request cannot widen an action.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from app.admin.actions import TargetedRequest, WorkerActions
from app.fleet.actions import ActionBus, ActionBusError, Answer, Handler, Request
from app.fleet.actions.base import REQUEST_ID, SENDER, TARGETS
from app.fleet.snapshot import WorkerSnapshot
from app.fleet.view import FleetView

__all__ = ["ActionCoordinator", "NoSuchTargetError", "sum_results"]

logger = logging.getLogger("herald.admin")

_ACTION = "action"
_PARAMS = "params"
_RESULT = "result"
_ERROR = "error"
_FLOAT_DIGITS = 2


class NoSuchTargetError(LookupError):
    """``worker`` or ``host`` names no live worker."""


def sum_results(results: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Numbers summed key by key, nested mappings recursively; booleans counted when true."""
    total: dict[str, Any] = {}
    for result in results:
        for key, value in result.items():
            if isinstance(value, Mapping):
                total[key] = sum_results([total.get(key, {}), value])
            elif isinstance(value, bool):
                total[key] = total.get(key, 0) + int(value)
            elif isinstance(value, int | float):
                summed = total.get(key, 0) + value
                total[key] = round(summed, _FLOAT_DIGITS) if isinstance(summed, float) else summed
    return total


def _chosen(workers: list[WorkerSnapshot], request: TargetedRequest) -> list[str]:
    if request.worker is not None:
        chosen = [w["worker"] for w in workers if w["worker"] == request.worker]
        if not chosen:
            raise NoSuchTargetError(f"no live worker {request.worker!r}")
        return chosen
    if request.host is not None:
        chosen = [w["worker"] for w in workers if w["host"] == request.host]
        if not chosen:
            raise NoSuchTargetError(f"no live worker on host {request.host!r}")
        return chosen
    return [w["worker"] for w in workers]


@dataclass(frozen=True, slots=True)
class _Gathered:
    results: dict[str, dict[str, object]]
    failed: dict[str, str]


class ActionCoordinator:
    """Runs actions here and, over the bus, on the other workers; answers them when asked."""

    def __init__(
        self,
        actions: WorkerActions,
        bus: ActionBus,
        fleet: FleetView,
        *,
        timeout_seconds: float,
    ) -> None:
        self.actions = actions
        self.bus = bus
        self.fleet = fleet
        self.timeout_seconds = timeout_seconds

    @property
    def worker(self) -> str:
        return self.fleet.worker

    async def start(self, handler: Handler | None = None) -> None:
        """Take requests over the bus: with :meth:`answer`, or ``handler`` when the bus is
        shared with other kinds of request (``app.fleet.actions.routing``)."""
        await self.bus.start(handler or self.answer)

    async def stop(self) -> None:
        await self.bus.stop()

    # --- this worker, asked by another -------------------------------------

    async def answer(self, request: Request) -> Answer | None:
        """The bus handler: carry out a request addressed to this worker."""
        if self.worker not in (request.get(TARGETS) or ()):
            return None
        return self._run_here(str(request.get(_ACTION)), request.get(_PARAMS) or {})

    def _run_here(self, action: str, params: Mapping[str, Any]) -> Answer:
        try:
            return {_RESULT: self.actions.run(action, params)}
        except ValueError as exc:  # pydantic's ValidationError is one
            return {_ERROR: f"refused: {exc}"}
        except Exception as exc:
            logger.exception("operator action %s failed on this worker", action)
            return {_ERROR: f"failed: {type(exc).__name__}"}

    # --- the worker that received the request ------------------------------

    async def run(self, action: str, request: TargetedRequest) -> dict[str, Any]:
        """Carry ``action`` out on every worker ``request`` names; raises ``NoSuchTargetError``."""
        reading = await self.fleet.read()
        targets = _chosen(reading.workers, request)
        params = request.params()
        others = [worker for worker in targets if worker != self.worker]
        message: Request = {
            REQUEST_ID: uuid.uuid4().hex,
            SENDER: self.worker,
            TARGETS: targets,
            _ACTION: action,
            _PARAMS: params,
        }
        asking = asyncio.create_task(self._ask(message, others)) if others else None
        answers: dict[str, Answer] = {}
        if self.worker in targets:
            answers[self.worker] = self._run_here(action, params)
        not_reached: str | None = None
        if asking is not None:
            try:
                answers.update(await asking)
            except ActionBusError as exc:
                not_reached = str(exc)
        gathered = self._gather(answers)
        missing = sorted(set(targets) - answers.keys())
        failed = dict(gathered.failed)
        if not_reached is not None:
            failed.update(dict.fromkeys(missing, f"not reached: {not_reached}"))
            missing = []
        return {
            "action": action,
            "params": params,
            "workers": gathered.results,
            "total": sum_results(gathered.results.values()),
            "answered": len(gathered.results),
            "missing": missing,
            "failed": failed,
            # With the exchange down the other workers are unknown, not absent.
            "complete": not missing and not failed and reading.exchange_state == "ok",
            "bus": self.bus.kind,
            "exchange": {"kind": reading.exchange, "state": reading.exchange_state},
        }

    async def _ask(self, message: Request, others: list[str]) -> dict[str, Answer]:
        return await self.bus.ask(message, others, self.timeout_seconds)

    @staticmethod
    def _gather(answers: Mapping[str, Answer]) -> _Gathered:
        results: dict[str, dict[str, object]] = {}
        failed: dict[str, str] = {}
        for worker in sorted(answers):
            answer = answers[worker]
            result = answer.get(_RESULT)
            if isinstance(result, dict):
                results[worker] = result
            else:
                failed[worker] = str(answer.get(_ERROR, "no result in the answer"))
        return _Gathered(results, failed)
