"""Tests for avr.control.events_webhook: events POSTed in order, with timeout, retries and a bounded queue."""

from __future__ import annotations

import json
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface.verify import verifyObject

from avr.control.events_webhook import EventsWebhook
from avr.interfaces import IEventSink

URL = "http://hooks.example/avr/events"


class Receiver(Resource):
    """An events webhook receiver: records what it gets, and answers as told (``ok``, ``fail`` = 500, ``hang``)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.received: list[dict[str, Any]] = []
        self.content_types: list[bytes | None] = []
        self.modes: list[str] = []
        self.hanging: list[Any] = []

    def render_POST(self, request: Any) -> Any:
        self.received.append(json.loads(request.content.read()))
        self.content_types.append(request.getHeader(b"content-type"))
        mode = self.modes.pop(0) if self.modes else "ok"
        if mode == "fail":
            request.setResponseCode(500)
            return b"receiver error"
        if mode == "hang":
            self.hanging.append(request)
            return NOT_DONE_YET
        return b'{"ok": true}'


def event(n: int) -> dict[str, Any]:
    """A numbered call event."""
    return {"type": "call.state_changed", "callId": f"c{n}", "timestamp": "2025-01-01T00:00:00.000Z",
            "data": {"n": n}}


def numbers(receiver: Receiver) -> list[int]:
    """The event numbers the receiver got, in order (retries included)."""
    return [e["data"]["n"] for e in receiver.received]


def drain(stub: StubTreq) -> None:
    """Move every in-memory request and response along (a request started by a finished one needs another flush)."""
    for _ in range(20):
        stub.flush()


@pytest.fixture
def clock() -> Clock:
    """Time for timeouts and backoff."""
    return Clock()


@pytest.fixture
def receiver() -> Receiver:
    """The webhook receiver."""
    return Receiver()


@pytest.fixture
def stub(receiver: Receiver) -> StubTreq:
    """A treq client whose requests reach ``receiver`` in memory."""
    return StubTreq(receiver)


def test_implements_ievent_sink(clock: Clock, stub: StubTreq) -> None:
    """EventsWebhook provides IEventSink."""
    assert verifyObject(IEventSink, EventsWebhook(stub, clock, URL))


def test_events_are_posted_as_json_in_order(clock: Clock, stub: StubTreq, receiver: Receiver) -> None:
    """Each event arrives once, as the same JSON object, with Content-Type application/json, in publish order."""
    hook = EventsWebhook(stub, clock, URL)
    for n in range(5):
        hook.publish(event(n))
    drain(stub)
    assert receiver.received == [event(n) for n in range(5)]
    assert set(receiver.content_types) == {b"application/json"}
    assert hook.pending == 0


@pytest.mark.logs_errors(r"not delivered after 1 attempt\(s\): timed out: no response within")
def test_publish_never_waits_for_the_receiver(clock: Clock, stub: StubTreq, receiver: Receiver) -> None:
    """While the receiver hangs, publish returns at once; later events wait their turn behind the first."""
    receiver.modes = ["hang"]
    hook = EventsWebhook(stub, clock, URL, timeout=3.0, retries=0)
    hook.publish(event(1))
    drain(stub)
    hook.publish(event(2))
    drain(stub)
    assert numbers(receiver) == [1]
    assert hook.pending == 1
    clock.advance(3.0)  # the attempt times out; the next event goes
    drain(stub)
    assert numbers(receiver) == [1, 2]


def test_failures_are_retried_with_exponential_backoff(clock: Clock, stub: StubTreq, receiver: Receiver) -> None:
    """A 500 is retried after 0.5 s, then 1 s; the event after it is only sent once it got through."""
    receiver.modes = ["fail", "fail", "ok"]
    hook = EventsWebhook(stub, clock, URL, retries=3)
    hook.publish(event(1))
    hook.publish(event(2))
    drain(stub)
    assert numbers(receiver) == [1]
    clock.advance(0.49)
    drain(stub)
    assert numbers(receiver) == [1]
    clock.advance(0.01)
    drain(stub)
    assert numbers(receiver) == [1, 1]
    clock.advance(0.99)
    drain(stub)
    assert numbers(receiver) == [1, 1]
    clock.advance(0.01)
    drain(stub)
    assert numbers(receiver) == [1, 1, 1, 2]
    assert clock.getDelayedCalls() == []


@pytest.mark.logs_errors(r"not delivered after 2 attempt\(s\): HTTP 500")
def test_gives_up_after_the_last_retry_and_goes_on(clock: Clock, stub: StubTreq, receiver: Receiver) -> None:
    """After retries+1 failed attempts the event is logged as lost and the next one is delivered."""
    receiver.modes = ["fail", "fail"]
    hook = EventsWebhook(stub, clock, URL, retries=1)
    with capturedLogs() as events:
        hook.publish(event(1))
        hook.publish(event(2))
        drain(stub)
        clock.advance(0.5)
        drain(stub)
    assert numbers(receiver) == [1, 1, 2]
    errors = [e for e in events if "not delivered" in e.get("log_format", "")]
    assert len(errors) == 1 and errors[0]["error"] == "HTTP 500" and errors[0]["attempts"] == 2


def test_a_hanging_receiver_times_out_and_is_retried(clock: Clock, stub: StubTreq, receiver: Receiver) -> None:
    """An attempt without an answer within the timeout counts as failed and is retried."""
    receiver.modes = ["hang", "ok"]
    hook = EventsWebhook(stub, clock, URL, timeout=2.0, retries=1)
    hook.publish(event(1))
    drain(stub)
    clock.advance(2.0)
    drain(stub)
    assert numbers(receiver) == [1]
    clock.advance(0.5)
    drain(stub)
    assert numbers(receiver) == [1, 1]
    assert clock.getDelayedCalls() == []


@pytest.mark.logs_errors(r"not delivered after 1 attempt\(s\): timed out: no response within")
def test_queue_is_bounded_and_drops_the_oldest(clock: Clock, stub: StubTreq, receiver: Receiver) -> None:
    """
    While the receiver is down, at most max_queue events wait; the oldest go first, with one warning, and the
    count is logged when delivery works again.
    """
    receiver.modes = ["hang"]
    hook = EventsWebhook(stub, clock, URL, timeout=5.0, retries=0, max_queue=3)
    with capturedLogs() as events:
        for n in range(8):  # 0 is in flight; 1..7 queue, of which 1..4 are dropped
            hook.publish(event(n))
            drain(stub)
        assert hook.pending == 3
        clock.advance(5.0)
        drain(stub)
    assert numbers(receiver) == [0, 5, 6, 7]
    warnings = [e for e in events if "dropping the oldest" in e.get("log_format", "")]
    assert len(warnings) == 1
    resumed = [e for e in events if "delivering again" in e.get("log_format", "")]
    assert len(resumed) == 1 and resumed[0]["count"] == 4


@pytest.mark.logs_errors(r"not delivered after 3 attempt\(s\): connection refused")
def test_connection_errors_are_retried_and_logged_without_credentials(clock: Clock) -> None:
    """A refused connection is retried; the final log line shows the URL without its password."""

    class Refusing:
        attempts = 0

        def post(self, url: str, **kwargs: Any) -> Deferred:
            self.attempts += 1
            return fail(ConnectionRefusedError("Connection refused"))

    http = Refusing()
    hook = EventsWebhook(http, clock, "http://user:hunter2@hooks.example/x", retries=2)
    with capturedLogs() as events:
        hook.publish(event(1))
        clock.advance(0.5)
        clock.advance(1.0)
    assert http.attempts == 3
    errors = [e for e in events if "not delivered" in e.get("log_format", "")]
    assert len(errors) == 1
    assert "connection refused" in errors[0]["error"]
    assert "hunter2" not in repr(errors[0])


def test_stop_cancels_what_is_in_flight_and_drops_the_queue(clock: Clock, stub: StubTreq,
                                                            receiver: Receiver) -> None:
    """stop() cancels the hanging attempt, fires, leaves no timers, and later events are ignored."""
    receiver.modes = ["hang"]
    hook = EventsWebhook(stub, clock, URL, timeout=5.0)
    hook.publish(event(1))
    hook.publish(event(2))
    drain(stub)
    stopped = hook.stop()
    drain(stub)
    assert stopped.called
    assert clock.getDelayedCalls() == []
    hook.publish(event(3))
    drain(stub)
    assert numbers(receiver) == [1]


def test_stop_during_backoff(clock: Clock, stub: StubTreq, receiver: Receiver) -> None:
    """stop() while waiting to retry cancels the wait: no retry happens."""
    receiver.modes = ["fail"]
    hook = EventsWebhook(stub, clock, URL, retries=2)
    hook.publish(event(1))
    drain(stub)
    assert hook.stop().called
    clock.advance(10)
    drain(stub)
    assert numbers(receiver) == [1]
    assert clock.getDelayedCalls() == []


def test_stop_when_idle_fires_at_once(clock: Clock, stub: StubTreq) -> None:
    """Nothing in flight: stop() has fired already."""
    assert EventsWebhook(stub, clock, URL).stop().called


@pytest.mark.logs_errors(r"dropping a call.bad event that is not JSON")
def test_an_event_that_is_not_json_is_skipped(clock: Clock, stub: StubTreq, receiver: Receiver) -> None:
    """publish() never raises: a non-JSON event is logged and dropped; the next one goes."""
    hook = EventsWebhook(stub, clock, URL)
    hook.publish({"type": "call.bad", "data": {1, 2}})
    hook.publish(event(2))
    drain(stub)
    assert numbers(receiver) == [2]


@pytest.mark.logs_errors(r"event to .* not delivered after 2 attempt\(s\): HTTP 30[137]")
@pytest.mark.parametrize("status", [301, 303, 307])
def test_redirects_are_not_followed(clock: Clock, status: int) -> None:
    """A redirect is a failed attempt (retried as a POST to the same URL), never followed, not even 303 as a GET."""

    class Redirecting(Resource):
        isLeaf = True

        def __init__(self) -> None:
            super().__init__()
            self.requests: list[tuple[bytes, bytes]] = []

        def render(self, request: Any) -> bytes:
            self.requests.append((request.method, request.path))
            if request.path == b"/avr/events":
                request.setResponseCode(status)
                request.setHeader(b"location", b"http://hooks.example/elsewhere")
            return b""

    receiver = Redirecting()
    stub = StubTreq(receiver)
    hook = EventsWebhook(stub, clock, URL, retries=1)
    with capturedLogs() as events:
        hook.publish(event(1))
        drain(stub)
        clock.advance(0.5)
        drain(stub)
    assert receiver.requests == [(b"POST", b"/avr/events")] * 2
    errors = [e for e in events if "not delivered" in e.get("log_format", "")]
    assert len(errors) == 1 and errors[0]["error"] == f"HTTP {status}"
