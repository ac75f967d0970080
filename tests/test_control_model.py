"""The call-control model: call state machine, inbound policies, hangups, DTMF, retention and resync."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from avr.ari.errors import AriError, AriUnavailable
from avr.control.errors import Conflict, Invalid, NotFound, Unavailable
from avr.control.model import CallControl
from avr.control.records import call_id_for
from avr.interfaces import IAriClient, IAriEventListener, IAudioInjector, ICallControl, IEventSink
from tests.ari_fakes import (
    FakeAri,
    FakeInjector,
    FakeSink,
    ari_404,
    ari_bridge,
    channel,
    destroyed,
    dtmf,
    fixture_events,
    fixture_response,
    hangup_request,
    make,
    answered_inbound,
    stasis_end,
    stasis_start,
    state_change,
)
from twisted.internet.task import Clock


def test_interfaces() -> None:
    """CallControl and the fakes provide the interfaces they claim."""
    h = make()
    verifyObject(ICallControl, h.control)
    verifyObject(IAriEventListener, h.control)
    verifyObject(IAriClient, FakeAri())
    verifyObject(IEventSink, FakeSink())
    verifyObject(IAudioInjector, FakeInjector())


def test_bad_inbound_policy_is_refused() -> None:
    """An unknown inbound policy is a programming error caught at construction."""
    with pytest.raises(ValueError, match="inbound_policy"):
        CallControl(None, Clock(), FakeSink(), "avr", "maybe")


def test_not_configured() -> None:
    """Without ARI every operation answers 503 and the status says so."""
    control = CallControl(None, Clock(), FakeSink(), "avr")
    assert control.status()["ari"] == "not configured"
    d = Deferred.fromCoroutine(control.originate("PJSIP/1001"))
    failure = []
    d.addErrback(failure.append)
    assert failure[0].check(Unavailable)
    assert "not configured" in failure[0].value.message


# -- outbound -----------------------------------------------------------------------------------------------------

def test_originate_answer_hangup_from_capture() -> None:
    """A captured originate → answer → API hangup gives created, dialing→answered, and one call.ended (16)."""
    cid = "1795262390.324"
    events = fixture_events("hangup", cid)
    h = make(ids=[cid])
    h.ari.on("POST", "/channels", fixture_response("hangup", "POST", "/ari/channels?endpoint=Local/6100")
             ["response_body"])
    call = h.run(h.control.originate("Local/6100@cap-ari", caller_id="AVR <2000>", timeout=20))
    assert call["id"] == call_id_for(cid) and call["channelId"] == cid  # the call id is known before Asterisk acts
    assert call["state"] == "dialing" and call["direction"] == "outbound"
    assert call["callerNumber"] == "2000" and call["calleeNumber"] == "Local/6100@cap-ari"
    req = h.ari.find("POST", "/channels")[0]
    assert req.params == {"endpoint": "Local/6100@cap-ari", "app": "avr", "channelId": cid, "timeout": 20,
                          "callerId": "AVR <2000>"}
    assert req.body is None
    start = next(i for i, e in enumerate(events) if e["type"] == "StasisStart")
    h.feed(*events[:start + 1])
    assert h.control.snapshot()["calls"][0]["state"] == "answered"
    h.run(h.control.hangup(cid))
    assert h.ari.find("DELETE")[0].params == {"reason": "normal"}
    h.feed(*events[start + 1:])
    assert h.sink.types(call["id"]) == ["call.created", "call.state_changed", "call.ended"]
    assert {e["channelId"] for e in h.sink.events} == {cid}
    changed, ended = h.sink.of("call.state_changed")[0], h.sink.of("call.ended")[0]
    assert (changed["data"]["previousState"], changed["data"]["state"]) == ("dialing", "answered")
    assert changed["data"]["answeredAt"].endswith("Z")
    assert ended["data"]["cause"] == 16 and ended["data"]["causeText"] == "Normal Clearing"
    assert ended["data"]["hangupReason"] == "normal"
    assert h.run(h.control.get_call(cid))["state"] == "ended"
    assert h.run(h.control.list_calls()) == []


def test_hangup_reason_busy_reports_q850_from_channel_destroyed() -> None:
    """The soft cause 32 of an ARI hangup is a flag: the Q.850 cause comes from ChannelDestroyed (busy → 17)."""
    cid = "1795262390.326"
    events = fixture_events("hangup", cid)
    h = make(ids=[cid])
    h.run(h.control.originate("Local/6100@cap-ari"))
    h.feed(*events)
    ended = h.sink.of("call.ended")
    assert len(ended) == 1 and ended[0]["data"]["cause"] == 17 and ended[0]["data"]["causeText"] == "User busy"


def test_events_before_originate_response_are_held_then_published_in_order() -> None:
    """Busy target: every event precedes Asterisk's 200; they are matched, held, and follow call.created."""
    cid = "avr-fixture-busy"
    events = fixture_events("originate_no_answer_busy_bad_target", cid)
    h = make(ids=[cid])
    h.ari.on("POST", "/channels", hold=True)
    d, outcome = h.start(h.control.originate("Local/6107@cap-ari"))
    h.feed(*events)
    assert h.sink.events == [] and h.run(h.control.list_calls()) == []
    h.ari.release()
    assert outcome[0]["id"] == call_id_for(cid)
    assert h.sink.types(call_id_for(cid)) == ["call.created", "call.ended"]
    ended = h.sink.of("call.ended")[0]["data"]
    assert ended["dialStatus"] == "BUSY" and ended["cause"] == 17 and ended["causeText"] == "User busy"
    assert ended["previousState"] == "dialing"


def test_no_answer_rings_then_ends_with_cause_19() -> None:
    """A target that rings until the originate timeout: dialing → ringing once, then ended with cause 19."""
    cid = "avr-fixture-noanswer"
    events = fixture_events("originate_no_answer_busy_bad_target", cid)
    h = make(ids=[cid])
    h.run(h.control.originate("Local/6105@cap-ari", timeout=3))
    h.feed(*events)
    assert h.sink.types(call_id_for(cid)) == ["call.created", "call.state_changed", "call.ended"]
    assert h.sink.of("call.state_changed")[0]["data"]["state"] == "ringing"
    assert h.sink.of("call.ended")[0]["data"]["cause"] == 19


def test_originate_refused_by_asterisk_leaves_nothing() -> None:
    """Unknown technology (500 Allocation failed): the error is raised, no call and no event remain."""
    h = make()
    h.ari.on("POST", "/channels", AriError(500, "Allocation failed"))
    with pytest.raises(AriError) as e:
        h.run(h.control.originate("Bogus/1234"))
    assert e.value.status == 500 and e.value.message == "Allocation failed"
    assert h.sink.events == [] and h.run(h.control.list_calls()) == []


def test_originate_timeout_hangs_up_the_channel_if_it_appears() -> None:
    """An originate that timed out may still have created the channel: it is hung up and never becomes a call."""
    h = make(ids=["lost-1"])
    h.ari.on("POST", "/channels", AriUnavailable("ARI request POST /channels timed out after 10 s"), once=True)
    with pytest.raises(AriUnavailable):
        h.run(h.control.originate("PJSIP/1001"))
    assert h.ari.find("DELETE", "/channels/lost-1")
    h.ari.requests.clear()
    h.feed(stasis_start("lost-1"))
    assert h.ari.find("DELETE", "/channels/lost-1") and h.sink.events == []


@pytest.mark.parametrize("kwargs", [
    {"endpoint": "PJSIP/1", "context": "x"}, {"endpoint": "PJSIP/1", "extension": "100"},
    {"endpoint": "PJSIP/1", "priority": 2},
])
def test_originate_validation(kwargs: dict) -> None:
    """A dialplan target without both context and extension is refused (422) before Asterisk is asked. (The wire
    limits of the arguments are the routes' to check: see test_control_routes.test_bad_bodies_are_400_with_details.)
    """
    h = make()
    with pytest.raises(Invalid):
        h.run(h.control.originate(**kwargs))
    assert h.ari.requests == []


def test_originate_needs_the_events_socket() -> None:
    """While the events socket is down an originate would be hung up by Asterisk at once: 503 instead."""
    h = make()
    h.control.ari_disconnected("connection lost")
    assert h.control.status()["ari"] == "disconnected"
    assert h.control.status()["ariReason"] == "connection lost"
    with pytest.raises(Unavailable):
        h.run(h.control.originate("PJSIP/1001"))


def test_originate_variables_go_in_the_json_body() -> None:
    """Channel variables are sent as {"variables": {...}} in the body (D5)."""
    h = make()
    h.run(h.control.originate("PJSIP/1001", variables={"FOO": "bar", "CALLERID(name)": "x"}))
    assert h.ari.find("POST", "/channels")[0].body == {"variables": {"FOO": "bar", "CALLERID(name)": "x"}}


def test_originate_to_the_dialplan_is_continued_and_tracked_until_destroyed() -> None:
    """With context/extension the answered call is continued there, stays tracked, and ends on ChannelDestroyed."""
    h = make(ids=["c1"])
    h.run(h.control.originate("PJSIP/1001", context="from-internal", extension="200"))
    h.feed(state_change("c1", "Up"), stasis_start("c1"))
    assert h.ari.find("POST", "/channels/c1/continue")[0].params == {
        "context": "from-internal", "extension": "200", "priority": 1}
    h.feed(stasis_end("c1"))
    call = h.run(h.control.get_call("c1"))
    assert call["state"] == "answered" and call["inStasis"] is False
    with pytest.raises(Conflict, match="dialplan"):
        h.run(h.control.play("c1", ["sound:beep"]))
    h.feed(hangup_request("c1", 16), destroyed("c1", 16))
    assert h.sink.types(call_id_for("c1")) == ["call.created", "call.state_changed", "call.ended"]


def test_failed_hand_off_hangs_up() -> None:
    """If Asterisk refuses the continue, the call is hung up rather than left in the app."""
    h = make(ids=["c1"])
    h.ari.on("POST", "/channels/c1/continue", AriError(404, "Channel not found"))
    h.run(h.control.originate("PJSIP/1001", context="x", extension="1", priority=3))
    h.feed(stasis_start("c1"))
    assert h.ari.find("DELETE", "/channels/c1")


# -- inbound ------------------------------------------------------------------------------------------------------

def test_inbound_answer_policy_from_capture() -> None:
    """An unanswered inbound channel (state Ring) is created ringing, answered, and goes answered exactly once."""
    cid = "avr-fixture-chan-1-far"
    events = fixture_events("originate_local_channel", cid)
    h = make("answer")
    h.feed(events[0])
    created = h.sink.of("call.created")[0]["data"]
    assert created["state"] == "ringing" and created["direction"] == "inbound"
    assert created["callerNumber"] == "3000" and created["calleeNumber"] == "6102"
    assert created["args"] == ["inbound", "6102"]
    assert [r.path for r in h.ari.find("POST")] == [f"/channels/{cid}/answer"]
    h.feed(state_change(cid, "Up"))
    assert [e["data"]["state"] for e in h.sink.of("call.state_changed")] == ["answered"]


def test_inbound_answer_without_the_event_still_answers_once() -> None:
    """If the answer's 204 comes before the ChannelStateChange, the 204 marks the call answered; the event that
    follows changes nothing (answered exactly once, D2/#20)."""
    h = make("answer")
    h.feed(stasis_start("in-1", "Ring"))
    assert h.run(h.control.get_call("in-1"))["state"] == "answered"
    h.feed(state_change("in-1", "Up"))
    assert len(h.sink.of("call.state_changed")) == 1


def test_inbound_ring_policy_then_api_answer() -> None:
    """Policy ring: ring indication, no answer; POST answer answers it; answering again is a no-op."""
    h = make("ring")
    h.feed(stasis_start("in-1", "Ring"))
    assert [r.path for r in h.ari.find("POST")] == ["/channels/in-1/ring"]
    assert h.run(h.control.get_call("in-1"))["state"] == "ringing"
    call = h.run(h.control.answer("in-1"))
    assert call["state"] == "answered" and h.ari.find("POST", "/channels/in-1/answer")
    h.ari.requests.clear()
    assert h.run(h.control.answer("in-1"))["state"] == "answered" and h.ari.requests == []
    assert len(h.sink.of("call.state_changed")) == 1


def test_inbound_none_policy_only_tracks() -> None:
    """Policy none: the call is tracked and nothing is sent to Asterisk."""
    h = make("none")
    h.feed(stasis_start("in-1", "Ring"))
    assert h.ari.requests == [] and h.sink.types() == ["call.created"]


def test_inbound_already_up_is_created_answered() -> None:
    """A channel answered by the dialplan before Stasis arrives answered; nothing to answer."""
    h = make("answer")
    h.feed(stasis_start("in-1", "Up"))
    assert h.sink.of("call.created")[0]["data"]["state"] == "answered" and h.ari.requests == []


def test_answer_refusals() -> None:
    """answer: unknown → 404, outbound → 409, ended → 409."""
    h = make(ids=["out-1"])
    with pytest.raises(NotFound):
        h.run(h.control.answer("nope"))
    h.run(h.control.originate("PJSIP/1"))
    with pytest.raises(Conflict, match="outbound"):
        h.run(h.control.answer("out-1"))
    h.feed(destroyed("out-1", 19, "User alerting, no answer"))
    with pytest.raises(Conflict, match="ended"):
        h.run(h.control.answer("out-1"))


def test_auto_answer_failure_is_logged_not_raised() -> None:
    """A caller who hung up before the auto-answer: the 404 is only logged, the call ends from its events."""
    h = make("answer")
    h.ari.on("POST", "/channels/in-1/answer", ari_404())
    h.feed(stasis_start("in-1", "Ring"), hangup_request("in-1", 16), stasis_end("in-1"))
    assert h.sink.types(call_id_for("in-1")) == ["call.created", "call.ended"]


def test_inbound_channel_back_in_the_app_is_a_new_call() -> None:
    """A channel that left the app (call ended) and enters it again is tracked as a new inbound call, with an id of
    its own; the channel id names the newest call, the ended one stays readable by its id until its retention is
    over (which leaves the new call's channel index alone)."""
    h = make("none")
    cid = answered_inbound(h)
    first = call_id_for(cid)
    h.feed(stasis_end(cid))
    h.feed(stasis_start(cid, "Up"))
    second = h.sink.of("call.created")[0]["callId"]
    assert second == call_id_for(cid, first) and second not in (first, cid)
    assert h.sink.types(first) == ["call.ended"] and h.sink.types(second) == ["call.created"]
    assert h.run(h.control.get_call(cid))["id"] == second
    assert h.run(h.control.get_call(first))["state"] == "ended"
    h.clock.advance(300)
    with pytest.raises(NotFound):
        h.run(h.control.get_call(first))
    assert h.run(h.control.get_call(cid))["state"] == "answered"
    h.feed(dtmf(cid, "5"))
    assert h.sink.of("call.dtmf")[0]["callId"] == second


def test_internal_and_unknown_channels_never_become_calls() -> None:
    """A leftover avr media channel is hung up; events about unknown channels are ignored."""
    h = make()
    h.feed(stasis_start("avr-media-0b6a4a8e-3f27-4d5e-9f53-7f5b1f0c2c11", args=["x"]))
    assert h.ari.find("DELETE", "/channels/avr-media-.*") and h.sink.events == []
    h.feed(state_change("1795262390.325", "Up"), destroyed("1795262390.325"), dtmf("1795262390.325", "1"))
    assert h.sink.events == []


# -- hangups ------------------------------------------------------------------------------------------------------

def test_far_end_hangup_of_inbound_ends_at_stasis_end_with_real_cause() -> None:
    """Inbound calls may get no ChannelDestroyed: the call ends at StasisEnd with the non-soft cause; later
    ChannelDestroyed adds nothing (exactly once)."""
    h = make("none")
    cid = answered_inbound(h)
    h.feed(hangup_request(cid, 16, soft=True), hangup_request(cid, 17), stasis_end(cid))
    ended = h.sink.of("call.ended")
    assert len(ended) == 1 and ended[0]["data"]["cause"] == 17
    h.feed(destroyed(cid, 17, "User busy"))
    assert len(h.sink.of("call.ended")) == 1


def test_api_hangup_of_inbound_from_capture() -> None:
    """DELETE on an inbound (dialplan Stasis) channel: soft 32, StasisEnd, no ChannelDestroyed → cause 16 once."""
    cid = "avr-fixture-chan-1-far"
    events = fixture_events("originate_local_channel", cid)
    h = make("none")
    h.feed(events[0], state_change(cid, "Up"))
    h.run(h.control.hangup(cid))
    h.feed(*events[2:])
    ended = h.sink.of("call.ended")
    assert len(ended) == 1 and ended[0]["data"]["cause"] == 16 and ended[0]["data"]["hangupReason"] == "normal"


def test_shutdown_soft_cause_is_not_reported_as_q850() -> None:
    """Asterisk stopping: soft cause 4 is a flag; the call ends with ChannelDestroyed's cause 0 'Unknown'."""
    cid = "1795262490.524"
    events = fixture_events("websocket_asterisk_restart", cid, ws="events-before-sigterm")
    h = make(ids=[cid])
    h.run(h.control.originate("Local/6100@cap-ari"))
    h.feed(*events)
    ended = h.sink.of("call.ended")[0]["data"]
    assert ended["cause"] == 0 and ended["causeText"] == "Unknown"


@pytest.mark.parametrize("reason", ["bogus", "", "NORMAL", None])
def test_invalid_hangup_reason_is_refused_before_asterisk(reason: object) -> None:
    """An invalid reason is a 422 and the channel is not touched (D3)."""
    h = make("none")
    cid = answered_inbound(h)
    with pytest.raises(Invalid, match="reason"):
        h.run(h.control.hangup(cid, reason))  # type: ignore[arg-type]
    assert h.ari.requests == [] and h.run(h.control.get_call(cid))["state"] == "answered"


def test_hangup_of_ended_or_unknown_call() -> None:
    """Hanging up an ended call is a 409 and adds no second call.ended (D19); unknown is 404."""
    h = make("none")
    cid = answered_inbound(h)
    h.feed(hangup_request(cid, 16), stasis_end(cid))
    with pytest.raises(Conflict):
        h.run(h.control.hangup(cid))
    with pytest.raises(NotFound):
        h.run(h.control.hangup("nope"))
    assert len(h.sink.of("call.ended")) == 1 and h.ari.requests == []


def test_hangup_of_a_channel_already_gone() -> None:
    """DELETE answering 404: the lost end is reported after a short grace, once, even if the event arrives."""
    h = make("none")
    cid = answered_inbound(h)
    h.ari.on("DELETE", f"/channels/{cid}", ari_404())
    h.run(h.control.hangup(cid, "busy"))
    assert h.sink.of("call.ended") == []
    h.clock.advance(2)
    ended = h.sink.of("call.ended")
    assert len(ended) == 1 and ended[0]["data"]["cause"] is None
    assert ended[0]["data"]["note"] == "the channel was already gone" and ended[0]["data"]["hangupReason"] == "busy"
    h.feed(stasis_end(cid), destroyed(cid))
    assert len(h.sink.of("call.ended")) == 1


def test_hangup_passes_other_asterisk_errors_through() -> None:
    """A refused hangup raises Asterisk's error and does not end the call."""
    h = make("none")
    cid = answered_inbound(h)
    h.ari.on("DELETE", f"/channels/{cid}", AriError(500, "Internal"))
    with pytest.raises(AriError):
        h.run(h.control.hangup(cid))
    h.clock.advance(10)
    assert h.sink.of("call.ended") == []


# -- DTMF, endpoints --------------------------------------------------------------------------------------------------

def test_dtmf_received_from_capture() -> None:
    """Each ChannelDtmfReceived of a call becomes one call.dtmf with the digit and duration."""
    cid = "avr-fixture-dtmf-b"
    events = fixture_events("dtmf", cid)
    h = make("none")
    h.feed(*events)
    digits = [e["data"]["digit"] for e in h.sink.of("call.dtmf")]
    assert digits[:3] == ["1", "2", "#"] and "A" in digits
    assert all(e["callId"] == call_id_for(cid) and e["channelId"] == cid for e in h.sink.of("call.dtmf"))
    assert len(h.sink.of("call.ended")) == 1


def test_send_dtmf() -> None:
    """send_dtmf sends the digits with the optional timings (the routes check the digits and timings)."""
    h = make("none")
    cid = answered_inbound(h)
    assert h.run(h.control.send_dtmf(cid, "12#", between=100, duration=120)) == {"callId": call_id_for(cid),
                                                                                 "dtmf": "12#"}
    assert h.ari.find("POST", f"/channels/{cid}/dtmf")[0].params == {"dtmf": "12#", "between": 100,
                                                                      "duration": 120}


def test_send_dtmf_asterisk_error_keeps_its_status() -> None:
    """Asterisk's 409 (not in Stasis) comes back as an AriError with status 409 (D6)."""
    h = make("none")
    cid = answered_inbound(h)
    h.ari.on("POST", f"/channels/{cid}/dtmf", AriError(409, "Channel not in Stasis application"))
    with pytest.raises(AriError) as e:
        h.run(h.control.send_dtmf(cid, "1"))
    assert e.value.status == 409


def test_list_endpoints() -> None:
    """Endpoints are mapped to plain JSON."""
    h = make()
    h.ari.on("GET", "/endpoints", [{"technology": "PJSIP", "resource": "1001", "state": "online",
                                    "channel_ids": ["1.2"]}])
    assert h.run(h.control.list_endpoints()) == [
        {"technology": "PJSIP", "resource": "1001", "state": "online", "channelIds": ["1.2"]}]


@pytest.mark.logs_errors(r"Call control cannot apply an ARI StasisStart event")
def test_handler_errors_do_not_escape() -> None:
    """A malformed event is logged and skipped; the model keeps working."""
    h = make("none")
    h.control.ari_event({"type": "StasisStart", "channel": "not an object"})
    h.control.ari_event({"type": "SomethingNew"})
    h.feed(stasis_start("in-1"))
    assert h.sink.types() == ["call.created"]


# -- retention, stop --------------------------------------------------------------------------------------------------

def test_ended_call_is_kept_for_the_retention_then_forgotten() -> None:
    """GET /calls/:id answers for 5 minutes after the end, then 404; the timer is the only one left."""
    h = make("none")
    cid = answered_inbound(h)
    h.feed(hangup_request(cid, 16), stasis_end(cid))
    h.clock.advance(299)
    assert h.run(h.control.get_call(cid))["state"] == "ended"
    h.clock.advance(1)
    with pytest.raises(NotFound):
        h.run(h.control.get_call(cid))
    assert h.clock.getDelayedCalls() == []


def test_stop_cancels_every_timer() -> None:
    """stop() cancels retention and grace timers."""
    h = make("none")
    cid = answered_inbound(h)
    h.feed(stasis_start("in-2"))
    h.ari.on("DELETE", "/channels/in-2", ari_404())
    h.run(h.control.hangup("in-2"))
    h.feed(hangup_request(cid, 16), stasis_end(cid))
    assert h.clock.getDelayedCalls()
    done = []
    h.control.stop().addCallback(done.append)
    assert done == [None] and h.clock.getDelayedCalls() == []


# -- resync -------------------------------------------------------------------------------------------------------

def test_resync_after_restart_ends_vanished_calls() -> None:
    """After an Asterisk restart (GET /channels → []), calls that ended meanwhile get their call.ended once."""
    h = make("none", ids=["out-1"])
    cid = answered_inbound(h)
    h.run(h.control.originate("PJSIP/1"))
    h.control.ari_disconnected("connection lost")
    h.control.ari_connected()
    assert [r.path for r in h.ari.find("GET")] == ["/channels", "/bridges"]
    ended = h.sink.of("call.ended")
    assert {e["callId"] for e in ended} == {call_id_for(cid), call_id_for("out-1")}
    assert all(e["data"]["cause"] is None and "gone" in e["data"]["note"] for e in ended)
    assert h.control.status() | {"ari": "connected", "activeCalls": 0} == h.control.status()
    h.feed(destroyed(cid))
    assert len(h.sink.of("call.ended")) == 2


def test_resync_adopts_new_stasis_channels_and_keeps_live_ones() -> None:
    """Channels that entered the app while disconnected become calls (policy applied); live calls stay; leftover
    media channels and temporary bridges are removed; our bridges are reconciled."""
    h = make("answer")
    cid = answered_inbound(h)
    bridge = h.run(h.control.create_bridge("b"))
    h.ari.on("GET", "/channels", [
        channel(cid, "Up"),
        channel("new-1", "Ring", number="555", app_data="avr,inbound,7"),
        channel("other", "Up", app_name="Wait", app_data="60"),
        channel("avr-media-9", "Up"),
    ])
    h.ari.on("GET", "/bridges", [ari_bridge(bridge["id"], [cid]), ari_bridge("avr-tmp-old", [])])
    h.sink.clear()
    h.control.ari_disconnected("x")
    h.control.ari_connected()
    created = h.sink.of("call.created")
    assert [e["callId"] for e in created] == [call_id_for("new-1")] and created[0]["data"]["resynced"] is True
    assert created[0]["data"]["channelId"] == "new-1"
    assert created[0]["data"]["args"] == ["inbound", "7"]
    assert h.ari.find("POST", "/channels/new-1/answer")
    assert h.ari.find("DELETE", "/channels/avr-media-9") and h.ari.find("DELETE", "/bridges/avr-tmp-old")
    assert h.run(h.control.get_call(cid))["state"] == "bridged"
    assert h.sink.of("call.ended") == []


def test_call_ids_survive_a_resync_and_an_avr_restart() -> None:
    """The id of a call is the same after a reconnect (the model's record kept) and after an avr restart (the call
    rebuilt from GET /channels by a new model, with no other ARI request), for inbound and originated calls."""
    h = make("none", ids=["0d5e3f0a-6b7c-4d8e-9f01-23456789abcd"])
    inbound = h.run(h.control.get_call(answered_inbound(h, "1795262000.7")))
    outbound = h.run(h.control.originate("PJSIP/1001"))
    h.feed(stasis_start(outbound["channelId"], "Up"))
    listing = [channel("1795262000.7", "Up"), channel(outbound["channelId"], "Up")]
    h.ari.on("GET", "/channels", listing)
    h.control.ari_disconnected("x")
    h.control.ari_connected()
    assert [c["id"] for c in h.run(h.control.list_calls())] == [inbound["id"], outbound["id"]]
    restarted = make("none")
    restarted.ari.on("GET", "/channels", listing)
    restarted.control.ari_disconnected("x")
    restarted.control.ari_connected()
    assert [r.path for r in restarted.ari.requests] == ["/channels", "/bridges"]
    again = restarted.run(restarted.control.list_calls())
    assert [(c["id"], c["channelId"]) for c in again] == [(inbound["id"], "1795262000.7"),
                                                          (outbound["id"], outbound["channelId"])]


def test_resync_destroys_vanished_bridges_and_adopts_ours() -> None:
    """A tracked bridge gone from Asterisk is destroyed in the model; a Stasis bridge with our calls is adopted."""
    h = make("none")
    a = answered_inbound(h, "a")
    b = answered_inbound(h, "b")
    bridge = h.run(h.control.create_bridge())
    h.run(h.control.add_to_bridge(bridge["id"], a))
    h.ari.on("GET", "/channels", [channel(a), channel(b)])
    h.ari.on("GET", "/bridges", [ari_bridge("theirs", [b], name="old")])
    h.sink.clear()
    h.control.ari_connected()
    assert h.sink.types() == ["bridge.channel_left", "call.state_changed", "bridge.destroyed", "bridge.created",
                              "bridge.channel_entered", "call.state_changed"]
    assert h.run(h.control.get_call(b))["bridgeId"] == "theirs"


def test_resync_finishes_the_playbacks_and_recordings_asterisk_lost() -> None:
    """After a reconnect, an ARI playback or live recording that Asterisk answers 404 for is finished ``unknown``;
    one it still has, or that a failing request cannot tell about, goes on."""
    h = make("none", ids=["pb-lost", "pb-kept", "pb-error"])
    cid = answered_inbound(h)
    for _ in range(3):
        h.run(h.control.play(cid, "sound:beep"))
    h.run(h.control.record(cid, "rec-lost"))
    h.run(h.control.record(cid, "rec-kept"))
    h.ari.on("GET", "/channels", [channel(cid, "Up")])
    h.ari.on("GET", "/playbacks/pb-lost", ari_404("Playback not found"))
    h.ari.on("GET", "/playbacks/pb-kept", {"id": "pb-kept", "state": "playing"})
    h.ari.on("GET", "/playbacks/pb-error", AriError(500, "Internal Server Error"))
    h.ari.on("GET", "/recordings/live/rec-lost", ari_404("Recording not found"))
    h.ari.on("GET", "/recordings/live/rec-kept", {"name": "rec-kept", "state": "recording"})
    h.sink.clear()
    h.control.ari_disconnected("x")
    h.control.ari_connected()
    assert [e["data"] for e in h.sink.of("playback.finished")] == [
        {"playbackId": "pb-lost", "kind": "media", "status": "unknown"}]
    assert [e["data"] for e in h.sink.of("recording.finished")] == [
        {"name": "rec-lost", "format": "wav", "state": "unknown", "duration": None}]


def test_resync_failure_is_retried() -> None:
    """If the resync's requests fail, it is retried after 5 s while connected."""
    h = make(connected=False)
    h.ari.on("GET", "/channels", AriUnavailable("ARI request GET /channels failed: connection refused"), once=True)
    h.control.ari_connected()
    assert len(h.ari.find("GET", "/channels")) == 1
    h.clock.advance(5)
    assert len(h.ari.find("GET", "/channels")) == 2 and h.ari.find("GET", "/bridges")
    assert h.clock.getDelayedCalls() == []


def test_disconnect_cancels_a_pending_resync_retry() -> None:
    """A retry scheduled while connected is dropped when the socket goes down."""
    h = make(connected=False)
    h.ari.on("GET", "/channels", AriUnavailable("down"))
    h.control.ari_connected()
    h.control.ari_disconnected("lost")
    assert h.clock.getDelayedCalls() == []
