"""What the publishers retry and what they give up on, through httpx's MockTransport with
scripted answers (Herald itself cannot be made to answer each status on cue; the tests
against real servers are in test_publisher.py and test_idempotency.py). Every test runs
on both publishers."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from herald_client import (
    AsyncHeraldPublisher,
    BatchItem,
    HeraldPublisher,
    PublishError,
    PublishRejected,
    PublishUnavailable,
    RetryPolicy,
)

QUICK = RetryPolicy(max_attempts=4, backoff_base=0.001, backoff_max=0.002, retry_after_max=0)
BASE_URL = "http://herald.test:8000"
ACCEPTED = {"id": "1-0", "channel": "orders/42", "channels": ["orders/42"], "subscribers": 3}

Script = Iterator[httpx.Response | Exception]
Publish = Callable[..., Awaitable[Any]]


class Herald:
    """Answers each request with the next of its script, keeping the requests."""

    def __init__(self, *script: httpx.Response | Exception) -> None:
        self.script = iter(script)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        outcome = next(self.script)
        if isinstance(outcome, Exception):
            raise outcome
        # A fresh response each time: one is bound to the sync or async client that read it.
        return httpx.Response(outcome.status_code, headers=outcome.headers, content=outcome.content)

    @property
    def keys(self) -> list[str | None]:
        return [request.headers.get("idempotency-key") for request in self.requests]


def accepted(headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(202, json=ACCEPTED, headers=headers)


def refused(
    status: int, detail: str = "no", headers: dict[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(status, json={"detail": detail}, headers=headers)


@pytest.fixture(params=["sync", "async"])
def publish(request: pytest.FixtureRequest) -> Publish:
    """Run one publisher method (``method``, default ``publish``) against ``herald``."""

    async def run(
        herald: Herald,
        *args: object,
        method: str = "publish",
        policy: RetryPolicy = QUICK,
        timeout: float = 10.0,
        **kwargs: object,
    ) -> Any:
        args = args or ("orders/42", {"status": "shipped"})
        if request.param == "sync":

            def call() -> Any:
                http = httpx.Client(transport=httpx.MockTransport(herald))
                with HeraldPublisher(
                    BASE_URL, token="t0k", retry=policy, timeout=timeout, http_client=http
                ) as publisher:
                    return getattr(publisher, method)(*args, **kwargs)

            return await asyncio.to_thread(call)
        http = httpx.AsyncClient(transport=httpx.MockTransport(herald))
        async with AsyncHeraldPublisher(
            BASE_URL, token="t0k", retry=policy, timeout=timeout, http_client=http
        ) as publisher:
            return await getattr(publisher, method)(*args, **kwargs)

    return run


async def test_a_publish_sends_herald_s_body_with_a_fresh_key(publish: Publish) -> None:
    herald = Herald(accepted(), accepted())
    first = await publish(herald, "orders/42", {"status": "shipped"}, event="order", private=True)
    await publish(herald)
    request = herald.requests[0]
    assert (request.method, str(request.url)) == ("POST", f"{BASE_URL}/events/orders/42")
    assert json.loads(request.content) == {
        "data": {"status": "shipped"},
        "event": "order",
        "private": True,
    }
    assert request.headers["content-type"] == "application/json"
    assert request.headers["authorization"] == "Bearer t0k"
    assert request.headers["user-agent"].startswith("herald-client/")
    one, two = herald.keys
    assert one is not None and uuid.UUID(one).version == 4 and one != two
    assert first.id == "1-0" and first.channels == ("orders/42",) and first.subscribers == 3
    assert (first.idempotency_key, first.attempts, first.replayed) == (one, 1, False)


async def test_publish_to_and_batch_bodies(publish: Publish) -> None:
    herald = Herald(accepted(), httpx.Response(202, json={"ids": ["5-0", "5-1"]}))
    await publish(herald, ["user/42", "org/7"], "hello", method="publish_to")
    batch = await publish(
        herald,
        [
            BatchItem("orders/42", {"status": "shipped"}, event="order"),
            BatchItem(["a", "b"], 1, private=True),
        ],
        method="publish_batch",
    )
    to, many = herald.requests
    assert str(to.url) == f"{BASE_URL}/events" == str(many.url)
    assert json.loads(to.content) == {"channels": ["user/42", "org/7"], "data": "hello"}
    assert json.loads(many.content) == [
        {"channels": ["orders/42"], "data": {"status": "shipped"}, "event": "order"},
        {"channels": ["a", "b"], "data": 1, "private": True},
    ]
    assert batch.ids == ("5-0", "5-1")


@pytest.mark.parametrize(
    "failure",
    [
        refused(408),
        refused(429, headers={"Retry-After": "1"}),
        refused(502),
        refused(503, headers={"Retry-After": "5"}),
        refused(504),
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("slow to connect"),
        httpx.PoolTimeout("no connection free"),
        httpx.WriteError("reset while sending"),
        httpx.ReadError("reset while reading"),
        httpx.ReadTimeout("no answer"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
    ],
    ids=lambda failure: getattr(failure, "status_code", None) or type(failure).__name__,
)
async def test_failures_that_may_pass_are_retried_with_the_same_key(
    publish: Publish, failure: httpx.Response | Exception
) -> None:
    herald = Herald(failure, failure, accepted({"Idempotent-Replayed": "true"}))
    result = await publish(herald)
    assert result.attempts == 3 and result.replayed
    assert herald.keys == [result.idempotency_key] * 3
    assert len({request.content for request in herald.requests}) == 1


async def test_a_callers_key_is_sent_on_every_attempt(publish: Publish) -> None:
    herald = Herald(refused(503), accepted())
    result = await publish(herald, idempotency_key="order-42-shipped")
    assert herald.keys == ["order-42-shipped", "order-42-shipped"]
    assert result.idempotency_key == "order-42-shipped"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 415, 422])
async def test_refusals_are_not_retried(publish: Publish, status: int) -> None:
    herald = Herald(refused(status, "item 0: bad"), accepted())
    with pytest.raises(PublishRejected) as refusal:
        await publish(herald)
    assert (refusal.value.status, refusal.value.detail, refusal.value.attempts) == (
        status,
        "item 0: bad",
        1,
    )
    assert len(herald.requests) == 1


@pytest.mark.parametrize(
    "answer",
    [
        refused(500, "bug"),
        httpx.Response(202, text="<html>a proxy's page</html>"),
        httpx.Response(202, json={"ids": ["1-0"]}),  # a batch's answer to a single publish
        httpx.LocalProtocolError("the client broke HTTP"),
        httpx.UnsupportedProtocol("ftp"),
    ],
    ids=["500", "202-html", "202-wrong-shape", "LocalProtocolError", "UnsupportedProtocol"],
)
async def test_answers_the_client_cannot_use_fail_at_once(
    publish: Publish, answer: httpx.Response | Exception
) -> None:
    herald = Herald(answer, accepted())
    with pytest.raises(PublishError) as failure:
        await publish(herald)
    assert type(failure.value) is PublishError and failure.value.attempts == 1
    assert len(herald.requests) == 1


async def test_unavailable_after_the_last_attempt(publish: Publish) -> None:
    herald = Herald(*[refused(503, "the broker cannot take the publish right now")] * 4)
    with pytest.raises(PublishUnavailable) as failure:
        await publish(herald)
    assert failure.value.status == 503 and failure.value.attempts == 4
    assert "broker" in str(failure.value.detail)
    assert failure.value.idempotency_key == herald.keys[0]
    assert len(set(herald.keys)) == 1


async def test_unavailable_names_the_connection_failure(publish: Publish) -> None:
    herald = Herald(*[httpx.ConnectError("Connection refused")] * 4)
    with pytest.raises(PublishUnavailable) as failure:
        await publish(herald)
    assert failure.value.status is None and failure.value.attempts == 4
    assert failure.value.detail == "ConnectError: Connection refused"
    assert isinstance(failure.value.__cause__, httpx.ConnectError)


async def test_no_attempt_outlives_the_deadline(publish: Publish) -> None:
    policy = RetryPolicy(max_attempts=100, deadline=0.5, backoff_base=0.05, backoff_max=0.05)
    herald = Herald(*[httpx.ReadTimeout("no answer")] * 100)
    with pytest.raises(PublishUnavailable):
        await publish(herald, policy=policy, timeout=10.0)
    timeouts = [request.extensions["timeout"]["read"] for request in herald.requests]
    assert timeouts[0] == pytest.approx(0.5, abs=0.05)  # not the 10 s asked for
    assert all(later < earlier for earlier, later in itertools.pairwise(timeouts))
    assert 3 <= len(herald.requests) <= 21  # waits of 25-50 ms fill half a second


@pytest.mark.parametrize(
    ("method", "args", "error"),
    [
        ("publish", ("a", float("nan")), ValueError),
        ("publish", ("a", object()), TypeError),
        ("publish_to", ([], 1), ValueError),
        ("publish_batch", ([],), ValueError),
        ("publish_batch", ([{"channel": "a", "data": 1}],), TypeError),
    ],
)
async def test_bodies_json_cannot_carry_fail_before_sending(
    publish: Publish, method: str, args: tuple[object, ...], error: type[Exception]
) -> None:
    herald = Herald()
    with pytest.raises(error):
        await publish(herald, *args, method=method)
    assert herald.requests == []


@pytest.mark.parametrize("key", ["", "commande-\u00e9t\u00e9"])
async def test_a_key_no_header_can_carry_fails_before_sending(publish: Publish, key: str) -> None:
    herald = Herald()
    with pytest.raises(ValueError, match="idempotency_key"):
        await publish(herald, idempotency_key=key)
    assert herald.requests == []


def test_a_callers_http_client_stays_open_and_its_own_closes() -> None:
    http = httpx.Client(transport=httpx.MockTransport(Herald(accepted())))
    with HeraldPublisher(BASE_URL, http_client=http) as publisher:
        publisher.publish("a", 1)
    assert not http.is_closed
    http.close()
    with HeraldPublisher(BASE_URL) as own:
        pass
    assert own._http.is_closed


async def test_an_async_callers_http_client_stays_open_and_its_own_closes() -> None:
    http = httpx.AsyncClient(transport=httpx.MockTransport(Herald(accepted())))
    async with AsyncHeraldPublisher(BASE_URL, http_client=http) as publisher:
        await publisher.publish("a", 1)
    assert not http.is_closed
    await http.aclose()
    async with AsyncHeraldPublisher(BASE_URL) as own:
        pass
    assert own._http.is_closed


@pytest.mark.parametrize("base_url", ["herald:8000", "ftp://herald", "/events"])
def test_base_url_must_be_http(base_url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        HeraldPublisher(base_url)


def test_base_url_may_carry_a_path() -> None:
    herald = Herald(accepted())
    http = httpx.Client(transport=httpx.MockTransport(herald))
    with HeraldPublisher("http://proxy.test/herald/", http_client=http) as publisher:
        publisher.publish("orders/42", 1)
    assert str(herald.requests[0].url) == "http://proxy.test/herald/events/orders/42"
