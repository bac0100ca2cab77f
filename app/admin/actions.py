"""The operator actions: what each one accepts, and what it does on one worker.

Every action is a pydantic model (the request body) and a method of
:class:`WorkerActions` (what one worker does with it). The same model parses
the body at the HTTP door and the parameters a worker receives from another
worker over the bus, so nothing reaches a structure unvalidated.

Design decisions:

* ``extra="forbid"`` on every body: a misspelt field (``"chanel"``) is a 422,
  never silently ignored, since an ignored filter would widen what is cut.
* Closing streams needs a ``channel`` or a ``client`` (both: streams matching
  both). There is no "close everything": that is ``drain``, which says so.
  A stream subscribed to several channels is closed when any of them is named:
  the stream is the unit, and its client resumes all of them at once.
* A client is an IP address, compared as an address (``::1`` matches
  ``0:0:0:0:0:0:0:1``), against the address Herald attributes the stream to
  (``X-Forwarded-For`` only from ``TRUSTED_PROXIES``, as for the per-IP limit).
* ``retry_ms`` (default ``SSE_RETRY_MS``) sets the reconnect window of the
  streams closed: each gets ``retry:`` drawn from ``[retry_ms, 2 x retry_ms)``.
* ``worker`` or ``host`` narrow any action to one worker or to the workers of
  one instance; without either, every live worker acts.
* A cleanup is the guard's own (``app.memory.cleanup``): ``light`` is what
  entering ``warning`` runs, ``aggressive`` what entering ``critical`` runs. It
  is reported with RSS read just before and just after, on each worker.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.admin.drain import DrainState, jittered_retry_ms
from app.memory.cleanup import aggressive_cleanup, light_cleanup
from app.memory.process import read_rss
from app.responses.service import ResponseService
from app.sse.connection import CloseReason, Connection
from app.sse.hub import Hub
from app.wire.channels import CHANNEL_PATTERN

__all__ = [
    "ACTION_MODELS",
    "MAX_RETRY_MS",
    "MIN_RETRY_MS",
    "ActionName",
    "CacheClearRequest",
    "CleanupRequest",
    "DrainRequest",
    "StreamsCloseRequest",
    "TargetedRequest",
    "UndrainRequest",
    "WorkerActions",
]

ActionName = Literal["cleanup", "cache_clear", "streams_close", "drain", "undrain"]
MIN_RETRY_MS = 100
MAX_RETRY_MS = 600_000
# As in app.api.routes.responses (conversation ids) and app.fleet.snapshot (worker ids).
CONVERSATION_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
WORKER_PATTERN = r"^[A-Za-z0-9._-]{1,253}:[0-9]{1,10}$"
HOST_PATTERN = r"^[A-Za-z0-9._-]{1,253}$"
TARGET_FIELDS = frozenset({"worker", "host"})


class TargetedRequest(BaseModel):
    """Fields every action accepts: which workers act (default: all of them)."""

    model_config = ConfigDict(extra="forbid")

    worker: str | None = Field(default=None, pattern=WORKER_PATTERN)
    host: str | None = Field(default=None, pattern=HOST_PATTERN)

    @model_validator(mode="after")
    def _one_target(self) -> TargetedRequest:
        if self.worker is not None and self.host is not None:
            raise ValueError("give worker or host, not both")
        return self

    def params(self) -> dict[str, Any]:
        """What the workers need to act: the fields set, without the targeting."""
        return self.model_dump(exclude_none=True, exclude=set(TARGET_FIELDS))


class CleanupRequest(TargetedRequest):
    level: Literal["light", "aggressive"]


class CacheClearRequest(TargetedRequest):
    conversation_id: str | None = Field(default=None, pattern=CONVERSATION_ID_PATTERN)


class StreamsCloseRequest(TargetedRequest):
    # Anchored: pydantic searches a pattern, where the hub matches it whole.
    channel: str | None = Field(default=None, pattern=f"^{CHANNEL_PATTERN.pattern}$")
    client: str | None = Field(default=None, max_length=64)
    retry_ms: int | None = Field(default=None, ge=MIN_RETRY_MS, le=MAX_RETRY_MS)

    @model_validator(mode="after")
    def _names_something(self) -> StreamsCloseRequest:
        if self.channel is None and self.client is None:
            raise ValueError("name a channel or a client; to close every stream, drain")
        if self.client is not None:
            try:
                self.client = str(ipaddress.ip_address(self.client))
            except ValueError:
                raise ValueError(f"client must be an IP address, got {self.client!r}") from None
        return self


class DrainRequest(TargetedRequest):
    retry_ms: int | None = Field(default=None, ge=MIN_RETRY_MS, le=MAX_RETRY_MS)


class UndrainRequest(TargetedRequest):
    pass


ACTION_MODELS: Mapping[ActionName, type[TargetedRequest]] = {
    "cleanup": CleanupRequest,
    "cache_clear": CacheClearRequest,
    "streams_close": StreamsCloseRequest,
    "drain": DrainRequest,
    "undrain": UndrainRequest,
}


def _address_matches(wanted: str) -> Callable[[Connection], bool]:
    address = ipaddress.ip_address(wanted)

    def matches(connection: Connection) -> bool:
        try:
            return ipaddress.ip_address(connection.client) == address
        except ValueError:  # no address known for this stream
            return False

    return matches


class WorkerActions:
    """Carries out actions on this worker's hub, response service and drain state."""

    def __init__(
        self,
        hub: Hub,
        responses: ResponseService,
        drain: DrainState,
        *,
        rss_source: Callable[[], int] = read_rss,
    ) -> None:
        self.hub = hub
        self.responses = responses
        self.drain_state = drain
        self._rss_source = rss_source

    def run(self, action: str, params: Mapping[str, Any]) -> dict[str, object]:
        """Validate ``params`` for ``action`` and carry it out; ``ValueError`` if either is bad."""
        model = ACTION_MODELS.get(action)  # type: ignore[call-overload, unused-ignore]
        if model is None:
            raise ValueError(f"unknown action {action!r}")
        request = model.model_validate(dict(params))
        method: Callable[[Any], dict[str, object]] = getattr(self, action)
        return method(request)

    def cleanup(self, request: CleanupRequest) -> dict[str, object]:
        before = self._rss_source()
        if request.level == "light":
            result = light_cleanup(self.hub, self.responses)
        else:
            result = aggressive_cleanup(self.hub, self.responses)
        return {**result.as_dict(), "rss_before": before, "rss_after": self._rss_source()}

    def cache_clear(self, request: CacheClearRequest) -> dict[str, object]:
        cache = self.responses.cache
        if request.conversation_id is None:
            items = cache.items
            freed = cache.clear("operator")
        else:
            items, freed = cache.clear_conversation(request.conversation_id)
        return {"items": items, "bytes": freed}

    def streams_close(self, request: StreamsCloseRequest) -> dict[str, object]:
        tests: list[Callable[[Connection], bool]] = []
        if request.channel is not None:
            channel = request.channel
            tests.append(lambda connection: channel in connection.channels)
        if request.client is not None:
            tests.append(_address_matches(request.client))
        closed = self.hub.close_where(
            lambda connection: all(test(connection) for test in tests),
            CloseReason.ADMIN,
            self._retry(request.retry_ms),
        )
        return {"closed": closed}

    def drain(self, request: DrainRequest) -> dict[str, object]:
        retry_ms = request.retry_ms or self.hub.settings.sse_retry_ms
        started = self.drain_state.start(retry_ms)
        closed = self.hub.close_where(lambda _: True, CloseReason.DRAIN, self._retry(retry_ms))
        return {"closed": closed, "started": started}

    def undrain(self, request: UndrainRequest) -> dict[str, object]:
        return {"stopped": self.drain_state.stop()}

    def _retry(self, retry_ms: int | None) -> Callable[[], int]:
        window = retry_ms or self.hub.settings.sse_retry_ms
        return lambda: jittered_retry_ms(window)
