"""The memory budget of a box: every bounded structure's worst case, and their sum against
the limit.

``python -m app.tools.memory_report --budget`` prints it for the settings in the
environment, a limit and a worker count; ``docs/memory.md`` explains each row.

The rows fall in three parts:

1. **Reserved**: what the box holds whatever its crowd does: the processes at
   idle, and each structure with a byte bound of its own (queued events, the
   response cache and runs, replay pages in flight, in-process history,
   conversations, Mercure subscription lists being gathered, Redis
   connections), at its worst, once per worker.
2. **Open streams at their idle cost**: a detached stream's objects in its
   worker and its socket's in the kernel, two rows that add up to the streams'
   room. Admitted until the box reaches the critical line (the guard refuses
   past it), so however many ``SSE_MAX_CONNECTIONS`` allows, they take at most
   the room between the reserve and that line.
3. **What streams hold beyond their idle cost** (queues, transport and kernel
   send buffers of readers that stalled): shed from the warning line on
   (:mod:`app.memory.shedding`); the room above the critical line is theirs.

The budget adds up when the reserve leaves room for streams under the warning
line; the per-stream and per-process figures are measured (docs/performance.md,
"Box" and "Density") and are constants here, not guesses made at run time.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.broker.idempotency import RECORD_BYTES
from app.core.config import Settings
from app.mercure.gather import GATHERS_IN_FLIGHT
from app.publishing.idempotency import MAX_KEY_LENGTH

__all__ = [
    "MASTER_IDLE_BYTES",
    "STREAM_IDLE_BYTES",
    "STREAM_KERNEL_BYTES",
    "STREAM_RSS_BYTES",
    "WORKER_IDLE_BYTES",
    "Budget",
    "BudgetRow",
    "memory_budget",
    "render_budget",
]

KB = 1024
MB = 1024 * 1024
MASTER_IDLE_BYTES = 40 * MB
"""The gunicorn master's working set (its pages shared with the workers counted once)."""
WORKER_IDLE_BYTES = 40 * MB
"""One worker at idle, beyond the pages it shares with the master."""
STREAM_RSS_BYTES = 4 * KB
"""One idle stream in its worker once detached (the Herald worker, ``python -m app``): the
heaviest kind that stays idle for long, a Mercure subscription, rounded up to a whole KiB
(``python -m load_tests.density``)."""
STREAM_KERNEL_BYTES = 4 * KB
"""The kernel's part of one idle stream: its socket, inode, file, dentry and epoll entry
(``/proc/slabinfo``), rounded up to a whole KiB; a reader that keeps up leaves no TCP
buffer pages behind."""
STREAM_IDLE_BYTES = STREAM_RSS_BYTES + STREAM_KERNEL_BYTES
"""One idle stream in the box, worker and kernel."""
REDIS_CONNECTION_BYTES = 64 * KB
"""A pooled Redis connection: its socket buffers and the reply parser's."""
CONVERSATION_MESSAGE_BYTES = 100
"""A stored message object without its text."""
HISTORY_CHANNEL_BYTES = 800
"""An in-process channel log's objects, beyond its events' bytes."""
PARSED_JSON_FACTOR = 3
"""Python objects parsed from a JSON document, against the document's size."""
_PERCENT = 100


@dataclass(frozen=True, slots=True)
class BudgetRow:
    name: str
    bound: str
    worst_bytes: int


@dataclass(frozen=True, slots=True)
class Budget:
    limit_bytes: int
    workers: int
    reserved: list[BudgetRow]
    reserved_bytes: int
    stream_room_bytes: int
    streams_admitted: int
    streams_allowed: int
    stalled_room_bytes: int
    warning_bytes: int
    critical_bytes: int

    @property
    def stream_rss_bytes(self) -> int:
        """The worker's part of the admitted streams' room."""
        return self.streams_admitted * STREAM_RSS_BYTES

    @property
    def stream_kernel_bytes(self) -> int:
        """The kernel's part of the admitted streams' room."""
        return self.streams_admitted * STREAM_KERNEL_BYTES

    @property
    def total_bytes(self) -> int:
        return self.reserved_bytes + self.stream_room_bytes + self.stalled_room_bytes

    @property
    def fits(self) -> bool:
        """The reserve alone stays under the warning line: streams have room before any
        shedding or refusal starts."""
        return self.reserved_bytes < self.warning_bytes


def memory_budget(
    settings: Settings, limit_bytes: int, workers: int, *, gunicorn: bool | None = None
) -> Budget:
    """The budget of a box of ``limit_bytes`` run by ``workers`` workers with ``settings``."""
    gunicorn = workers > 1 if gunicorn is None else gunicorn
    in_process_history = settings.broker_url.startswith("memory://")
    per_worker = [
        BudgetRow(
            "queued events (distinct bytes any queue keeps alive)",
            "SSE_QUEUE_MAX_MB",
            settings.sse_queue_max_bytes,
        ),
        BudgetRow("response cache", "CACHE_MAX_MB", settings.cache_max_bytes),
        BudgetRow(
            "replay pages in flight",
            "SSE_REPLAY_CONCURRENCY x SSE_REPLAY_PAGE_KB",
            settings.sse_replay_concurrency
            * (settings.sse_replay_page_kb * KB + settings.max_event_bytes),
        ),
        BudgetRow(
            "response runs (text stored twice: deltas and done)",
            "RESPONSE_MAX_RUNS x RESPONSE_MAX_KB",
            settings.response_max_runs * settings.response_max_kb * KB * 2,
        ),
        BudgetRow(
            "conversations",
            "MAX_CONVERSATIONS x messages",
            settings.max_conversations
            * (
                settings.max_messages * CONVERSATION_MESSAGE_BYTES
                + settings.max_content_messages * settings.max_content_length * 4
            ),
        ),
    ]
    list_bytes = settings.mercure_subscriptions_list_max_kb * KB
    per_worker.append(
        BudgetRow(
            "Mercure subscription lists being gathered",
            "MERCURE_SUBSCRIPTIONS_LIST_MAX_KB",
            # Each gather holds every worker's answer parsed (about three times its JSON)
            # and the merged answer; a worker runs at most GATHERS_IN_FLIGHT at once.
            GATHERS_IN_FLIGHT * (workers * PARSED_JSON_FACTOR * list_bytes + list_bytes),
        )
    )
    if in_process_history and settings.publish_idempotency_seconds > 0:
        per_worker.append(
            BudgetRow(
                "idempotency keys (memory://)",
                "PUBLISH_IDEMPOTENCY_MAX_KEYS",
                settings.publish_idempotency_max_keys * (RECORD_BYTES + MAX_KEY_LENGTH),
            )
        )
    if in_process_history:
        per_worker.append(
            BudgetRow(
                "replay history (memory://)",
                "SSE_HISTORY_MAX_MB + SSE_HISTORY_MAX_CHANNELS",
                settings.sse_history_max_bytes
                + settings.sse_history_max_channels * HISTORY_CHANNEL_BYTES,
            )
        )
    else:
        per_worker.append(
            BudgetRow(
                "Redis command connections",
                "REDIS_MAX_CONNECTIONS",
                settings.redis_max_connections * REDIS_CONNECTION_BYTES,
            )
        )
    reserved = [
        BudgetRow(
            "processes at idle" + (" (master and workers)" if gunicorn else ""),
            "measured",
            (MASTER_IDLE_BYTES if gunicorn else 0) + workers * WORKER_IDLE_BYTES,
        ),
        *(BudgetRow(row.name, row.bound, row.worst_bytes * workers) for row in per_worker),
    ]
    reserved_bytes = sum(row.worst_bytes for row in reserved)
    warning = int(limit_bytes * settings.memory_warning_percent / _PERCENT)
    critical = int(limit_bytes * settings.memory_critical_percent / _PERCENT)
    allowed = settings.sse_max_connections * workers
    admitted = max(0, min(allowed, (critical - reserved_bytes) // STREAM_IDLE_BYTES))
    stream_room = admitted * STREAM_IDLE_BYTES
    return Budget(
        limit_bytes=limit_bytes,
        workers=workers,
        reserved=reserved,
        reserved_bytes=reserved_bytes,
        stream_room_bytes=stream_room,
        streams_admitted=admitted,
        streams_allowed=allowed,
        stalled_room_bytes=max(0, limit_bytes - reserved_bytes - stream_room),
        warning_bytes=warning,
        critical_bytes=critical,
    )


def _mib(size: int) -> str:
    return f"{size / MB:8.1f} MiB"


def render_budget(budget: Budget) -> str:
    """The budget as the operator reads it: one row a line, the sum against the limit."""
    width = 58
    lines = [
        f"Memory budget: {_mib(budget.limit_bytes).strip()} box, {budget.workers} worker(s);"
        f" warning {_mib(budget.warning_bytes).strip()}, critical"
        f" {_mib(budget.critical_bytes).strip()}",
        "",
        f"{'reserved (worst case of each bound)':<{width}} {'bound':<46} worst case",
    ]
    for row in budget.reserved:
        lines.append(f"  {row.name:<{width - 2}} {row.bound:<46} {_mib(row.worst_bytes)}")
    lines += [
        f"  {'= reserved':<{width - 2}} {'':<46} {_mib(budget.reserved_bytes)}",
        f"{'open streams at idle cost (admitted to the critical line)':<{width}}"
        f" {f'{STREAM_IDLE_BYTES // KB} KiB each, up to {budget.streams_admitted:,}':<46}"
        f" {_mib(budget.stream_room_bytes)}",
        f"  {'in the workers (objects, measured RSS)':<{width - 2}}"
        f" {f'{STREAM_RSS_BYTES // KB} KiB each':<46} {_mib(budget.stream_rss_bytes)}",
        f"  {'in the kernel (socket, inode, file, dentry, epoll)':<{width - 2}}"
        f" {f'{STREAM_KERNEL_BYTES // KB} KiB each':<46} {_mib(budget.stream_kernel_bytes)}",
        f"{'held beyond idle by readers that stall (shed)':<{width}}"
        f" {'from the warning line':<46} {_mib(budget.stalled_room_bytes)}",
        f"{'= total':<{width}} {'':<46} {_mib(budget.total_bytes)}"
        f" of {_mib(budget.limit_bytes).strip()}",
        "",
    ]
    if budget.streams_admitted < budget.streams_allowed:
        lines.append(
            f"SSE_MAX_CONNECTIONS allows {budget.streams_allowed:,} streams; with every reserved"
            f" row at its worst the guard refuses past {budget.streams_admitted:,}."
        )
    lines.append(
        "fits: the reserve leaves room for streams under the warning line"
        if budget.fits
        else "DOES NOT FIT: the reserve alone reaches the warning line; lower the bounds above"
    )
    return "\n".join(lines)
