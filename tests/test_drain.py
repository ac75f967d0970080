"""
Graceful drain (avr.drain, avr.service.AvrService), /ready and /health's component states (avr.health), and
MAX_CALLS: avr as built by `avr.service.build` on a memory reactor, AudioSocket connections on string transports.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, formatEvent

from avr.audiosocket import AudioSocketProtocol
from avr.config import Config
from avr.control.hub import EventsHub
from avr.frames import HANGUP_FRAME, Kind, encode_frame, encode_uuid
from avr.service import Avr, build
from avr.testing.webhooks import WebhookSink
from fakes import FakeStsConnector
from tests.helpers import fired

URL = "http://hooks.example/avr"
U1 = "935652e3-7c59-4edc-b17f-9646a9c2a265"
U2 = "935652e3-7c59-4edc-b17f-9646a9c2a266"
U3 = "935652e3-7c59-4edc-b17f-9646a9c2a267"
FRAME = b"\x01\x00" * 160


class Rig:
    """avr started on a memory reactor, with its webhooks going to a sink and its /events to a list."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.sink = WebhookSink(self.reactor)
        self.http = StubTreq(self.sink)
        self.sts = FakeStsConnector()
        self.events: list[dict] = []
        monkeypatch.setattr(EventsHub, "publish", lambda hub, event: self.events.append(event))
        options: dict[str, Any] = {"http_port": 6001, "webhook_url": URL, **settings}
        self.avr: Avr = build(self.reactor, Config(**options), http_client=self.http, sts_connector=self.sts)
        self.avr.service.startService()
        self.api = StubTreq(self.avr.http_app.resource())  # type: ignore[union-attr]
        self.stopped: Deferred | None = None

    def dial(self, uuid: str, open_sts: bool = True) -> tuple[AudioSocketProtocol, StringTransport]:
        """An AudioSocket connection for ``uuid`` (its STS session opened)."""
        factory = next(f for port, f, _, _ in self.reactor.tcpServers if port == 5001)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(encode_uuid(uuid))
        if open_sts and uuid in self.sts.pending:
            self.sts.open(uuid)
        return protocol, transport

    def get(self, path: str) -> tuple[int, Any]:
        d = self.api.get(f"http://avr{path}")
        self.api.flush()
        response = fired(d)
        return response.code, json.loads(fired(self.api.content(response)))

    def post(self, path: str, body: dict) -> tuple[int, Any]:
        d = self.api.post(f"http://avr{path}", json=body)
        self.api.flush()
        response = fired(d)
        return response.code, json.loads(fired(self.api.content(response)))

    def stop(self) -> Deferred:
        self.stopped = self.avr.service.stopService()
        return self.stopped

    def ended(self) -> list[str]:
        """The uuid of every ``call_ended`` webhook received (its payload is avr-core's ``{}``)."""
        self.http.flush()
        return [w.uuid for w in self.sink.of_type("call_ended")]

    def ended_events(self) -> list[tuple[str, str]]:
        return [(e["callId"], e["data"]["reason"]) for e in self.events if e["type"] == "call.ended"]


def messages(events: list[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events]


def test_a_live_call_survives_the_start_of_the_drain_and_ends_on_its_own(monkeypatch: pytest.MonkeyPatch,
                                                                         log_events: list[LogEvent]) -> None:
    """
    SIGTERM with a call up: stopService waits; the call goes on (audio both ways); a new AudioSocket connection gets
    a hang-up frame, POST /call and /ready answer 503, /health says draining; when the caller hangs up, the drain is
    over at once, with the call's call_ended webhook and /events event, and the services stop.
    """
    rig = Rig(monkeypatch)
    protocol, transport = rig.dial(U1)
    stopped = rig.stop()
    assert not stopped.called
    assert rig.avr.service.getServiceNamed("audiosocket").listening  # still open: refused calls hear a hang-up

    # The live call goes on, both ways.
    protocol.dataReceived(encode_frame(Kind.SLIN8, FRAME))
    assert rig.sts.sessions[U1].audio[-1] == FRAME
    rig.sts.sessions[U1].handler.sts_audio(FRAME)
    rig.reactor.advance(0.02)
    assert transport.value().endswith(bytes((Kind.SLIN8, 1, 64)) + FRAME)

    # Nothing new is taken.
    refused, refused_transport = rig.dial(U2)
    assert refused_transport.value() == HANGUP_FRAME and refused_transport.disconnecting
    assert U2 not in rig.sts.pending and rig.avr.calls.get(U2) is None
    assert any("AudioSocket call " + U2 + " refused: avr is draining" in m for m in messages(log_events))
    assert rig.post("/call", {"uuid": U3, "payload": {}}) == (503, {
        "error": "call not accepted: avr is draining (shutting down): it takes no new calls", "reason": "draining"})
    assert len(rig.avr.registrations) == 0
    status, body = rig.get("/ready")
    assert status == 503 and body == {"ready": False, "reasons": [
        {"component": "drain", "reason": "avr is draining (shutting down): it takes no new calls"}]}
    status, health = rig.get("/health")
    assert status == 200 and health["status"] == "ok" and health["draining"] is True and health["ready"] is False
    assert health["audiosocketCalls"] == 1

    rig.reactor.advance(10)
    assert not stopped.called
    protocol.dataReceived(HANGUP_FRAME)  # the caller hangs up
    assert fired(stopped) is not None
    assert rig.ended() == [U1]
    assert rig.ended_events() == [(U1, "Asterisk: hangup frame")]
    assert not rig.avr.service.getServiceNamed("audiosocket").listening
    assert any("Draining: every call has ended after 10.0 s" in m for m in messages(log_events))


def test_at_the_drain_timeout_the_calls_still_live_are_hung_up_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    """DRAIN_TIMEOUT over: each call still live gets its hang-up frame, call_ended webhook and /events event."""
    rig = Rig(monkeypatch, drain_timeout=45)
    legs = [rig.dial(U1), rig.dial(U2, open_sts=False)]  # the second is still connecting to its STS
    stopped = rig.stop()
    rig.reactor.advance(44.9)
    assert not stopped.called and all(not t.disconnecting for _, t in legs)
    rig.reactor.advance(0.1)
    assert fired(stopped) is not None
    assert all(t.value().endswith(HANGUP_FRAME) and t.disconnecting for _, t in legs)
    assert sorted(rig.ended()) == [U1, U2]
    assert sorted(rig.ended_events()) == [(U1, "server shutting down"), (U2, "server shutting down")]
    assert U2 in rig.sts.cancelled and rig.reactor.getDelayedCalls() == []


def test_drain_timeout_zero_hangs_up_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """DRAIN_TIMEOUT=0 is the old behaviour: live calls are hung up as the server stops."""
    rig = Rig(monkeypatch, drain_timeout=0)
    _, transport = rig.dial(U1)
    assert fired(rig.stop()) is not None
    assert transport.value() == HANGUP_FRAME and rig.ended() == [U1]
    assert rig.ended_events() == [(U1, "server shutting down")]


def test_no_live_call_stops_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without live calls the drain takes no time, whatever DRAIN_TIMEOUT says."""
    rig = Rig(monkeypatch, drain_timeout=600)
    assert fired(rig.stop()) is not None and rig.reactor.getDelayedCalls() == []


def test_a_registration_made_before_the_drain_is_refused_when_its_connection_comes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A call registered with POST /call before SIGTERM whose connection comes after is refused like any other."""
    rig = Rig(monkeypatch)
    rig.dial(U1)
    assert rig.post("/call", {"uuid": U2, "payload": {"caller": "1001"}})[0] == 200
    rig.stop()
    _, transport = rig.dial(U2)
    assert transport.value() == HANGUP_FRAME and rig.avr.calls.get(U2) is None


def test_ready_and_health_when_all_is_well(monkeypatch: pytest.MonkeyPatch) -> None:
    """/ready is 200 with no reasons; /health shows the components (listener, ARI not configured, mode, calls)."""
    rig = Rig(monkeypatch)
    assert rig.get("/ready") == (200, {"ready": True, "reasons": []})
    status, health = rig.get("/health")
    assert status == 200
    assert {k: health[k] for k in ("status", "ready", "audiosocket", "audiosocketCalls", "maxCalls", "draining",
                                   "mode", "ari", "ariState")} == {
        "status": "ok", "ready": True, "audiosocket": "listening", "audiosocketCalls": 0, "maxCalls": None,
        "draining": False, "mode": "echo", "ari": False, "ariState": "not configured"}


def test_ready_is_503_while_ari_is_not_connected(monkeypatch: pytest.MonkeyPatch) -> None:
    """A configured ARI that is connecting or down makes /ready 503 (saying so); connected, it is 200 again."""
    rig = Rig(monkeypatch, ari_url="http://127.0.0.1:8088", ari_username="avr", ari_password="secret-pw",
              ari_app="avr", sts_url="ws://sts.example/agent")
    assert rig.get("/ready") == (503, {"ready": False, "reasons": [
        {"component": "ari", "reason": "ARI is connecting"}]})
    control = rig.avr.control
    assert control is not None
    control.ari_disconnected("connection refused")
    assert rig.get("/ready") == (503, {"ready": False, "reasons": [
        {"component": "ari", "reason": "ARI is disconnected: connection refused"}]})
    status, health = rig.get("/health")
    assert status == 200 and health["ari"] is False and health["ariState"] == "disconnected"
    assert health["mode"] == "sts" and "secret-pw" not in json.dumps(health)
    control.link.up()
    assert rig.get("/ready") == (200, {"ready": True, "reasons": []})
    assert rig.get("/health")[1]["ari"] is True


def test_ready_needs_no_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load balancers probe without keys: /ready is as open as /health; POST /call still needs the key."""
    rig = Rig(monkeypatch, api_key="k" * 20)
    assert rig.get("/ready")[0] == 200 and rig.get("/health")[0] == 200
    assert rig.post("/call", {"uuid": U1})[0] == 401


def test_ready_is_503_when_the_audiosocket_port_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without its AudioSocket listener avr cannot take a call: not ready, and /health says why."""
    rig = Rig(monkeypatch)
    fired(rig.avr.service.getServiceNamed("audiosocket").stopService())
    assert rig.get("/ready") == (503, {"ready": False, "reasons": [
        {"component": "audiosocket", "reason": "the AudioSocket port is not open"}]})
    assert rig.get("/health")[1]["audiosocket"] == "not listening"


def test_max_calls(monkeypatch: pytest.MonkeyPatch, log_events: list[LogEvent]) -> None:
    """
    MAX_CALLS=2: a third AudioSocket call gets a hang-up frame and a warning, POST /call and /ready answer 503;
    once a call ends, new ones are taken again.
    """
    rig = Rig(monkeypatch, max_calls=2)
    first, _ = rig.dial(U1)
    rig.dial(U2)
    _, transport = rig.dial(U3)
    assert transport.value() == HANGUP_FRAME and rig.avr.calls.get(U3) is None and U3 not in rig.sts.pending
    warnings = [formatEvent(e) for e in log_events if e.get("log_level") is not None
                and e["log_level"].name == "warn"]
    assert f"AudioSocket call {U3} refused: 2 calls are live, the most MAX_CALLS allows" in warnings
    assert rig.post("/call", {"uuid": U3, "payload": {}}) == (503, {
        "error": "call not accepted: 2 calls are live, the most MAX_CALLS allows", "reason": "max_calls"})
    assert rig.get("/ready") == (503, {"ready": False, "reasons": [
        {"component": "calls", "reason": "2 calls are live, the most MAX_CALLS allows"}]})
    assert rig.get("/health")[1]["maxCalls"] == 2
    first.dataReceived(HANGUP_FRAME)
    assert rig.get("/ready")[0] == 200 and rig.post("/call", {"uuid": U3, "payload": {}})[0] == 200
    _, transport = rig.dial(U3)
    assert transport.value() == b"" and rig.avr.calls.get(U3) is not None
    rig.avr.service.stopService()


def test_originate_is_503_while_draining_and_at_max_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """POST /calls (an ARI originate) answers 503 with the reason at MAX_CALLS and while draining, before ARI."""
    rig = Rig(monkeypatch, max_calls=1, ari_url="http://127.0.0.1:8088", ari_username="avr", ari_password="pw",
              ari_app="avr")
    assert rig.avr.control is not None
    rig.avr.control.link.up()
    rig.dial(U1)
    assert rig.post("/calls", {"endpoint": "PJSIP/1001"}) == (503, {
        "error": "1 calls are live, the most MAX_CALLS allows", "reason": "max_calls"})
    stopped = rig.stop()
    assert rig.post("/calls", {"endpoint": "PJSIP/1001"}) == (503, {
        "error": "avr is draining (shutting down): it takes no new calls", "reason": "draining"})
    assert len(rig.avr.registry.active()) == 0
    rig.reactor.advance(30)
    assert stopped.called
