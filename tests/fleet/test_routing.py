"""One bus handler for several kinds of request (app.fleet.actions.routing)."""

from __future__ import annotations

import pytest

from app.fleet.actions import Answer, Request
from app.fleet.actions.routing import KIND, HandlerRouter


async def operator_action(request: Request) -> Answer | None:
    return {"by": "actions", "action": request.get("action")}


async def subscriptions(request: Request) -> Answer | None:
    return {"by": "subscriptions"}


def router() -> HandlerRouter:
    routed = HandlerRouter(operator_action)
    routed.add("mercure.subscriptions", subscriptions)
    return routed


async def test_a_request_without_kind_is_an_operator_action() -> None:
    # What a worker of an older Herald sends: it must still be carried out.
    assert await router()({"action": "cleanup"}) == {"by": "actions", "action": "cleanup"}


async def test_a_kind_goes_to_its_handler() -> None:
    assert await router()({KIND: "mercure.subscriptions"}) == {"by": "subscriptions"}


@pytest.mark.parametrize("kind", ["unknown", 7, ["mercure.subscriptions"]])
async def test_an_unknown_kind_gets_no_answer(kind: object) -> None:
    assert await router()({KIND: kind, "action": "cleanup"}) is None


def test_a_kind_is_registered_once() -> None:
    routed = router()
    with pytest.raises(ValueError, match="already registered"):
        routed.add("mercure.subscriptions", operator_action)
