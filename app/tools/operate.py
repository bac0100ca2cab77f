"""The operator actions of ``python -m app.tools.memory_report``: flags, request, answer.

::

    python -m app.tools.memory_report --cleanup light          # or aggressive
    python -m app.tools.memory_report --clear-cache [--conversation ID]
    python -m app.tools.memory_report --close-channel NAME [--retry-ms 5000]
    python -m app.tools.memory_report --close-client 203.0.113.7
    python -m app.tools.memory_report --drain [--retry-ms 5000]   # and --undrain
    python -m app.tools.memory_report --analyze                  # advice from live figures

One action per run (the flags exclude each other). Exit status: 0 when every
worker did it, 3 when some worker did not answer or failed (the answer names
them), 1 when the request failed (server down, wrong token, refused input).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any, TextIO

import httpx

from app.tools.admin_api import AdminRequestError, fetch_metrics
from app.tools.analyze import analyze

__all__ = ["PARTIAL_EXIT", "add_action_arguments", "render_answer", "run_action"]

PARTIAL_EXIT = 3


def add_action_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("operator actions (on every worker)")
    actions = group.add_mutually_exclusive_group()
    actions.add_argument(
        "--cleanup",
        choices=("light", "aggressive"),
        help="run the guard's cleanup of the warning (light) or critical (aggressive) level",
    )
    actions.add_argument("--clear-cache", action="store_true", help="empty the response cache")
    actions.add_argument("--close-channel", metavar="NAME", help="close the streams of a channel")
    actions.add_argument("--close-client", metavar="ADDRESS", help="close the streams of a client")
    actions.add_argument("--drain", action="store_true", help="refuse new streams, close open ones")
    actions.add_argument("--undrain", action="store_true", help="end the drain")
    actions.add_argument(
        "--analyze", action="store_true", help="which bound is closest to its limit, what to change"
    )
    group.add_argument("--conversation", metavar="ID", help="with --clear-cache: only this one")
    group.add_argument(
        "--retry-ms", type=int, metavar="MS", help="with --close-*/--drain: reconnect window"
    )


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None] | None:
    """``(method, path, body)`` of the action the flags ask for, or ``None``."""
    retry = {"retry_ms": args.retry_ms} if args.retry_ms is not None else {}
    if args.cleanup:
        return "POST", "/api/admin/cleanup", {"level": args.cleanup}
    if args.clear_cache:
        body = {"conversation_id": args.conversation} if args.conversation else None
        return "POST", "/api/admin/cache/clear", body
    if args.close_channel is not None:
        return "POST", "/api/admin/streams/close", {"channel": args.close_channel, **retry}
    if args.close_client is not None:
        return "POST", "/api/admin/streams/close", {"client": args.close_client, **retry}
    if args.drain:
        return "POST", "/api/admin/drain", retry or None
    if args.undrain:
        return "DELETE", "/api/admin/drain", None
    return None


def render_answer(answer: Mapping[str, Any]) -> str:
    """An action's answer for people: per worker, the total, who did not answer."""
    params = " ".join(f"{k}={v}" for k, v in answer["params"].items())
    lines = [
        f"{answer['action']} {params}".rstrip()
        + f": {answer['answered']} worker(s) answered (bus {answer['bus']})"
    ]
    for worker, result in answer["workers"].items():
        lines.append(f"  {worker}  {json.dumps(result, separators=(', ', ': '))}")
    lines.append(f"  total  {json.dumps(answer['total'], separators=(', ', ': '))}")
    for worker in answer["missing"]:
        lines.append(f"  NO ANSWER in time from {worker}")
    for worker, why in answer["failed"].items():
        lines.append(f"  FAILED on {worker}: {why}")
    return "\n".join(lines)


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    return detail if isinstance(detail, str) else json.dumps(detail)


def run_action(
    client: httpx.Client, args: argparse.Namespace, out: TextIO, err: TextIO
) -> int | None:
    """Carry out the action the flags ask for; its exit status, or ``None`` if none was asked."""
    if args.analyze:
        try:
            metrics = fetch_metrics(client, args.url, args.token, args.timeout)
        except AdminRequestError as exc:
            print(f"memory_report: {exc}", file=err)
            return 1
        print(analyze(metrics), file=out)
        return 0
    request = _request(args)
    if request is None:
        return None
    method, path, body = request
    target = args.url.rstrip("/") + path
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    try:
        response = client.request(method, target, json=body, headers=headers, timeout=args.timeout)
    except httpx.HTTPError as exc:
        print(f"memory_report: cannot reach {target}: {exc}", file=err)
        return 1
    if response.status_code != 200:
        print(
            f"memory_report: {target} answered {response.status_code}: {_detail(response)}",
            file=err,
        )
        return 1
    answer = response.json()
    print(render_answer(answer), file=out)
    return 0 if answer["complete"] else PARTIAL_EXIT
