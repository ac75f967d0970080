"""
Tests for avr.control.call_observer: dialplan AudioSocket calls in the one call registry (GET /calls, /events),
next to the ARI calls, with ARI or without.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from avr.admissions import Admissions
from avr.calls import CallManager
from avr.control.call_observer import RegistryObserver
from avr.control.call_registry import CallRegistry
from avr.control.errors import Conflict, NotFound
from avr.control.records import call_id_for
from avr.control.tasks import TaskGroup
from avr.interfaces import ICallObserver
from avr.playout import FrameTicker
from avr.registrations import Registrations
from fakes import FakeLeg, FakeStsConnector
from tests.ari_fakes import FakeSink, answered_inbound, make

U1 = "935652e3-7c59-4edc-b17f-9646a9c2a265"
U2 = "0f6b2d9e-1111-4c1c-9d3e-5a2f7b9c0d11"
PAYLOAD = {"from": "2000", "to": "5001", "uniqueid": "1770758888.32", "channel": "PJSIP/2000-00000013"}


class World:
    """A CallManager whose calls go to a `RegistryObserver` on a registry (its own, or call control's)."""

    def __init__(self, registry: CallRegistry | None = None, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.clock.advance(1_800_000_000)
        self.sink = FakeSink()
        self.registry = registry or CallRegistry(self.clock, self.sink, TaskGroup(self.clock))
        self.sts = FakeStsConnector()
        self.admissions = Admissions(self.clock)
        self.manager = CallManager(
            clock=self.clock, connector=self.sts, observer=RegistryObserver(self.registry, self.clock),
            ticker=FrameTicker(self.clock), admissions=self.admissions, sts_url="ws://sts.example:6030/?key=hush",
        )
        self.registrations = Registrations(self.admissions, 60, self.manager.start_call)

    def connect(self, uuid: str = U1, payload: dict | None = None) -> tuple[FakeLeg, Any]:
        if payload is not None:
            self.registrations.register(uuid, payload, f"wss://agent.example/v1?token=s3cret&from={uuid}", False)
        leg = FakeLeg(uuid, self.clock)
        return leg, self.manager.attach(leg)


def test_the_observer_is_a_call_observer() -> None:
    verifyObject(ICallObserver, RegistryObserver(World().registry, Clock()))


def test_an_audiosocket_call_is_listed_with_its_facts_and_no_secret() -> None:
    """call.created carries the call as GET /calls shows it: kind, UUID, redacted STS URL, channel, then rate/codec."""
    world = World()
    _, call = world.connect(payload=PAYLOAD)
    [created] = world.sink.events
    expected = {
        "id": U1, "callId": U1, "kind": "audiosocket", "uuid": U1, "state": "answered",
        "stsUrl": f"wss://agent.example/v1?token=***&from={U1}", "sampleRate": None, "codec": None,
        "channelId": "1770758888.32", "channelName": "PJSIP/2000-00000013",
        "callerNumber": "2000", "calleeNumber": "5001", "linkedCallId": None,
        "createdAt": "2027-01-15T08:00:00.000Z", "endedAt": None, "endReason": None,
    }
    assert created == {"type": "call.created", "callId": U1, "timestamp": "2027-01-15T08:00:00.000Z",
                       "data": expected}
    assert world.registry.listing() == [expected]
    call.caller_audio(0x12, bytes(640))
    assert world.registry.describe(U1) | {"sampleRate": 16000, "codec": "slin"} == world.registry.describe(U1)
    assert "s3cret" not in repr(world.registry.listing()) and "hush" not in repr(world.registry.listing())


def test_a_call_without_post_call_has_no_channel() -> None:
    """An unregistered connection (STS_URL) is listed too, with no channel and the default URL redacted."""
    world = World()
    world.connect()
    [call] = world.registry.listing()
    assert call["stsUrl"] == "ws://sts.example:6030/?key=***"
    assert call["channelId"] is None and call["channelName"] is None
    assert call["callerNumber"] is None and call["calleeNumber"] is None


def test_agent_events_then_ended_and_retained() -> None:
    """DTMF, transcripts and interruptions are published under the UUID; the end once; readable for 300 s."""
    world = World()
    _, call = world.connect()
    world.sts.open(U1)
    call.caller_dtmf("7")
    call.sts_transcript("user", "I need help")
    call.sts_interruption()
    world.clock.advance(12.5)
    call.caller_gone("hang-up frame")
    call.caller_gone("again")
    assert [(e["type"], e["callId"], e["data"]) for e in world.sink.events[1:]] == [
        ("call.dtmf", U1, {"digit": "7"}),
        ("call.transcript", U1, {"role": "user", "text": "I need help"}),
        ("call.interruption", U1, {}),
        ("call.ended", U1, {"previousState": "answered", "cause": None, "causeText": None,
                            "endedAt": "2027-01-15T08:00:12.500Z", "reason": "Asterisk: hang-up frame"}),
    ]
    assert world.registry.listing() == []
    ended = world.registry.describe(U1)
    assert ended["state"] == "ended" and ended["endReason"] == "Asterisk: hang-up frame"
    world.clock.advance(300)
    with pytest.raises(NotFound):
        world.registry.describe(U1)
    assert world.clock.getDelayedCalls() == []


def test_a_uuid_used_again_after_the_end_is_a_new_call() -> None:
    """Asterisk reusing a UUID after its call ended replaces the retained record; one retention timer remains."""
    world = World()
    _, call = world.connect()
    call.caller_gone("hang-up frame")
    _, again = world.connect()
    assert world.registry.describe(U1)["state"] == "answered"
    again.caller_gone("hang-up frame")
    assert [e["type"] for e in world.sink.events] == ["call.created", "call.ended"] * 2
    assert len(world.clock.getDelayedCalls()) == 1


def test_stop_leaves_no_timer_and_retains_nothing_after() -> None:
    """At shutdown the retention timers go; a call ending after that starts none."""
    world = World()
    _, first = world.connect(U1)
    _, second = world.connect(U2)
    first.caller_gone("hang-up frame")
    world.registry.stop()
    second.caller_gone("server shutting down")
    assert world.clock.getDelayedCalls() == []
    assert world.sink.of("call.ended")[-1]["callId"] == U2


def test_linked_with_the_ari_call_of_its_channel() -> None:
    """When call control knows the channel named in the /call payload, both records point at each other."""
    h = make()
    channel_id = answered_inbound(h)
    world = World(h.control.registry, h.clock)
    world.connect(payload={**PAYLOAD, "uniqueid": channel_id})
    assert world.registry.describe(U1)["linkedCallId"] == call_id_for(channel_id)
    assert h.run(h.control.get_call(channel_id))["linkedCallId"] == U1
    assert {c["id"]: c["kind"] for c in h.run(h.control.list_calls())} == {call_id_for(channel_id): "ari",
                                                                            U1: "audiosocket"}


def test_call_control_never_acts_on_an_audiosocket_call() -> None:
    """ARI operations on an AudioSocket call are refused (409); a resync with no channels leaves it alone."""
    h = make()
    world = World(h.control.registry, h.clock)
    world.connect()
    with pytest.raises(Conflict, match="kind audiosocket"):
        h.run(h.control.hangup(U1))
    with pytest.raises(Conflict, match="not in the Stasis application"):
        h.run(h.control.play(U1, ["sound:beep"]))
    h.control.ari_disconnected("restart")
    h.control.ari_connected()  # GET /channels answers []
    assert h.sink.of("call.ended") == [] and h.control.status()["activeCalls"] == 0
    assert [c["id"] for c in h.control.snapshot()["calls"]] == [U1]
    assert h.ari.find("DELETE") == []
