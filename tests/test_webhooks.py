"""
Tests for avr.webhooks.WebhookClient against the scriptable avr.testing.webhooks.WebhookSink, in memory (StubTreq) on a
Clock, plus one loopback integration test.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent
from zope.interface.verify import verifyObject

from avr.interfaces import IWebhooks
from avr.testing.webhooks import FakeWebhooks, WebhookReply, WebhookSink, envelope_violations
from avr.webhooks import WEBHOOK_TYPES, WebhookClient
from tests.helpers import fired

U = "935652e3-7c59-4edc-b17f-9646a9c2a265"
V = "0c8f3a4e-1111-4222-8333-944455556666"
URL = "http://receiver.example:9000/events"
NOON = 1767268800.0  # 2026-01-01T12:00:00Z
SEED_PAYLOAD = {"from": "2000", "to": "5001", "uniqueid": "1770758888.32", "channel": "PJSIP/2000-00000013"}


def logged(events: list[dict[str, Any]], level: LogLevel | None = None) -> list[str]:
    """The formatted text of the captured events (of one level), tracebacks included."""
    out = []
    for e in events:
        if level is None or e.get("log_level") == level:
            text = formatEvent(e)
            if e.get("log_failure") is not None:
                text += "\n" + e["log_failure"].getTraceback()
            out.append(text)
    return out


class Rig:
    """A WebhookClient wired to a WebhookSink through StubTreq, all on one Clock."""

    def __init__(self, *, secret=None, timeout_ms=3000, retries=0, sink_secret=None, url=URL):
        self.clock = Clock()
        self.clock.advance(NOON)
        self.sink = WebhookSink(self.clock, secret=sink_secret)
        self.http = StubTreq(self.sink)
        self.client = WebhookClient(self.http, self.clock, url, secret, timeout_ms / 1000, retries)

    def advance(self, seconds: float) -> None:
        """Move time on, letting in-memory HTTP traffic through before and after."""
        self.http.flush()
        self.clock.advance(seconds)
        self.http.flush()

    def arrivals(self) -> list[float]:
        return [w.received_at - NOON for w in self.sink.received]

    def assert_clean(self) -> None:
        """No timer of ours and no open request is left, and stop() has nothing to wait for."""
        self.http.flush()
        assert self.clock.getDelayedCalls() == []
        assert self.sink.pending == 0
        assert fired(self.client.stop()) is None


def test_provides_interface():
    """The real client and the fake both provide IWebhooks."""
    rig = Rig()
    assert verifyObject(IWebhooks, rig.client)
    assert verifyObject(IWebhooks, FakeWebhooks())


def test_envelope_is_exact():
    """The body is exactly {uuid, type, timestamp, payload} as JSON, POSTed with Content-Type application/json."""
    rig = Rig()
    rig.client.emit(U, "transcription", {"role": "user", "text": "hi"})
    [w] = rig.sink.received
    assert w.method == "POST" and w.path == "/events"
    assert w.header("content-type") == "application/json"
    assert list(w.envelope) == ["uuid", "type", "timestamp", "payload"]
    assert w.envelope == {
        "uuid": U,
        "type": "transcription",
        "timestamp": "2026-01-01T12:00:00.000Z",
        "payload": {"role": "user", "text": "hi"},
    }
    assert w.violations == ()
    rig.assert_clean()


def test_every_type_passes_the_strict_receiver():
    """All six event types are accepted by a receiver validating like avr-app."""
    rig = Rig()
    for kind in WEBHOOK_TYPES:
        if kind == "call_initiated":
            assert fired(rig.client.call_initiated(U, dict(SEED_PAYLOAD))) is None
        else:
            rig.client.emit(U, kind, {})
    assert [w.type for w in rig.sink.received] == list(WEBHOOK_TYPES)
    assert rig.sink.violations == []
    assert rig.sink.received[0].payload == SEED_PAYLOAD
    rig.assert_clean()


@pytest.mark.logs_errors(
    r"not sent: unknown event type",
    r"not sent: payload is not JSON",
    r"not sent: payload must be an object",
)
def test_unknown_type_or_bad_payload_is_not_sent(log_events):
    """An unknown type or a payload JSON cannot encode is logged as an error and not sent; emit never raises."""
    rig = Rig()
    rig.client.emit(U, "error", {"message": "x"})
    rig.client.emit(U, "call_started", {"x": object()})
    rig.client.emit(U, "call_started", ["not", "an", "object"])  # type: ignore[arg-type]
    assert rig.sink.received == []
    errors = logged(log_events, LogLevel.error)
    assert len(errors) == 3
    assert "unknown event type" in errors[0] and "not JSON" in errors[1] and "must be an object" in errors[2]
    rig.assert_clean()


def test_secret_header_present_only_when_set():
    """X-AVR-WEBHOOK-SECRET carries the raw secret when configured, and is absent otherwise."""
    with_secret = Rig(secret="s3cr3t", sink_secret="s3cr3t")
    with_secret.client.emit(U, "call_started", {})
    [w] = with_secret.sink.received
    assert w.header("X-AVR-WEBHOOK-SECRET") == "s3cr3t"
    assert w.violations == ()

    without = Rig()
    without.client.emit(U, "call_started", {})
    [w] = without.sink.received
    assert "x-avr-webhook-secret" not in w.headers


def test_timestamp_format():
    """Timestamps are ISO-8601 UTC with exactly three decimals and Z (`avr.timestamps.iso_millis`), from the injected
    clock."""
    rig = Rig()
    rig.clock.advance(1.234)
    rig.client.emit(U, "call_ended", {})
    assert rig.sink.received[0].envelope["timestamp"] == "2026-01-01T12:00:01.234Z"
    assert envelope_violations(rig.sink.received[0].envelope) == []


@pytest.mark.logs_errors(r"not delivered after 4 attempt\(s\): HTTP 500")
def test_retries_with_exponential_backoff(log_events):
    """A 500 receiver with retries=3 gets 4 attempts at 0, 0.5, 1.5 and 3.5 s; the final failure is logged."""
    rig = Rig(retries=3)
    rig.sink.script("call_started", WebhookReply(status=500))
    rig.client.emit(U, "call_started", {})
    for step in (0.5, 1.0, 2.0, 4.0):
        rig.advance(step - 0.001)
        rig.advance(0.001)
    assert rig.arrivals() == pytest.approx([0, 0.5, 1.5, 3.5])
    errors = logged(log_events, LogLevel.error)
    assert len(errors) == 1
    assert "[WEBHOOK][CALL_STARTED]" in errors[0] and "4 attempt(s)" in errors[0] and "HTTP 500" in errors[0]
    assert U in errors[0] and "receiver.example" in errors[0]
    rig.assert_clean()


def test_backoff_is_capped():
    """Backoff doubles from 0.5 s and stops growing at the cap."""
    client = WebhookClient(None, Clock(), URL, None, 3.0, 10, backoff_cap=3.0)
    assert client.deliveries is not None
    assert [client.deliveries.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_retry_then_success_logs_no_error(log_events):
    """Two failures then a 200: three attempts (0, 0.5, 1.5 s) and no error."""
    rig = Rig(retries=5)
    rig.sink.script(None, WebhookReply(status=503), WebhookReply(status=500), WebhookReply())
    rig.client.emit(U, "interruption", {})
    rig.advance(0.5)
    rig.advance(1.0)
    rig.advance(10)
    assert rig.arrivals() == pytest.approx([0, 0.5, 1.5])
    assert logged(log_events, LogLevel.error) == []
    rig.assert_clean()


@pytest.mark.logs_errors(r"dtmf_digit for call .* not delivered after 2 attempt\(s\): HTTP [345]\d\d")
@pytest.mark.parametrize("status", [301, 302, 400, 401, 404, 500])
def test_non_2xx_is_a_failure(status, log_events):
    """Any non-2xx answer (a redirect included: never followed) is a failed attempt and is retried."""
    rig = Rig(retries=1)
    rig.sink.script(None, WebhookReply(status=status, body=b""))
    rig.client.emit(U, "dtmf_digit", {"digit": "5"})
    rig.advance(1)
    assert len(rig.sink.received) == 2
    assert all(w.method == "POST" for w in rig.sink.received)
    assert f"HTTP {status}" in logged(log_events, LogLevel.error)[0]
    rig.assert_clean()


@pytest.mark.logs_errors(r"not delivered after 2 attempt\(s\): timed out")
def test_each_attempt_is_bounded_by_the_timeout(log_events):
    """A receiver that never answers: each attempt is cancelled after timeout_ms, then retried after backoff."""
    rig = Rig(timeout_ms=2000, retries=1)
    rig.sink.script(None, WebhookReply.never())
    rig.client.emit(U, "call_started", {})
    assert rig.sink.pending == 1
    rig.advance(1.999)
    assert len(rig.sink.received) == 1 and logged(log_events, LogLevel.error) == []
    rig.advance(0.001)  # first attempt times out; its connection is dropped
    assert rig.sink.pending == 0
    rig.advance(0.5)  # backoff
    assert rig.arrivals() == pytest.approx([0, 2.5])
    rig.advance(2)
    errors = logged(log_events, LogLevel.error)
    assert len(errors) == 1 and "timed out" in errors[0] and "2000 ms" in errors[0]
    rig.assert_clean()


def test_events_of_one_call_are_delivered_in_order():
    """A later event of the same call is not sent before the earlier one is answered."""
    rig = Rig()
    rig.sink.script("call_started", WebhookReply(delay=1.0))
    rig.client.emit(U, "call_started", {})
    rig.client.emit(U, "transcription", {"role": "agent", "text": "hello"})
    rig.client.emit(U, "call_ended", {})
    assert [w.type for w in rig.sink.received] == ["call_started"]
    rig.advance(1.0)
    assert [w.type for w in rig.sink.received] == ["call_started", "transcription", "call_ended"]
    # The timestamps are the emit times, not the send times.
    assert {w.envelope["timestamp"] for w in rig.sink.received} == {"2026-01-01T12:00:00.000Z"}
    rig.assert_clean()


@pytest.mark.logs_errors(r"call_started for call .* not delivered after 1 attempt\(s\): timed out")
def test_order_holds_across_a_final_failure():
    """After an event fails for good, the next event of the call is sent."""
    rig = Rig(timeout_ms=1000, retries=0)
    rig.sink.script("call_started", WebhookReply.never())
    rig.client.emit(U, "call_started", {})
    rig.client.emit(U, "call_ended", {})
    assert len(rig.sink.received) == 1
    rig.advance(1.0)
    assert [w.type for w in rig.sink.received] == ["call_started", "call_ended"]
    rig.assert_clean()


@pytest.mark.logs_errors(r"call_started for call .* not delivered after 1 attempt\(s\): timed out")
def test_a_stuck_call_does_not_delay_another():
    """One call's unanswered webhook does not hold back a different call's events."""
    rig = Rig(timeout_ms=5000)
    rig.sink.script("call_started", WebhookReply.never())
    rig.client.emit(U, "call_started", {})
    rig.client.emit(V, "dtmf_digit", {"digit": "1"})
    rig.client.emit(V, "call_ended", {})
    assert [(w.uuid, w.type) for w in rig.sink.received] == [
        (U, "call_started"), (V, "dtmf_digit"), (V, "call_ended"),
    ]
    assert rig.arrivals() == [0, 0, 0]
    rig.advance(5)
    rig.assert_clean()


def test_call_initiated_returns_override():
    """call_initiated sends the payload verbatim and fires with the reply's sts_url."""
    rig = Rig()
    rig.sink.script("call_initiated", WebhookReply.json({"sts_url": f"ws://other:7000?uuid={U}"}))
    payload = {**SEED_PAYLOAD, "recording": False, "n": 3}
    d = rig.client.call_initiated(U, payload)
    rig.http.flush()
    assert fired(d) == f"ws://other:7000?uuid={U}"
    assert rig.sink.received[0].payload == payload
    rig.assert_clean()


def test_call_initiated_logs_like_avr_core(log_events):
    """The reply and the override are logged with avr-core's wording; URL credentials are redacted."""
    rig = Rig()
    rig.sink.script("call_initiated", WebhookReply.json({"sts_url": "wss://bob:pw@sts.example/?token=abc"}))
    assert fired(rig.client.call_initiated(U, {})) == "wss://bob:pw@sts.example/?token=abc"
    info = logged(log_events, LogLevel.info)
    assert any(line.startswith("Webhook response received: {") for line in info)
    assert "Overriding STS URL: wss://sts.example/?token=***" in info
    assert not any("pw" in line or "abc" in line for line in logged(log_events))


@pytest.mark.parametrize(
    "reply",
    [
        WebhookReply.json({"status": "ok"}),
        WebhookReply.json({"sts_url": None}),
        WebhookReply.json({"sts_url": 42}),
        WebhookReply.json({"sts_url": ""}),
        WebhookReply.json({"sts_url": "ftp://x/"}),
        WebhookReply.json({"sts_url": "not a url"}),
        WebhookReply.json(["sts_url", "ws://x/"]),
        WebhookReply(body=b"<html>ok</html>"),
        WebhookReply(body=b""),
        WebhookReply(body=b'{"sts_url": "ws://x/"', status=200),
        pytest.param(WebhookReply.json({"sts_url": "ws://x/"}, status=500),
                     marks=pytest.mark.logs_errors(r"call_initiated .* not delivered after 1 attempt\(s\): HTTP 500")),
    ],
)
def test_call_initiated_ignores_unusable_replies(reply):
    """No sts_url, a non-URL, a non-JSON body or a failed answer all give None."""
    rig = Rig()
    rig.sink.script("call_initiated", reply)
    d = rig.client.call_initiated(U, {})
    rig.http.flush()
    assert fired(d) is None
    rig.assert_clean()


def test_call_initiated_gives_up_after_the_timeout_in_total():
    """With retries, call_initiated still fires None once timeout_ms has passed since it was called."""
    rig = Rig(timeout_ms=3000, retries=5)
    rig.sink.script("call_initiated", WebhookReply(status=500))
    d = rig.client.call_initiated(U, {})
    results: list[Any] = []
    d.addBoth(results.append)
    rig.advance(0.5)
    rig.advance(1.0)
    rig.advance(1.499)
    assert results == []
    assert rig.arrivals() == pytest.approx([0, 0.5, 1.5])  # retries happen within the deadline
    rig.advance(0.001)
    assert results == [None]
    rig.advance(60)
    assert len(rig.sink.received) == 3  # no further retries once abandoned
    rig.assert_clean()


def test_call_initiated_timeout_with_silent_receiver_fires_none():
    """A receiver that never answers: None after timeout_ms, the request is dropped, later events still go."""
    rig = Rig(timeout_ms=3000)
    rig.sink.script("call_initiated", WebhookReply.never())
    d = rig.client.call_initiated(U, {})
    rig.client.emit(U, "call_started", {})
    results: list[Any] = []
    d.addBoth(results.append)
    rig.advance(3)
    assert results == [None]
    assert [w.type for w in rig.sink.received] == ["call_initiated", "call_started"]
    rig.assert_clean()


def test_oversized_reply_is_dropped_but_delivery_counts(log_events):
    """A reply body over the limit is not read to the end; the event counts as delivered (no retry)."""
    rig = Rig(retries=2)
    big = json.dumps({"sts_url": "ws://x/", "pad": "x" * 70000}).encode()
    rig.sink.script("call_initiated", WebhookReply(body=big))
    d = rig.client.call_initiated(U, {})
    rig.advance(0)
    assert fired(d) is None
    assert len(rig.sink.received) == 1
    assert any("over 65536 bytes" in line for line in logged(log_events, LogLevel.warn))
    rig.assert_clean()


def test_no_url_means_no_op():
    """Without a URL, emit does nothing and call_initiated fires None at once."""
    clock = Clock()
    client = WebhookClient(None, clock, None, None, 3.0, 0)
    client.emit(U, "call_started", {})
    assert fired(client.call_initiated(U, {})) is None
    assert clock.getDelayedCalls() == []
    assert fired(client.stop()) is None


@pytest.mark.logs_errors(r"call_ended for call .* not delivered after 2 attempt\(s\): connection refused")
def test_connection_failure_is_a_failed_attempt(log_events):
    """An exception from the HTTP client is a failed attempt, retried, then logged with its reason."""

    class Refusing:
        def post(self, url, **kwargs):
            from twisted.internet.defer import fail
            from twisted.internet.error import ConnectionRefusedError

            return fail(ConnectionRefusedError("127.0.0.1:9"))

    clock = Clock()
    client = WebhookClient(Refusing(), clock, URL, "topsecret", 3.0, 1)
    client.emit(U, "call_ended", {})
    clock.advance(0.5)
    [error] = logged(log_events, LogLevel.error)
    assert "connection refused" in error and "2 attempt(s)" in error
    assert clock.getDelayedCalls() == []


@pytest.mark.logs_errors(
    r"Webhook nonsense for call .* not sent: unknown event type",
    r"call_started .*key=\*\*\* not delivered after 3 attempt\(s\): HTTP 500",
    r"call_ended .*key=\*\*\* not delivered after 3 attempt\(s\): timed out",
)
def test_secret_never_logged(log_events):
    """Whatever happens (success, failures, timeouts, retries, shutdown), the secret is in no log line."""
    secret = "hunter2-very-secret"
    rig = Rig(secret=secret, timeout_ms=1000, retries=2, url=f"http://user:{secret}@receiver.example/x?key={secret}")
    rig.sink.script("call_started", WebhookReply(status=500))
    rig.sink.script("call_ended", WebhookReply.never())
    rig.client.emit(U, "call_started", {})
    rig.client.emit(V, "call_ended", {})
    rig.client.emit(V, "nonsense", {})
    d = rig.client.call_initiated(U, {})
    rig.advance(10)
    rig.advance(10)
    assert fired(d) is None
    stopped = rig.client.stop()
    rig.advance(1)
    assert fired(stopped) is None
    lines = logged(log_events)
    assert any("[WEBHOOK]" in line for line in lines)
    assert not any(secret in line for line in lines)
    assert secret not in repr(rig.client)
    assert rig.sink.received[0].header("x-avr-webhook-secret") == secret


@pytest.mark.logs_errors(
    r"call_started .* not delivered after 4 attempt\(s\): HTTP 500; not retried: shutting down",
    r"call_ended .* not delivered after 4 attempt\(s\): timed out.*not retried: shutting down",
)
def test_stop_cancels_retries_and_waits_for_in_flight(log_events):
    """stop() cancels backoff timers, gives in-flight attempts until the timeout, then abandons the rest."""
    rig = Rig(timeout_ms=2000, retries=3)
    rig.sink.script("call_started", WebhookReply(status=500))
    rig.sink.script("call_ended", WebhookReply.never())
    rig.client.emit(U, "call_started", {})  # fails, now waiting 0.5 s to retry
    rig.client.emit(V, "call_ended", {})  # in flight, never answered
    stopped = rig.client.stop()
    results: list[Any] = []
    stopped.addBoth(results.append)
    rig.client.emit(U, "call_ended", {})  # refused: shutting down
    rig.advance(1.999)
    assert results == []
    assert len(rig.sink.received) == 2  # no retry happened
    rig.advance(0.001)
    assert results == [None]
    lines = logged(log_events)
    assert any("not retried: shutting down" in line for line in lines)
    assert any("not sent: shutting down" in line for line in lines)
    rig.assert_clean()


def test_stop_when_idle_fires_at_once():
    """stop() with nothing in flight fires immediately; emit afterwards sends nothing."""
    rig = Rig()
    assert fired(rig.client.stop()) is None
    rig.client.emit(U, "call_started", {})
    assert fired(rig.client.call_initiated(U, {})) is None
    assert rig.sink.received == []


def test_sink_refuses_bad_envelopes_and_wrong_secret():
    """The sink answers 401 on a wrong secret and 400 on an envelope avr-app would refuse, recording why."""
    clock = Clock()
    sink = WebhookSink(clock, secret="s")
    http = StubTreq(sink)
    ok = {"uuid": U, "type": "call_started", "timestamp": "2026-01-01T12:00:00.000Z", "payload": {}}
    cases = [
        ({"X-AVR-WEBHOOK-SECRET": "wrong"}, ok, 401),
        ({"X-AVR-WEBHOOK-SECRET": "s"}, {**ok, "extra": 1}, 400),
        ({"X-AVR-WEBHOOK-SECRET": "s"}, {**ok, "timestamp": "2026-01-01T12:00:00Z"}, 400),
        ({"X-AVR-WEBHOOK-SECRET": "s"}, {**ok, "type": "error"}, 400),
        ({"X-AVR-WEBHOOK-SECRET": "s"}, {**ok, "uuid": "123"}, 400),
        ({"X-AVR-WEBHOOK-SECRET": "s"}, {k: v for k, v in ok.items() if k != "payload"}, 400),
        ({"X-AVR-WEBHOOK-SECRET": "s"}, ok, 200),
    ]
    for headers, body, status in cases:
        response = fired(
            http.post("http://sink/", data=json.dumps(body), headers={**headers, "Content-Type": "application/json"})
        )
        assert response.code == status
        fired(response.content())
    assert [len(w.violations) > 0 for w in sink.received] == [True] * 6 + [False]
    assert fired(sink.when_received(7))[-1].envelope == ok


@pytest_twisted.ensureDeferred
@pytest.mark.integration
async def test_loopback_delivery_with_real_http_client():
    """Over real loopback sockets: an event and a call_initiated round trip reach the sink and its reply."""
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool
    from twisted.web.server import Site
    from treq.client import HTTPClient

    sink = WebhookSink(reactor, secret="s")
    sink.script("call_initiated", WebhookReply.json({"sts_url": "ws://127.0.0.1:1/x"}))
    port = reactor.listenTCP(0, Site(sink), interface="127.0.0.1")
    pool = HTTPConnectionPool(reactor, persistent=True)
    http = HTTPClient(Agent(reactor, pool=pool))
    client = WebhookClient(http, reactor, f"http://127.0.0.1:{port.getHost().port}/hook", "s", 3.0, 0)
    try:
        assert await client.call_initiated(U, {"from": "2000"}) == "ws://127.0.0.1:1/x"
        client.emit(U, "call_started", {})
        received = await sink.when_received(2)
        assert [w.type for w in received] == ["call_initiated", "call_started"]
        assert sink.violations == []
    finally:
        await client.stop()
        sink.close()
        await pool.closeCachedConnections()
        await port.stopListening()
