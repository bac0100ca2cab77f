"""The Unix-socket action bus with real sockets in a real directory: a request reaches the
workers named and only them, a silent or gone worker is simply absent from the answers,
a stopped worker leaves no socket behind, and answers are bounded by their own limit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from app.fleet.actions import sockets
from app.fleet.actions.base import TARGETS
from app.fleet.actions.sockets import MAX_LINE_BYTES, SocketBus


def handler_for(name: str, seen: list[str], delay: float = 0.0) -> Any:
    async def handle(request: dict[str, Any]) -> dict[str, Any] | None:
        if name not in request[TARGETS]:
            return None
        seen.append(name)
        await asyncio.sleep(delay)
        return {"result": {"by": name}}

    return handle


async def test_requests_reach_the_named_workers_and_answers_come_back(tmp_path: Path) -> None:
    seen: list[str] = []
    buses = {name: SocketBus(tmp_path, name) for name in ("box:1", "box:2", "box:3", "box:4")}
    await buses["box:2"].start(handler_for("box:2", seen))
    await buses["box:3"].start(handler_for("box:3", seen, delay=5.0))  # too slow
    await buses["box:4"].start(handler_for("box:4", seen))
    asker = buses["box:1"]
    try:
        request = {"id": "r1", TARGETS: ["box:2", "box:3", "box:5"]}
        answers = await asker.ask(request, ["box:2", "box:3", "box:5"], within_seconds=0.5)
        assert answers["box:2"] == {"result": {"by": "box:2"}}
        assert "box:3" not in answers  # did not answer in time
        assert answers["box:5"]["error"].startswith("unreachable")  # never existed
        assert "box:4" not in seen  # not named: never asked
        # Named to a worker that is not a target: it stays silent.
        silent = await asker.ask({"id": "r2", TARGETS: ["box:9"]}, ["box:4"], within_seconds=0.5)
        assert silent == {}
    finally:
        for bus in buses.values():
            await bus.stop()
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []


async def test_a_long_answer_comes_back_and_one_past_the_limit_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A subscription-list answer (app.mercure.gather) is far longer than a request line.
    long_text = "s" * (4 * MAX_LINE_BYTES)

    async def answer_long(request: dict[str, Any]) -> dict[str, Any]:
        return {"result": long_text}

    asker, answering = SocketBus(tmp_path, "box:1"), SocketBus(tmp_path, "box:2")
    await answering.start(answer_long)
    try:
        answers = await asker.ask({"id": "r1", TARGETS: ["box:2"]}, ["box:2"], 2.0)
        assert answers == {"box:2": {"result": long_text}}
        monkeypatch.setattr(sockets, "MAX_ANSWER_BYTES", MAX_LINE_BYTES)
        answers = await asker.ask({"id": "r2", TARGETS: ["box:2"]}, ["box:2"], 2.0)
        assert answers["box:2"]["error"] == f"answer longer than {MAX_LINE_BYTES} bytes"
    finally:
        await answering.stop()
