"""
What asterisk-api's clients (the OpenClaw voice-call plugin first) rely on, as avr answers it: unknown request fields
accepted and reported, ``maxDuration``, the originate reply with ``callId``, asterisk-api's status codes (403 from the
allowlist, 408 for a transfer target that never answered).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from avr.allowlist import Allowlist
from avr.control import errors
from avr.control.records import call_id_for
from tests.ari_fakes import make, stasis_start
from tests.test_control_routes import Api, FakeControl


def test_unknown_fields_are_accepted_and_reported() -> None:
    """asterisk-api ignores fields it does not know; avr too, and names them in X-AVR-Ignored-Fields."""
    api = Api(FakeControl())
    status, payload, response = api.request("POST", "/calls", {"endpoint": "PJSIP/1001", "app": "x", "foo": 1})
    assert status == 201
    assert response.headers.getRawHeaders(b"x-avr-ignored-fields") == [b"app, foo"]
    status, _, response = api.request("POST", "/calls", {"endpoint": "PJSIP/1001"})
    assert status == 201 and response.headers.getRawHeaders(b"x-avr-ignored-fields") is None


def test_originate_reply_has_call_and_call_id() -> None:
    """asterisk-api answers {call: {id}}; the plugin reads result.callId: both are there, the same id."""
    status, payload, _ = Api(FakeControl()).request("POST", "/calls", {"endpoint": "PJSIP/1001", "callerId": "42"})
    assert status == 201 and payload["callId"] == payload["call"]["id"]


def test_record_takes_the_plugins_max_duration() -> None:
    """startRecording({format, maxDuration, beep}) from the plugin: maxDuration is maxDurationSeconds."""
    api = Api(FakeControl())
    status, _, _ = api.request("POST", "/calls/1700000000.1/record", {"format": "wav", "maxDuration": 60, "beep": True})
    assert status == 201
    assert api.control.calls[-1][2]["max_duration"] == 60  # type: ignore[union-attr]
    status, payload, _ = api.request("POST", "/calls/1700000000.1/record", {"maxDuration": 60,
                                                                             "maxDurationSeconds": 30})
    assert status == 400 and "given as maxDurationSeconds and maxDuration with different values" in payload["error"]
    status, payload, _ = api.request("POST", "/calls/1700000000.1/record", {"maxDuration": 0})
    assert status == 400 and "maxDuration: must be between 1 and 7200" in payload["error"]


@pytest.mark.parametrize(("error", "status"), [
    (errors.Forbidden("Outbound call blocked by allowlist", endpoint="PJSIP/1", extractedNumber="1"), 403),
    (errors.NotAnswered("Transfer target PJSIP/1002 did not answer within 30 s"), 408),
])
def test_asterisk_api_status_codes(error: Exception, status: int) -> None:
    """The statuses asterisk-api's clients branch on."""
    control = FakeControl()
    control.failures["originate"] = error
    code, payload, _ = Api(control).request("POST", "/calls", {"endpoint": "PJSIP/1"})
    assert code == status and payload["error"] == error.message  # type: ignore[attr-defined]


def _allowlist(tmp_path: Path, inbound: list[str], outbound: list[str]) -> Allowlist:
    path = tmp_path / "allowlist.json"
    path.write_text(json.dumps({"inbound": inbound, "outbound": outbound}))
    allowlist = Allowlist(str(path), Clock())
    allowlist.start()
    return allowlist


def test_outbound_blocked_by_the_allowlist_is_403_with_asterisk_apis_body(tmp_path: Path) -> None:
    """An endpoint whose number is not listed: 403 before Asterisk is asked, with the number found in it."""
    h = make(allowlist=_allowlist(tmp_path, [], ["6596542555"]))
    with pytest.raises(errors.Forbidden) as e:
        h.run(h.control.originate("PJSIP/6591110000@trunk"))
    assert e.value.status == 403 and e.value.message == "Outbound call blocked by allowlist"
    assert e.value.extra == {"endpoint": "PJSIP/6591110000@trunk", "extractedNumber": "6591110000",
                             "hint": "Add the destination number to allowlist.json outbound array"}
    with pytest.raises(errors.Forbidden) as e:
        h.run(h.control.originate("PJSIP/alice"))
    assert e.value.extra["extractedNumber"] == "(could not extract)"
    assert h.ari.requests == []
    h.run(h.control.originate("PJSIP/6596542555@trunk"))
    assert h.ari.find("POST", "/channels")


def test_transfer_to_a_number_not_allowed_is_403(tmp_path: Path) -> None:
    """asterisk-api never checked transfer targets (D15): avr does, before ringing anyone."""
    h = make(allowlist=_allowlist(tmp_path, [], ["6596542555"]))
    h.feed(stasis_start("in-1", "Up"))
    h.ari.requests.clear()
    with pytest.raises(errors.Forbidden):
        h.run(h.control.transfer("in-1", "PJSIP/1002"))
    assert h.ari.requests == []


def test_inbound_caller_not_allowed_is_hung_up_without_a_trace(tmp_path: Path) -> None:
    """A caller not listed (or without a number): hung up, no record, no event; a listed caller is a call."""
    h = make(allowlist=_allowlist(tmp_path, ["6596542555"], []))
    h.feed(stasis_start("in-1", "Ring", number="6591110000"))
    h.feed(stasis_start("in-2", "Ring", number=""))
    assert [(r.method, r.path) for r in h.ari.requests] == [("DELETE", "/channels/in-1"), ("DELETE", "/channels/in-2")]
    assert h.sink.events == [] and h.run(h.control.list_calls()) == []
    h.feed(stasis_start("in-3", "Ring", number="+65 9654 2555"))
    assert h.sink.types(call_id_for("in-3")) == ["call.created", "call.state_changed"]


def test_media_channels_bypass_the_allowlist(tmp_path: Path) -> None:
    """avr's own channels (media legs have no caller id) are never taken for blocked callers (asterisk-api #18):
    a leg avr is setting up enters the app untouched."""
    h = make(allowlist=_allowlist(tmp_path, ["6596542555"], []))
    h.feed(stasis_start("in-1", "Up", number="6596542555"))
    leg = h.control.legs.open(h.control.registry.require("in-1"), "slin16", "a test", lambda leg: None)
    h.ari.requests.clear()
    h.feed(stasis_start(leg.channel_id, "Up", number=""))
    assert h.ari.requests == [] and h.control.legs.owns_channel(leg.channel_id)


@pytest.mark.parametrize(("body", "detail"), [
    ({}, "text: required"),
    ({"text": "  "}, "text: text is required"),
    ({"text": "x" * 5001}, "text must be 5000 characters or fewer"),
    ({"text": "hi", "speed": 0.2}, "speed: must be between 0.25 and 4"),
    ({"text": "hi", "speed": 4.1}, "speed: must be between 0.25 and 4"),
    ({"text": "hi", "speed": "fast"}, "speed: must be a number"),
])
def test_speak_validation_as_asterisk_api(body: dict, detail: str) -> None:
    """asterisk-api's limits on /speak: text 1-5000 characters, speed 0.25-4.0."""
    api = Api(FakeControl(), max_body=64 * 1024)
    status, payload, _ = api.request("POST", "/calls/1700000000.1/speak", body)
    assert status == 400 and any(detail in d for d in payload["details"]), payload
    assert api.control.calls == []  # type: ignore[union-attr]


def test_speak_route_answers_the_models_result() -> None:
    """200 with status, text, voice, language, durationSeconds; the request's options are passed on."""
    api = Api(FakeControl())
    status, payload, _ = api.request("POST", "/calls/1700000000.1/speak", {"text": "Hello", "voice": "ryan",
                                                                             "speed": 1.25})
    assert status == 200 and payload["status"] == "ok" and payload["voice"] == "ryan"
    assert api.control.calls[-1] == ("speak", ("1700000000.1", "Hello"),  # type: ignore[union-attr]
                                     {"voice": "ryan", "language": None, "speed": 1.25})
