"""Which of the publisher client's tests need Herald to deduplicate ``Idempotency-Key``.

Tests whose assertions need Herald to honour ``Idempotency-Key`` (a repeated key answered
with the first answer instead of publishing again) carry ``needs_server_dedupe``: a strict
xfail while ``SERVER_DEDUPES_IDEMPOTENCY_KEYS`` is False, so they run, fail as expected, and
turn the suite red the moment they pass without the flag saying so.
"""

from __future__ import annotations

import pytest

__all__ = ["SERVER_DEDUPES_IDEMPOTENCY_KEYS", "needs_server_dedupe"]

SERVER_DEDUPES_IDEMPOTENCY_KEYS = True

needs_server_dedupe = pytest.mark.xfail(
    not SERVER_DEDUPES_IDEMPOTENCY_KEYS,
    reason="needs Herald's Idempotency-Key dedupe (SERVER_DEDUPES_IDEMPOTENCY_KEYS is False)",
    strict=True,
)
