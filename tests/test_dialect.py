"""asterisk-api's event names on /events (avr.control.dialect.AsteriskApiEvents) and its webhook (OpenClawWebhook)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.web.resource import Resource

from avr.control.call_registry import CallRegistry
from avr.control.dialect import AsteriskApiEvents, OpenClawWebhook, asterisk_api_events
from avr.control.records import INBOUND, CallRecord
from avr.control.tasks import TaskGroup
from tests.ari_fakes import FakeSink

STAMP = "2026-01-01T00:00:00.000Z"


def _event(type_: str, data: dict, call_id: str = "c1") -> dict:
    return {"type": type_, "callId": call_id, "timestamp": STAMP, "data": data}


@pytest.mark.parametrize(("event", "expected"), [
    (_event("call.state_changed", {"previousState": "ringing", "state": "answered", "answeredAt": STAMP}),
     [("call.ready", {})]),
    (_event("call.state_changed", {"previousState": "bridged", "state": "answered"}), []),
    (_event("playback.finished", {"playbackId": "p1", "kind": "media", "status": "done"}),
     [("call.playback_finished", {"playbackId": "p1"})]),
    (_event("playback.started", {"playbackId": "p2", "kind": "pcm"}), [("call.playback_stream_started", {})]),
    (_event("playback.finished", {"playbackId": "p2", "kind": "pcm", "status": "done"}),
     [("call.playback_stream_finished", {})]),
    (_event("playback.finished", {"playbackId": "p2", "kind": "pcm", "status": "failed", "error": "dropped"}),
     [("call.playback_stream_error", {"error": "dropped"}), ("call.playback_stream_finished", {})]),
    (_event("recording.finished", {"name": "r1", "format": "wav", "state": "done"}),
     [("call.recording_finished", {"name": "r1"})]),
    (_event("call.dtmf", {"digit": "5"}), []),
])
def test_asterisk_api_events_follow_avrs(event: dict, expected: list) -> None:
    """Each asterisk-api event in its envelope (same callId and timestamp), after the avr event it comes from."""
    assert [(e["type"], e["data"]) for e in asterisk_api_events(event)] == expected
    assert all(e["callId"] == "c1" and e["timestamp"] == STAMP for e in asterisk_api_events(event))
    sink = FakeSink()
    AsteriskApiEvents(sink).publish(event)
    assert sink.events[0] is event and [e["type"] for e in sink.events[1:]] == [t for t, _ in expected]


class Receiver(Resource):
    """A webhook receiver that records the JSON bodies it is sent."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[dict] = []

    def render_POST(self, request: Any) -> bytes:
        self.bodies.append(json.loads(request.content.read()))
        return b"{}"


def test_openclaw_webhook_gets_asterisk_apis_envelope_and_events() -> None:
    """{event, data: the call + the event's fields, timestamp}, only asterisk-api's webhook events, in order."""
    clock, receiver = Clock(), Receiver()
    http = StubTreq(receiver)
    webhook = OpenClawWebhook(http, clock, "http://plugin.test/voice/webhook")
    registry = CallRegistry(clock, AsteriskApiEvents(webhook), TaskGroup(clock))
    webhook.registry = registry
    call = CallRecord("c1", "1767225600.7", INBOUND, 1767225600.0, caller_number="6596542555", callee_number="6100")
    registry.add(call)
    for type_, data in [
        ("call.created", {"direction": "inbound", "state": "ringing"}),
        ("call.state_changed", {"previousState": "ringing", "state": "answered", "answeredAt": STAMP}),
        ("call.dtmf", {"digit": "7"}),
        ("call.transcription", {"text": "partial words", "is_partial": True, "is_final": False}),
        ("call.transcription", {"text": "all done", "is_partial": False, "is_final": True}),
        ("call.speak_finished", {"text": "Hi", "voice": "vivian", "language": "English", "durationSeconds": 0.5}),
        ("playback.finished", {"playbackId": "p1", "kind": "media", "status": "done"}),
        ("call.ended", {"cause": 16}),
    ]:
        registry.publish(type_, data, call)
        http.flush()
    names = [b["event"] for b in receiver.bodies]
    assert names == ["call.inbound", "call.answered", "call.ready", "call.dtmf", "call.transcription",
                     "call.speak_finished", "call.ended"]
    assert all(set(b) == {"event", "data", "timestamp"} for b in receiver.bodies)
    inbound = receiver.bodies[0]["data"]
    assert inbound["id"] == "c1" and inbound["callerNumber"] == "6596542555" and inbound["direction"] == "inbound"
    assert inbound["channelId"] == "1767225600.7"
    assert receiver.bodies[3]["data"]["digit"] == "7"
    assert receiver.bodies[4]["data"]["transcription"] == "all done"
    assert receiver.bodies[5]["data"]["durationSeconds"] == 0.5
