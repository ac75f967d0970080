"""
Tests for avr.delivery.PostQueue, the one delivery engine of both webhooks: the bounded queue, shutdown, and the
resend of a request whose kept-alive connection had been closed -- in memory (StubTreq, Clock, MemoryReactorClock),
plus a loopback test against a real receiver that closes every connection after its response.
"""

from __future__ import annotations

import gc
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.web.client import RequestNotSent, RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived

from avr.config import Config
from avr.control.events_webhook import EventsWebhook
from avr.delivery import MAX_QUEUED, SHUTDOWN_GRACE, PostQueue, _Delivery
from avr.service import build
from avr.testing.webhooks import WebhookReply, WebhookSink
from avr.webhooks import WebhookClient
from fakes import FakeLeg, FakeStsConnector
from tests.helpers import fired

URL = "http://receiver.example/hooks"
A, B, C = "call-a", "call-b", "call-c"


def body(kind: str, n: int = 0, key: str = A) -> bytes:
    return json.dumps({"type": kind, "key": key, "n": n}).encode()


def texts(log_events: list[dict[str, Any]], level: LogLevel | None = None) -> list[str]:
    return [formatEvent(e) for e in log_events if level is None or e.get("log_level") == level]


class Rig:
    """A PostQueue to a lenient WebhookSink through StubTreq, on one Clock; events ``end`` and ``start`` are kept."""

    def __init__(self, **options: Any) -> None:
        self.clock = Clock()
        self.sink = WebhookSink(self.clock, strict=False)
        self.http = StubTreq(self.sink)
        self.queue = PostQueue(self.http, self.clock, URL, never_dropped=frozenset({"start", "end"}), **options)

    def post(self, key: str, kind: str, n: int = 0) -> None:
        self.queue.post(key, kind, f"{kind} {n} of {key}", body(kind, n, key))

    def flush(self) -> None:
        for _ in range(5):
            self.http.flush()

    def advance(self, seconds: float) -> None:
        self.flush()
        self.clock.advance(seconds)
        self.flush()

    def got(self) -> list[tuple[str, str, int]]:
        """(key, kind, n) of every request received, in arrival order."""
        return [(w.envelope["key"], w.type, w.envelope["n"]) for w in self.sink.received]


# -- the bound ------------------------------------------------------------------------------------------------


def test_the_queue_is_bounded_and_the_oldest_droppable_events_go() -> None:
    """With the receiver stalled, at most max_queued droppable events wait; kept events wait whatever the bound."""
    rig = Rig(max_queued=3, timeout=60)
    rig.sink.script(None, WebhookReply.never())
    rig.post(A, "start")  # in flight, stalled
    for n in range(1, 6):
        rig.post(A, "text", n)
    rig.post(A, "end")
    assert rig.queue.pending == 4 and rig.queue.dropped == 2
    rig.sink.script(None, WebhookReply())
    rig.sink.answer_pending()
    rig.flush()
    assert rig.got() == [(A, "start", 0), (A, "text", 3), (A, "text", 4), (A, "text", 5), (A, "end", 0)]
    assert rig.queue.pending == 0 and rig.clock.getDelayedCalls() == []


def test_never_dropped_events_are_not_counted_against_the_bound() -> None:
    """Kept events are always queued and never push out droppable ones."""
    rig = Rig(max_queued=2, timeout=60)
    rig.sink.script(None, WebhookReply.never())
    for key in (A, B, C):
        rig.post(key, "start")  # in flight
        rig.post(key, "end")
    rig.post(A, "text", 1)
    rig.post(A, "text", 2)
    for key in (A, B, C):
        rig.post(key, "end", 1)
    assert rig.queue.pending == 8 and rig.queue.dropped == 0


def test_a_chatty_key_pays_for_itself() -> None:
    """A full queue drops the oldest droppable event of the key with the most queued, so a flood spares the others."""
    rig = Rig(max_queued=3, timeout=60)
    rig.sink.script(None, WebhookReply.never())
    rig.post(A, "start")
    rig.post(B, "start")
    rig.post(B, "text", 1)
    for n in range(1, 20):
        rig.post(A, "text", n)
    assert rig.queue.dropped == 17
    rig.post(B, "text", 2)  # A has the most queued: A's oldest goes
    rig.post(C, "text", 1)  # now B has: B's oldest goes
    assert rig.queue.dropped == 19
    rig.sink.script(None, WebhookReply())
    rig.sink.answer_pending()
    rig.flush()
    assert sorted(rig.got()[2:]) == [(A, "text", 19), (B, "text", 2), (C, "text", 1)]


def test_dropping_is_reported_when_it_starts_while_it_lasts_and_when_it_ends(log_events) -> None:
    """One warning when dropping starts, one per minute while it goes on, and the count once the queue drained."""
    rig = Rig(max_queued=4, timeout=200)
    rig.sink.script(None, WebhookReply.never())
    rig.post(A, "start")
    for n in range(1, 11):
        rig.post(A, "text", n)
    rig.advance(61)
    for n in range(11, 14):
        rig.post(A, "text", n)
    warnings = texts(log_events, LogLevel.warn)
    assert len(warnings) == 2
    assert "receiver not keeping up, 4 events queued; dropping the oldest (never end, start)" in warnings[0]
    assert "still not keeping up; 7 events dropped so far" in warnings[1]
    rig.sink.script(None, WebhookReply())
    rig.sink.answer_pending()
    rig.flush()
    warnings = texts(log_events, LogLevel.warn)
    assert len(warnings) == 3 and "delivering again; 9 events were dropped meanwhile" in warnings[2]
    assert rig.queue.dropped == 9


@pytest.mark.logs_errors(
    r"\[CALL_STARTED\].* not delivered after 1 attempt\(s\): timed out",
    r"\[TRANSCRIPTION\].* not delivered after 1 attempt\(s\): timed out",
)
def test_a_chatty_call_with_a_stalling_receiver_stays_bounded_and_its_call_ended_arrives() -> None:
    """
    The probe of the hardening issue: one call emits 20,000 transcriptions while the receiver stalls for a minute.
    At most MAX_QUEUED wait at any time (no other per-event state survives), and once the receiver answers again
    the newest transcriptions and then call_ended are delivered.
    """
    clock = Clock()
    sink = WebhookSink(clock)
    http = StubTreq(sink)
    client = WebhookClient(http, clock, URL, None, 3.0, 0)
    deliveries = client.deliveries
    assert deliveries is not None
    uuid = "935652e3-7c59-4edc-b17f-9646a9c2a265"
    sink.script(None, WebhookReply.never())
    client.emit(uuid, "call_started", {})
    most = 0
    for second in range(60):
        for n in range(second * 333, (second + 1) * 333):
            client.emit(uuid, "transcription", {"role": "agent", "text": f"word {n}"})
        most = max(most, deliveries.pending)
        http.flush()
        clock.advance(1)
    client.emit(uuid, "call_ended", {})
    assert most == MAX_QUEUED
    gc.collect()
    assert sum(isinstance(o, _Delivery) for o in gc.get_objects()) == MAX_QUEUED + 1  # + the one in flight
    stalled = len(sink.received)  # call_started, then one transcription every 3 s (each attempt timed out)
    sink.script(None, WebhookReply())
    sink.answer_pending()
    for _ in range(2 * MAX_QUEUED):
        if sink.of_type("call_ended"):
            break
        http.flush()
    [ended] = sink.of_type("call_ended")
    assert sink.received[-1] is ended
    after = [w.payload["text"] for w in sink.received[stalled:-1]]
    assert after == [f"word {n}" for n in range(19980 - len(after), 19980)]
    assert len(after) == MAX_QUEUED - 1  # the newest but one: it went out when the stall ended
    assert deliveries.dropped == 19980 - (stalled - 1) - len(after)
    http.flush()
    assert fired(client.stop()) is None and clock.getDelayedCalls() == []


# -- shutdown -------------------------------------------------------------------------------------------------


def _service_with_busy_calls(timeout_ms: int, calls: int = 50, transcripts: int = 200) -> Any:
    """avr built on a memory reactor with ``calls`` live calls, each with a backlog of transcriptions."""
    reactor = MemoryReactorClock()
    sink = WebhookSink(reactor)
    http = StubTreq(sink)
    sts = FakeStsConnector()
    # DRAIN_TIMEOUT=0: the calls end as the server stops (what these tests look at).
    avr = build(reactor, Config(webhook_url=URL, webhook_timeout=timeout_ms, drain_timeout=0), http_client=http,
                sts_connector=sts)
    avr.service.startService()
    sink.script("transcription", WebhookReply.never())
    uuids = [f"935652e3-7c59-4edc-b17f-{n:012d}" for n in range(calls)]
    for uuid in uuids:
        avr.calls.attach(FakeLeg(uuid, reactor))
        session = sts.open(uuid)
        for n in range(transcripts):
            session.handler.sts_transcript("agent", f"word {n}")
    http.flush()
    return reactor, sink, http, avr, uuids


def test_stop_delivers_pending_call_ended_first() -> None:
    """
    SIGTERM with 50 live calls whose transcriptions stall the receiver: the transcriptions (queued and in flight) are
    dropped, every call's call_ended goes out at once and is delivered, and shutdown ends as soon as they are.
    """
    reactor, sink, http, avr, uuids = _service_with_busy_calls(3000)
    assert len(sink.of_type("transcription")) == 50  # one in flight per call, the rest queued behind it
    sink.script("call_ended", WebhookReply(delay=0.2))
    stopped = avr.service.stopService()
    http.flush()
    assert {w.uuid for w in sink.of_type("call_ended")} == set(uuids)
    reactor.advance(0.2)
    http.flush()
    fired(stopped, "shutdown waits for nothing once call_ended is answered")
    assert len(sink.of_type("transcription")) == 50
    assert sink.pending == 0 and reactor.getDelayedCalls() == []


@pytest.mark.parametrize("timeout_ms,bound", [
    pytest.param(3000, 3.0, marks=pytest.mark.logs_errors(r"\[CALL_ENDED\].* not delivered after 1 attempt")),
    (30000, SHUTDOWN_GRACE),
])
def test_stop_with_a_stalled_receiver_ends_within_the_bound(timeout_ms: int, bound: float, log_events) -> None:
    """
    SIGTERM with 50 live calls and a receiver that answers nothing: every call_ended is sent once, and shutdown
    ends after one attempt timeout, at most SHUTDOWN_GRACE seconds, with one line for what was abandoned.
    """
    reactor, sink, http, avr, uuids = _service_with_busy_calls(timeout_ms)
    sink.script(None, WebhookReply.never())
    stopped = avr.service.stopService()
    http.flush()
    assert {w.uuid for w in sink.of_type("call_ended")} == set(uuids)
    reactor.advance(bound - 0.001)
    http.flush()
    assert not stopped.called
    reactor.advance(0.001)
    http.flush()
    fired(stopped)
    assert sink.pending == 0 and reactor.getDelayedCalls() == []
    lines = texts(log_events)
    assert any("1050 droppable events discarded (8950 dropped before), 50 events get one attempt" in line
               for line in lines)
    if bound == SHUTDOWN_GRACE:
        assert any("50 events abandoned at shutdown after 5.0 s (call_ended: 50)" in line for line in lines)
    else:
        assert sum("call_ended" in line and "not delivered after 1 attempt(s)" in line for line in lines) == 50


def test_stop_refuses_new_events_and_keeps_only_never_dropped_ones() -> None:
    """After stop() nothing is queued; queued droppable events are discarded, kept ones still go, in order."""
    rig = Rig(timeout=10)
    rig.sink.script("text", WebhookReply.never())
    rig.post(A, "text", 1)  # in flight
    rig.post(A, "text", 2)
    rig.post(A, "end")
    rig.post(B, "start")
    stopped = rig.queue.stop()
    rig.post(A, "text", 3)
    rig.flush()
    assert rig.got() == [(A, "text", 1), (B, "start", 0), (A, "end", 0)]
    assert fired(stopped) is None and rig.clock.getDelayedCalls() == []


# -- a kept-alive connection the receiver closed ----------------------------------------------------------------


class Scripted:
    """A treq-like client: its next posts fail with the exceptions in ``failures``, later ones go to ``stub``."""

    def __init__(self, stub: StubTreq, *failures: Exception) -> None:
        self.stub: Any = stub
        self.failures = list(failures)
        self.posts = 0

    def post(self, url: str, **kwargs: Any) -> Deferred[Any]:
        self.posts += 1
        if self.failures:
            return fail(self.failures.pop(0))
        return self.stub.post(url, **kwargs)


CLOSED = [Failure(ConnectionDone("closed by the receiver"))]


@pytest.mark.parametrize("error", [
    ResponseNeverReceived(CLOSED), RequestTransmissionFailed(CLOSED), RequestNotSent(),
])
def test_a_request_lost_with_its_connection_is_sent_again_on_a_fresh_one(error: Exception, log_events) -> None:
    """Closed before any response byte: sent again at once with the fresh-connection client, even with retries=0."""
    clock = Clock()
    sink = WebhookSink(clock, strict=False)
    pooled, fresh = Scripted(StubTreq(sink), error), Scripted(StubTreq(sink))
    queue = PostQueue(pooled, clock, URL, retries=0, fresh_http=fresh)
    queue.post(A, "text", "text", body("text"))
    fresh.stub.flush()
    assert (pooled.posts, fresh.posts, len(sink.received)) == (1, 1, 1)
    assert sink.received[0].body == body("text")
    assert texts(log_events, LogLevel.error) == [] and texts(log_events, LogLevel.warn) == []
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("error,text", [
    (ResponseFailed([Failure(ConnectionLost("reset"))]), "response cut short (connection closed by the peer)"),
    (ResponseNeverReceived(CLOSED), "no response (connection closed by the peer)"),
])
@pytest.mark.logs_errors(
    r"text 0 to .* not delivered after 1 attempt\(s\): (response cut short|no response) \(connection closed by the "
    r"peer\)",
)
def test_only_one_resend_and_only_before_a_response(error: Exception, text: str, log_events) -> None:
    """
    A response cut short is an ordinary failed attempt (no resend: the receiver may have acted on it); a resend that
    fails as well is one failed attempt, not a loop.
    """
    clock = Clock()
    sink = WebhookSink(clock, strict=False)
    pooled, fresh = Scripted(StubTreq(sink), error), Scripted(StubTreq(sink), error)
    queue = PostQueue(pooled, clock, URL, retries=0, fresh_http=fresh)
    queue.post(A, "text", "text 0", body("text"))
    [line] = texts(log_events, LogLevel.error)
    assert f"text 0 to {URL} not delivered after 1 attempt(s): {text}" == line
    assert pooled.posts == 1 and sink.received == []
    assert fresh.posts == (1 if isinstance(error, ResponseNeverReceived) else 0)


@pytest.mark.logs_errors(r"not delivered after 1 attempt\(s\): timed out: no response within 1000 ms")
def test_a_cancelled_request_is_not_sent_again() -> None:
    """Our own timeout cancels the request: that is a timed-out attempt, never a resend."""
    clock = Clock()
    sink = WebhookSink(clock, strict=False)
    sink.script(None, WebhookReply.never())
    stub = StubTreq(sink)
    fresh = Scripted(stub)
    queue = PostQueue(stub, clock, URL, timeout=1.0, retries=0, fresh_http=fresh)
    queue.post(A, "text", "text", body("text"))
    stub.flush()
    clock.advance(1.0)
    stub.flush()
    assert fresh.posts == 0 and len(sink.received) == 1 and sink.pending == 0


class _ClosingHandler(BaseHTTPRequestHandler):
    """Python's http.server as a bare receiver: HTTP/1.0, so it closes each connection after its response."""

    protocol_version = "HTTP/1.0"
    wbufsize = -1  # the status line, headers and body in one segment (no Nagle delays)
    server: _ClosingReceiver

    def do_POST(self) -> None:
        data = self.rfile.read(int(self.headers["Content-Length"]))
        reply = b'{"status":"ok"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)
        self.server.arrived(json.loads(data))

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class _ClosingReceiver(HTTPServer):
    """Serves in a thread; tells the reactor thread about every body received."""

    def __init__(self, reactor: Any) -> None:
        super().__init__(("127.0.0.1", 0), _ClosingHandler)
        self.reactor = reactor
        self.received: list[Any] = []
        self.waiters: list[tuple[int, Deferred[None]]] = []
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    def arrived(self, body: Any) -> None:
        self.reactor.callFromThread(self._record, body)

    def _record(self, body: Any) -> None:
        self.received.append(body)
        self._wake()

    def when_received(self, count: int) -> Deferred[None]:
        """Fires once ``count`` bodies have arrived (fails after 10 s)."""
        d: Deferred[None] = Deferred()
        self.waiters.append((count, d))
        self._wake()
        return d.addTimeout(10, self.reactor)

    def _wake(self) -> None:
        for count, d in list(self.waiters):
            if len(self.received) >= count:
                self.waiters.remove((count, d))
                d.callback(None)


@pytest_twisted.ensureDeferred
@pytest.mark.integration
async def test_a_receiver_that_closes_every_connection_gets_every_webhook(log_events) -> None:
    """
    The lost-webhook bug: against http.server speaking HTTP/1.0, the second of two events sent back to back went out
    on the kept-alive connection the receiver had just closed (ResponseNeverReceived, ConnectionDone) and was lost
    with WEBHOOK_RETRY=0. Both webhooks, with the HTTP clients avr.tap builds, now deliver every event.
    """
    from treq.client import HTTPClient
    from twisted.internet import reactor
    from twisted.internet.threads import deferToThread
    from twisted.web.client import Agent, HTTPConnectionPool

    receiver = _ClosingReceiver(reactor)
    receiver.thread.start()
    pool = HTTPConnectionPool(reactor, persistent=True)
    pooled, fresh = HTTPClient(Agent(reactor, pool=pool)), HTTPClient(Agent(reactor))
    url = f"http://127.0.0.1:{receiver.server_port}/hooks"
    webhooks = WebhookClient(pooled, reactor, url, None, 3.0, 0, fresh_http=fresh)
    events = EventsWebhook(pooled, reactor, url, timeout=3.0, retries=0, fresh_http=fresh)
    try:
        uuids = [f"935652e3-7c59-4edc-b17f-{n:012d}" for n in range(14)]
        for uuid in uuids:
            webhooks.emit(uuid, "call_started", {})
            webhooks.emit(uuid, "call_ended", {})
        await receiver.when_received(28)
        for n in range(28):
            events.publish({"type": "call.state_changed", "callId": "c", "timestamp": "t", "data": {"n": n}})
        await receiver.when_received(56)
        await webhooks.stop()
        await events.stop()
        assert sorted((b["uuid"], b["type"]) for b in receiver.received[:28]) == sorted(
            (u, t) for u in uuids for t in ("call_started", "call_ended"))
        assert [b["data"]["n"] for b in receiver.received[28:]] == list(range(28))
        assert texts(log_events, LogLevel.error) == []
    finally:
        await deferToThread(receiver.shutdown)
        receiver.server_close()
        await pool.closeCachedConnections()


def test_reprs_mask_the_receiver_url() -> None:
    """The delivery engine and both webhooks show their receiver's URL without its password or secret parameters."""
    from avr.webhooks import WebhookClient

    url = "https://user:pw-2718@hooks.example/in?token=tok-3141&x=1"
    for thing in (PostQueue(None, Clock(), url), EventsWebhook(None, Clock(), url),
                  WebhookClient(None, Clock(), url)):
        text = repr(thing)
        assert "hooks.example/in?token=***&x=1" in text, text
        assert "pw-2718" not in text and "tok-3141" not in text, text
    assert "url=None" in repr(WebhookClient(None, Clock(), None))
