"""
AriClient + AriEventStream + CallControl against the fake Asterisk of `avr.testing.ari`, in memory (StubTreq for
REST, iosim for the events WebSocket, a Clock for time), and once over loopback with the real reactor.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test import iosim
from treq.testing import StubTreq

from avr.ari.client import AriClient
from avr.ari.events import AriEventStream, endpoint_connector
from avr.control.errors import Conflict
from avr.control.records import call_id_for
from avr.control.model import CallControl
from avr.testing.ari import FakeAsterisk
from tests.ari_fakes import FakeInjector, FakeSink
from tests.helpers import fired

BASE = "http://127.0.0.1:8088"


class World:
    """The fake Asterisk and avr's ARI side, all in memory on one Clock."""

    def __init__(self, policy: str = "answer") -> None:
        self.clock = Clock()
        self.fake = FakeAsterisk(self.clock, app="avr")
        self.http = StubTreq(self.fake.resource())
        self.sink = FakeSink()
        self.injector = FakeInjector()
        self.ari = AriClient(self.http, self.clock, BASE, "avr", "avrpass")
        self.control = CallControl(self.ari, self.clock, self.sink, "avr", policy, self.injector,
                                   audiosocket_address="127.0.0.1:5001")
        self.pumps: list[iosim.IOPump] = []
        self.stream = AriEventStream(self.clock, self._connect, BASE, "avr", "avr", "avrpass", self.control,
                                     ping_interval=None, rand=lambda: 0.5)

    def _connect(self, factory: Any) -> Deferred:
        server = self.fake.events_factory().buildProtocol(IPv4Address("TCP", "127.0.0.1", 8088))
        if server is None:
            return fail(ConnectionRefusedError())
        client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.pumps.append(iosim.connect(server, iosim.FakeTransport(server, isServer=True), client,
                                        iosim.FakeTransport(client, isServer=False), greet=False))
        return succeed(client)

    def settle(self) -> None:
        """Move every pending byte and response until nothing changes."""
        for _ in range(50):
            self.http.flush()
            moved = any(p.pump() for p in list(self.pumps))
            self.clock.advance(0)
            if not moved:
                self.http.flush()
                if not any(p.pump() for p in list(self.pumps)):
                    return

    def advance(self, seconds: float) -> None:
        steps = int(round(seconds / 0.05))
        for _ in range(steps):
            self.clock.advance(0.05)
            self.settle()

    def run(self, coroutine: Any) -> Any:
        d = Deferred.fromCoroutine(coroutine)
        self.settle()
        return fired(d, "operation still waiting")

    def launch(self, coroutine: Any) -> list[Any]:
        """Start an operation that will wait; the returned list receives its outcome."""
        out: list[Any] = []
        Deferred.fromCoroutine(coroutine).addBoth(out.append)
        return out

    def start(self) -> None:
        self.stream.start()
        self.settle()
        assert self.stream.state == "connected" and self.control.status()["ari"] == "connected"

    def hang_up(self, *call_ids: str) -> None:
        """End calls through the model (``DELETE /channels/{id}``), as a client ending them would."""
        for call_id in call_ids:
            self.run(self.control.hangup(call_id))
        self.settle()

    def close(self) -> None:
        """Check that every call was cleaned up (no channel or bridge left in the fake), then stop everything."""
        self.settle()
        self.fake.assert_no_leftovers()
        self.stream.stop()
        self.settle()
        self.clock.advance(5)
        self.settle()
        self.control.stop()
        self.fake.close()


def test_outbound_call_lifecycle() -> None:
    """Originate → ringing → answered → API hangup: events in order, call.ended once with cause 16, nothing left."""
    w = World()
    w.fake.add_endpoint("1001", answer="auto", delay=1.0)
    w.start()
    call = w.run(w.control.originate("PJSIP/1001", caller_id="avr <2000>"))
    w.advance(1.5)
    assert w.run(w.control.get_call(call["id"]))["state"] == "answered"
    w.run(w.control.hangup(call["id"]))
    w.settle()
    assert w.sink.types(call["id"]) == ["call.created", "call.state_changed", "call.state_changed", "call.ended"]
    assert [e["data"]["state"] for e in w.sink.of("call.state_changed")] == ["ringing", "answered"]
    assert w.sink.of("call.ended")[0]["data"]["cause"] == 16
    assert w.fake.channels == {}
    w.close()


def test_inbound_call_play_and_far_end_hangup() -> None:
    """Inbound call answered by policy, a sound played to the end, the caller hangs up."""
    w = World("answer")
    w.start()
    cid = w.fake.inbound_call("3000", "6000")
    w.settle()
    assert w.run(w.control.get_call(cid))["state"] == "answered"
    playback = w.run(w.control.play(cid, ["sound:hello-world"]))
    w.advance(2.0)
    finished = w.sink.of("playback.finished")
    assert finished and finished[0]["data"] == {"playbackId": playback["playbackId"], "kind": "media",
                                                "status": "done"}
    w.fake.remote_hangup(cid, 17)
    w.settle()
    ended = w.sink.of("call.ended")
    assert len(ended) == 1 and ended[0]["data"]["cause"] == 17
    w.close()


def test_bridge_two_calls_then_destroy() -> None:
    """Two inbound calls bridged through the API, then the bridge destroyed: both answered again."""
    w = World("answer")
    w.start()
    a = w.fake.inbound_call("3000", "6000")
    b = w.fake.inbound_call("3001", "6000")
    w.settle()
    bridge = w.run(w.control.create_bridge("conf"))
    w.run(w.control.add_to_bridge(bridge["id"], a))
    w.run(w.control.add_to_bridge(bridge["id"], b))
    assert {c.id for c in w.fake.bridges[bridge["id"]].channels} == {a, b}
    assert [w.run(w.control.get_call(c))["state"] for c in (a, b)] == ["bridged", "bridged"]
    w.run(w.control.destroy_bridge(bridge["id"]))
    w.settle()
    assert w.sink.types().count("bridge.destroyed") == 1
    assert [w.run(w.control.get_call(c))["state"] for c in (a, b)] == ["answered", "answered"]
    w.hang_up(a, b)
    w.close()


def test_transfer_to_a_busy_endpoint_keeps_the_call() -> None:
    """Transfer to a busy endpoint: 409, the caller's call stays answered, no bridge or extra channel left."""
    w = World("answer")
    w.fake.add_endpoint("1002", answer="busy", delay=0.5)
    w.start()
    cid = w.fake.inbound_call("3000", "6000")
    w.settle()
    out = w.launch(w.control.transfer(cid, "PJSIP/1002"))
    w.advance(1.0)
    assert out and isinstance(out[0], Failure) and out[0].check(Conflict)
    assert w.run(w.control.get_call(cid))["state"] == "answered"
    assert set(w.fake.channels) == {cid} and w.fake.bridges == {}
    w.hang_up(cid)
    w.close()


def test_transfer_success() -> None:
    """Transfer to an answering endpoint: both calls bridged in Asterisk and in the model."""
    w = World("answer")
    w.fake.add_endpoint("1003", answer="auto", delay=0.5)
    w.start()
    cid = w.fake.inbound_call("3000", "6000")
    w.settle()
    out = w.launch(w.control.transfer(cid, "PJSIP/1003"))
    w.advance(1.0)
    result = out[0]
    target = w.run(w.control.get_call(result["newCallId"]))["channelId"]
    assert {c.id for c in w.fake.bridges[result["bridgeId"]].channels} == {cid, target}
    assert w.run(w.control.get_call(result["newCallId"]))["state"] == "bridged"
    w.hang_up(cid)
    assert w.fake.bridges == {}  # the transfer bridge goes with the first party that leaves
    assert w.run(w.control.get_call(result["newCallId"]))["state"] == "answered"
    w.hang_up(target)
    w.close()


def test_asterisk_restart_resyncs() -> None:
    """core restart now: the socket drops, reconnects through refused/404, and the lost call is ended once."""
    w = World("answer")
    w.start()
    cid = w.fake.inbound_call("3000", "6000")
    w.settle()
    w.fake.restart()
    w.advance(6.0)
    assert w.stream.state == "connected" and w.control.status()["ari"] == "connected"
    ended = w.sink.of("call.ended")
    assert len(ended) == 1 and ended[0]["callId"] == call_id_for(cid) and ended[0]["channelId"] == cid
    assert w.control.status()["activeCalls"] == 0
    w.close()


def test_play_pcm_sets_up_external_media_and_cleans_up() -> None:
    """Uploaded audio: externalMedia channel in Stasis, temporary bridge in Asterisk, both gone afterwards."""
    w = World("answer")
    w.start()
    cid = w.fake.inbound_call("3000", "6000")
    w.settle()
    playback = w.run(w.control.play_pcm(cid, b"\x00\x01" * 1600, 16000))
    media = f"avr-media-{playback['playbackId']}"
    assert media in w.fake.channels and f"avr-tmp-{playback['playbackId']}" in w.fake.bridges
    w.injector.expected[playback["playbackId"]][2].callback(None)
    w.settle()
    assert media not in w.fake.channels and w.fake.bridges == {}
    assert w.run(w.control.get_call(cid))["state"] == "answered"
    w.hang_up(cid)
    w.close()


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_loopback_inbound_call() -> None:
    """Over real loopback sockets: connect, an inbound call is answered, the caller hangs up."""
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool

    fake = FakeAsterisk(reactor, app="avr")
    port = fake.listen(reactor)
    base = f"http://127.0.0.1:{port.getHost().port}"
    pool = HTTPConnectionPool(reactor, persistent=True)
    http = HTTPClient(Agent(reactor, pool=pool))
    sink = FakeSink()
    control = CallControl(AriClient(http, reactor, base, "avr", "avrpass"), reactor, sink, "avr", "answer")
    stream = AriEventStream(reactor, endpoint_connector(reactor), base, "avr", "avr", "avrpass", control,
                            ping_interval=None)
    try:
        stream.start()
        await _until(reactor, lambda: control.status()["ari"] == "connected")
        cid = fake.inbound_call("3000", "6000")
        await _until(reactor, lambda: any(e["type"] == "call.state_changed" for e in sink.events))
        assert (await control.get_call(cid))["state"] == "answered"
        fake.remote_hangup(cid)
        await _until(reactor, lambda: any(e["type"] == "call.ended" for e in sink.events))
        await fake.settle_leftovers()
    finally:
        await stream.stop()
        await control.stop()
        await pool.closeCachedConnections()
        await fake.close()


async def _until(reactor: Any, condition: Any, limit: float = 5.0) -> None:
    from twisted.internet.task import deferLater

    waited = 0.0
    while not condition():
        assert waited < limit, "condition not met in time"
        await deferLater(reactor, 0.01, lambda: None)
        waited += 0.01
