"""What the leak tests read from a running server, and the soak switch.

Every figure comes from the server's own admin API (``/api/admin/metrics``):
open streams and channels from the hub, asyncio tasks from the ``process``
section, the response cache, and RSS from the memory guard, which these servers
sample every ``MEMORY_CHECK_SECONDS`` = 0.1 s so a reading is at most that old.

Soak: each leak test runs a short variant by default and a long one, marked
``soak``, that is skipped unless ``HERALD_SOAK=1`` (a marker alone cannot give
the long variant the time limit it needs, and a plain ``pytest`` must never
start a run of several minutes by accident).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

import pytest

from tests.leak.raw_http import KeepAliveClient
from tests.support.server import ServerProcess

__all__ = [
    "ADMIN_TOKEN",
    "LEAK_SERVER_ENV",
    "MB",
    "SOAK",
    "AdminProbe",
    "Reading",
    "scales",
]

MB = 1024 * 1024
SOAK = os.environ.get("HERALD_SOAK") == "1"
SOAK_TIMEOUT_SECONDS = 1200
ADMIN_TOKEN = "leak-test-admin-token"
# Fresh RSS samples; info logging would write one line per stream end, which at
# thousands of cycles measures the log file more than the hub.
LEAK_SERVER_ENV = {
    "ADMIN_TOKEN": ADMIN_TOKEN,
    "MEMORY_CHECK_SECONDS": "0.1",
    "LOG_LEVEL": "warning",
}
FRESH_SAMPLE_SECONDS = 0.3  # three RSS samples: the reading was taken after idle


def scales(short: object, soak: object) -> list[Any]:
    """Parameters for the short variant (always run) and the soak one (HERALD_SOAK=1)."""
    return [
        pytest.param(short, id="short"),
        pytest.param(
            soak,
            id="soak",
            marks=[
                pytest.mark.soak,
                pytest.mark.timeout(SOAK_TIMEOUT_SECONDS),
                pytest.mark.skipif(not SOAK, reason="soak variant: set HERALD_SOAK=1"),
            ],
        ),
    ]


@dataclass(frozen=True)
class Reading:
    """One admin metrics document, with the figures the leak tests compare."""

    connections: int
    channels: int
    tasks: int
    rss_bytes: int
    queued: int
    queued_bytes: int
    history_channels: int
    document: dict[str, Any]

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> Reading:
        sse = document["sse"]
        return cls(
            connections=sse["connections"],
            channels=sse["channels"],
            tasks=document["process"]["tasks"],
            rss_bytes=document["memory"]["rss_bytes"],
            queued=sse["queued"],
            queued_bytes=sse["queued_bytes"],
            history_channels=sse["broker"]["history"]["channels"],
            document=document,
        )

    @property
    def rss_mb(self) -> float:
        return self.rss_bytes / MB


class AdminProbe:
    """Reads a leak server's admin metrics over one kept-alive connection."""

    def __init__(self, server: ServerProcess) -> None:
        self.client = KeepAliveClient(
            "127.0.0.1", server.port, {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )

    async def read(self) -> Reading:
        return Reading.from_document(await self.client.get_json("/api/admin/metrics"))

    async def wait_idle(self, idle_tasks: int, timeout: float = 20.0) -> Reading:
        """Wait until no stream, channel or extra task is left, then read with a fresh RSS.

        Returns the last reading even when the deadline passes, so the caller's
        assertion shows what was left over."""
        deadline = time.monotonic() + timeout
        reading = await self.read()
        while time.monotonic() < deadline:
            if reading.connections == reading.channels == reading.queued == 0 and (
                reading.tasks == idle_tasks
            ):
                await asyncio.sleep(FRESH_SAMPLE_SECONDS)
                return await self.read()
            await asyncio.sleep(0.05)
            reading = await self.read()
        return reading

    async def aclose(self) -> None:
        await self.client.aclose()
