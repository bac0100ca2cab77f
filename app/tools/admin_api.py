"""The admin API as the command-line tools call it: where it is, and the metrics document.

The report (:mod:`app.tools.memory_report`) and the operator actions
(:mod:`app.tools.operate`) both read the metrics; they meet here rather than in
each other, so either can be read, and changed, without the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "DEFAULT_URL",
    "METRICS_PATH",
    "AdminRequestError",
    "Metrics",
    "fetch_metrics",
]

DEFAULT_URL = "http://127.0.0.1:8000"
METRICS_PATH = "/api/admin/metrics"
DEFAULT_TIMEOUT_SECONDS = 5.0

Metrics = Mapping[str, Any]


class AdminRequestError(Exception):
    """The admin API could not be reached or refused; the message is meant for the operator."""


def fetch_metrics(
    client: httpx.Client, url: str, token: str | None, timeout: float = DEFAULT_TIMEOUT_SECONDS
) -> Metrics:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    target = url.rstrip("/") + METRICS_PATH
    try:
        response = client.get(target, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise AdminRequestError(f"cannot reach {target}: {exc}") from None
    if response.status_code != 200:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise AdminRequestError(f"{target} answered {response.status_code}: {detail}")
    metrics: Metrics = response.json()
    return metrics
