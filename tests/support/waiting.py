"""Waiting for something to happen by polling a condition under a deadline: a test says
what it waits for instead of sleeping for a guessed time and checking a clock."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

__all__ = ["DEFAULT_WAIT_SECONDS", "POLL_SECONDS", "wait_until"]

DEFAULT_WAIT_SECONDS = 10.0
"""Long enough for a loaded machine: a condition that holds returns at its first poll."""
POLL_SECONDS = 0.01


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float = DEFAULT_WAIT_SECONDS,
    what: str = "the condition",
) -> None:
    """Return once ``condition()`` (a function or a coroutine function) is true; fail the
    test naming ``what`` if it is not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = condition()
        if inspect.isawaitable(outcome):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(POLL_SECONDS)
