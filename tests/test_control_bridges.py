"""The call-control model: bridges and transfers."""

from __future__ import annotations

import pytest

from avr.ari.errors import AriError
from avr.control.errors import Conflict, NotFound, Timeout
from avr.control.records import call_id_for
from tests.ari_fakes import (
    Harness,
    answered_inbound,
    bridge_destroyed,
    destroyed,
    dial,
    entered_bridge,
    fixture_events,
    hangup_request,
    left_bridge,
    make,
    stasis_end,
    stasis_start,
    state_change,
)


def bridged_pair() -> tuple[Harness, str, str]:
    """Two answered calls ``a`` and ``b`` in bridge ``br-1``, with the events of getting there cleared."""
    h = make("none", ids=["br-1"])
    a = answered_inbound(h, "a")
    b = answered_inbound(h, "b")
    h.run(h.control.create_bridge())
    h.run(h.control.add_to_bridge("br-1", a))
    h.run(h.control.add_to_bridge("br-1", b))
    h.sink.clear()
    return h, a, b


# -- bridges --------------------------------------------------------------------------------------------------------


def test_create_bridge_publishes_bridge_created_itself() -> None:
    """Asterisk sends no BridgeCreated for ARI bridges: avr publishes bridge.created once, with its chosen id."""
    h = make(ids=["br-1"])
    bridge = h.run(h.control.create_bridge("conf"))
    assert bridge["id"] == "br-1" and bridge["name"] == "conf" and bridge["calls"] == []
    assert bridge["type"] == "mixing" and bridge["createdAt"].endswith("Z")
    assert h.ari.find("POST", "/bridges/br-1")[0].params == {"type": "mixing", "name": "conf"}
    assert h.sink.types() == ["bridge.created"] and h.sink.events[0]["bridgeId"] == "br-1"
    assert h.run(h.control.list_bridges()) == [bridge]


def test_add_and_remove_from_capture_event_order() -> None:
    """addChannel: ChannelEnteredBridge arrives before the 204; each member change is published exactly once and
    the calls go bridged and back to answered."""
    a, b, bridge_id = "avr-fixture-br-a", "avr-fixture-br-b", "67b96369-ae77-4994-8a94-d6534696a049"
    events = fixture_events("bridges", a, b)
    h = make("none", ids=[bridge_id])
    answered_inbound(h, a)
    answered_inbound(h, b)
    h.run(h.control.create_bridge())
    h.sink.clear()
    entered = [e for e in events if e["type"] == "ChannelEnteredBridge"][:2]
    h.feed(*entered)
    h.run(h.control.add_to_bridge(bridge_id, a))
    h.run(h.control.add_to_bridge(bridge_id, b))
    assert h.sink.types() == ["bridge.channel_entered", "call.state_changed"] * 2
    assert h.run(h.control.get_call(a))["state"] == "bridged"
    bridge = h.run(h.control.get_bridge(bridge_id))
    assert bridge["calls"] == [call_id_for(a), call_id_for(b)]
    assert bridge["channelIds"] == [a, b]  # as asterisk-api's bridge records have them
    h.sink.clear()
    h.run(h.control.remove_from_bridge(bridge_id, a))
    h.feed(left_bridge(bridge_id, a, [b]))
    assert h.sink.types() == ["bridge.channel_left", "call.state_changed"]
    assert h.run(h.control.get_bridge(bridge_id))["channelIds"] == [b]
    assert h.sink.of("call.state_changed")[0]["data"] == {"previousState": "bridged", "state": "answered"}
    assert h.ari.find("POST", f"/bridges/{bridge_id}/removeChannel")[0].params == {"channel": a}


def test_destroy_bridge_with_calls_inside() -> None:
    """Destroying a bridge with calls: channel_left for each, then one bridge.destroyed, even if Asterisk also
    sends ChannelLeftBridge and later BridgeDestroyed."""
    h, a, b = bridged_pair()
    h.feed(left_bridge("br-1", a, [b]))
    assert h.run(h.control.destroy_bridge("br-1")) == {"id": "br-1", "status": "destroyed"}
    h.feed(left_bridge("br-1", b, []), bridge_destroyed("br-1"))
    assert h.sink.types().count("bridge.destroyed") == 1 and h.sink.types().count("bridge.channel_left") == 2
    assert h.sink.types()[-1] == "bridge.destroyed"
    assert [h.run(h.control.get_call(c))["state"] for c in (a, b)] == ["answered", "answered"]
    with pytest.raises(NotFound):
        h.run(h.control.get_bridge("br-1"))


def test_destroy_bridge_already_gone_in_asterisk() -> None:
    """A 404 on destroy means it is gone already: the model drops it and reports it."""
    h = make("none", ids=["br-1"])
    h.run(h.control.create_bridge())
    h.ari.on("DELETE", "/bridges/br-1", AriError(404, "Bridge not found"))
    h.run(h.control.destroy_bridge("br-1"))
    assert h.sink.types() == ["bridge.created", "bridge.destroyed"]


def test_bridged_call_hangs_up() -> None:
    """A bridged call hanging up leaves the bridge (ChannelLeftBridge before StasisEnd) and ends once."""
    h, a, b = bridged_pair()
    h.feed(hangup_request(a, 16), left_bridge("br-1", a, [b]), stasis_end(a))
    assert h.sink.types() == ["bridge.channel_left", "call.state_changed", "call.ended"]
    assert h.run(h.control.get_bridge("br-1"))["calls"] == [call_id_for(b)]


def test_bridge_errors() -> None:
    """Unknown bridge or call → 404; removing a non-member → 409; adding an ended call → 409; Asterisk's 422
    for a channel not in Stasis is passed through; adding a member again is a no-op."""
    h = make("none", ids=["br-1"])
    a = answered_inbound(h, "a")
    with pytest.raises(NotFound):
        h.run(h.control.add_to_bridge("nope", a))
    h.run(h.control.create_bridge())
    with pytest.raises(NotFound):
        h.run(h.control.add_to_bridge("br-1", "nope"))
    with pytest.raises(Conflict):
        h.run(h.control.remove_from_bridge("br-1", a))
    h.ari.on("POST", "/bridges/br-1/addChannel", AriError(422, "Channel not in Stasis application"), once=True)
    with pytest.raises(AriError):
        h.run(h.control.add_to_bridge("br-1", a))
    h.run(h.control.add_to_bridge("br-1", a))
    h.ari.requests.clear()
    h.run(h.control.add_to_bridge("br-1", a))
    assert h.ari.requests == []
    h.feed(hangup_request(a, 16), stasis_end(a))
    with pytest.raises(Conflict):
        h.run(h.control.add_to_bridge("br-1", a))
    with pytest.raises(NotFound):
        h.run(h.control.destroy_bridge("nope"))


def test_moving_a_call_between_bridges() -> None:
    """Adding a call that is in another API bridge moves it: left there, entered here, state stays bridged."""
    h = make("none", ids=["br-1", "br-2"])
    a = answered_inbound(h, "a")
    h.run(h.control.create_bridge())
    h.run(h.control.create_bridge())
    h.run(h.control.add_to_bridge("br-1", a))
    h.sink.clear()
    h.run(h.control.add_to_bridge("br-2", a))
    assert h.sink.types() == ["bridge.channel_left", "call.state_changed", "bridge.channel_entered",
                              "call.state_changed"]
    assert h.run(h.control.get_call(a))["bridgeId"] == "br-2"


# -- transfer -------------------------------------------------------------------------------------------------------

def _answer_target(h, target: str) -> None:  # type: ignore[no-untyped-def]
    h.feed(dial(target, ""), state_change(target, "Ringing"), dial(target, "RINGING"), state_change(target, "Up"),
           dial(target, "ANSWER"), stasis_start(target))


def test_transfer_success() -> None:
    """The caller hears ringing, the target is bridged only after its StasisStart, both are bridged."""
    h = make("none", ids=["t-1", "br-1"])
    cid = answered_inbound(h, "in-1", number="3000")
    d, outcome = h.start(h.control.transfer(cid, "PJSIP/1002", timeout=20))
    assert [(r.method, r.path) for r in h.ari.requests] == [("POST", f"/channels/{cid}/ring"), ("POST", "/channels")]
    assert h.ari.find("POST", "/channels")[0].params == {"endpoint": "PJSIP/1002", "app": "avr", "channelId": "t-1",
                                                         "timeout": 20, "callerId": "3000"}
    h.feed(dial("t-1", ""), state_change("t-1", "Ringing"), dial("t-1", "RINGING"), state_change("t-1", "Up"))
    assert outcome == [] and not h.ari.find("POST", "/bridges/.*")
    h.feed(dial("t-1", "ANSWER"), stasis_start("t-1"))
    call_id, target_id = call_id_for(cid), call_id_for("t-1")
    assert outcome[0] == {"callId": call_id, "newCallId": target_id, "bridgeId": "br-1",
                          "bridge": {"id": "br-1", "name": f"transfer-{call_id}", "type": "mixing", "kind": "transfer",
                                     "calls": [call_id, target_id], "channelIds": [cid, "t-1"],
                                     "createdAt": outcome[0]["bridge"]["createdAt"]}}
    assert h.ari.find("DELETE", f"/channels/{cid}/ring")
    assert h.ari.find("POST", "/bridges/br-1/addChannel")[0].params == {"channel": [cid, "t-1"]}
    assert h.run(h.control.get_call(cid))["state"] == "bridged"
    target = h.run(h.control.get_call("t-1"))
    assert target["state"] == "bridged" and target["transferredFrom"] == call_id and target["channelId"] == "t-1"
    assert h.sink.types(call_id) == ["call.state_changed", "call.transferred"]
    assert h.sink.types()[-1] == "call.transferred"


def test_transfer_target_in_stasis_before_the_originate_answer() -> None:
    """The target's StasisStart may come before Asterisk answers the originate: no race, no hang."""
    h = make("none", ids=["t-1", "br-1"])
    cid = answered_inbound(h)
    h.ari.on("POST", "/channels", hold=True)
    d, outcome = h.start(h.control.transfer(cid, "PJSIP/1002"))
    _answer_target(h, "t-1")
    assert not h.ari.find("POST", "/bridges/.*")
    h.ari.release()
    assert outcome[0]["newCallId"] == call_id_for("t-1")


def test_transfer_busy_from_capture() -> None:
    """A busy target (captured: cause 0 + Dial BUSY): 409, ringing stopped, target gone, call untouched."""
    events = fixture_events("originate_no_answer_busy_bad_target", "avr-fixture-busy")
    h = make("none", ids=["avr-fixture-busy"])
    cid = answered_inbound(h)
    d, outcome = h.start(h.control.transfer(cid, "Local/6107@cap-ari"))
    h.feed(*events)
    error = outcome[0].value
    assert isinstance(error, Conflict) and "busy" in error.message and error.extra["cause"] == 17
    assert h.ari.find("DELETE", f"/channels/{cid}/ring")
    assert not h.ari.find("DELETE", f"/channels/{cid}") and not h.ari.find("POST", "/bridges.*")
    failed = h.sink.of("call.transfer_failed")[0]
    assert failed["callId"] == call_id_for(cid) and failed["data"]["cause"] == 17 and failed["data"]["targetCallId"]
    assert h.run(h.control.get_call(cid))["state"] == "answered"


def test_transfer_no_answer_from_capture() -> None:
    """A target that rings out (cause 19): 408 (asterisk-api's), the caller's call stays answered."""
    events = fixture_events("originate_no_answer_busy_bad_target", "avr-fixture-noanswer")
    h = make("none", ids=["avr-fixture-noanswer"])
    cid = answered_inbound(h)
    d, outcome = h.start(h.control.transfer(cid, "Local/6105@cap-ari", timeout=3))
    h.feed(*events)
    assert isinstance(outcome[0].value, Timeout) and outcome[0].value.status == 408
    assert h.run(h.control.get_call(cid))["state"] == "answered"
    assert h.ari.find("DELETE", f"/channels/{cid}/ring")


def test_transfer_times_out_and_hangs_up_the_target() -> None:
    """No outcome from Asterisk within timeout + grace: 504, the still-ringing target leg is hung up."""
    h = make("none", ids=["t-1"])
    cid = answered_inbound(h)
    d, outcome = h.start(h.control.transfer(cid, "PJSIP/1002", timeout=5))
    h.feed(state_change("t-1", "Ringing"))
    h.clock.advance(9.9)
    assert outcome == []
    h.clock.advance(0.1)
    assert isinstance(outcome[0].value, Timeout)
    assert h.ari.find("DELETE", "/channels/t-1") and h.ari.find("DELETE", f"/channels/{cid}/ring")
    h.feed(destroyed("t-1", 16))
    assert h.run(h.control.get_call(cid))["state"] == "answered"
    assert h.clock.getDelayedCalls() == [] or all(c.getTime() >= 300 for c in h.clock.getDelayedCalls())


def test_caller_hangs_up_during_transfer() -> None:
    """The caller leaves while the target rings: 409 and the target leg is hung up."""
    h = make("none", ids=["t-1"])
    cid = answered_inbound(h)
    d, outcome = h.start(h.control.transfer(cid, "PJSIP/1002"))
    h.feed(hangup_request(cid, 16), stasis_end(cid))
    assert isinstance(outcome[0].value, Conflict)
    assert h.ari.find("DELETE", "/channels/t-1") and not h.ari.find("DELETE", f"/channels/{cid}/ring")


def test_transfer_originate_refused() -> None:
    """Asterisk refuses the new leg: its error is raised, the ringing is stopped, no call is left."""
    h = make("none")
    cid = answered_inbound(h)
    h.ari.on("POST", "/channels", AriError(400, "Invalid endpoint specified"))
    with pytest.raises(AriError):
        h.run(h.control.transfer(cid, "PJSIP/nope"))
    assert h.ari.find("DELETE", f"/channels/{cid}/ring")
    assert h.sink.types() == ["call.transfer_failed"]
    assert len(h.run(h.control.list_calls())) == 1


def test_transfer_refusals() -> None:
    """Only an answered call, in Stasis, not in a bridge and not already transferring can be transferred."""
    h = make("none", ids=["t-1", "br-1"])
    h.feed(stasis_start("ringing", "Ring"))
    with pytest.raises(Conflict, match="answered"):
        h.run(h.control.transfer("ringing", "PJSIP/1"))
    cid = answered_inbound(h)
    d, outcome = h.start(h.control.transfer(cid, "PJSIP/1002"))
    with pytest.raises(Conflict, match="already"):
        h.run(h.control.transfer(cid, "PJSIP/1003"))
    _answer_target(h, "t-1")
    with pytest.raises(Conflict, match="bridge"):
        h.run(h.control.transfer(cid, "PJSIP/1003"))


def test_after_transfer_one_party_leaves_and_the_other_stays_up() -> None:
    """When the target hangs up, the transfer bridge is destroyed and the caller stays up, answered."""
    h = make("none", ids=["t-1", "br-1"])
    cid = answered_inbound(h)
    h.start(h.control.transfer(cid, "PJSIP/1002"))
    _answer_target(h, "t-1")
    h.feed(entered_bridge("br-1", cid, [cid]), entered_bridge("br-1", "t-1", [cid, "t-1"]))
    h.sink.clear()
    h.feed(hangup_request("t-1", 16), left_bridge("br-1", "t-1", [cid]), stasis_end("t-1"), destroyed("t-1"))
    assert h.ari.find("DELETE", "/bridges/br-1")
    assert h.run(h.control.get_call(cid))["state"] == "answered"
    assert "bridge.destroyed" in h.sink.types() and not h.ari.find("DELETE", f"/channels/{cid}")
    assert h.run(h.control.list_bridges()) == []
