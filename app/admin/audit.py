"""The audit trail of operator actions: one log line each, and a counter per action.

Design decisions:

* One line per action, written by the worker that received the request once
  every worker has answered (or the wait ended): what was asked, what it did
  in total, which workers did not answer, who asked and from where. Logged at
  WARNING on ``herald.admin``, so an operator's ``LOG_LEVEL=warning`` still
  keeps the trail.
* "Who" is a fingerprint of the admin token, never the token: the first 12 hex
  digits of PBKDF2-SHA256 over it (:data:`FINGERPRINT_ITERATIONS` rounds). It
  tells which token acted (a rotated one shows a new fingerprint) without
  making the log a shortcut to guessing a weak token: each guess costs the
  rounds. The fingerprint is computed once per token and process, at the
  first action (about 25 ms, in the event loop: actions are rare, and a thread
  pool kept for this would cost more memory than the pause costs latency).
* The counter (``herald_admin_actions_total{action=...}``) is kept by the same
  worker, so summed over workers each action counts once, however many
  workers carried it out.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections import Counter
from collections.abc import Mapping

__all__ = ["FINGERPRINT_ITERATIONS", "AuditTrail", "token_fingerprint"]

logger = logging.getLogger("herald.admin")

FINGERPRINT_ITERATIONS = 20_000
_FINGERPRINT_SALT = b"herald admin token fingerprint"
_FINGERPRINT_BYTES = 6


@functools.lru_cache(maxsize=4)
def token_fingerprint(token: str) -> str:
    """``token:<12 hex digits>``: names a token in logs without revealing it."""
    digest = hashlib.pbkdf2_hmac(
        "sha256", token.encode(), _FINGERPRINT_SALT, FINGERPRINT_ITERATIONS, _FINGERPRINT_BYTES
    )
    return f"token:{digest.hex()}"


class AuditTrail:
    """Counts and logs the actions this worker coordinated."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def record(
        self,
        action: str,
        params: Mapping[str, object],
        outcome: str,
        *,
        who: str,
        client: str,
    ) -> None:
        self.counts[action] += 1
        described = " ".join(f"{name}={value}" for name, value in params.items()) or "-"
        logger.warning(
            "admin action %s (%s) by %s from %s: %s", action, described, who, client, outcome
        )

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)
