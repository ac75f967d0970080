"""
Tests of the agent's control messages on one call: the codec, `avr.calls.Call`'s handling of requests (one result
each, events, the session kept open until outcomes are known), and `avr.actions` (dialplan and ARI calls).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from zope.interface import implementer
from zope.interface.verify import verifyObject

from avr.actions import AriCallActions, DialplanActions, carry_out, transfer_endpoint
from avr.ari.errors import AriError
from avr.calls import ACTION_LINGER, NoActions
from avr.control.call_observer import agent_action_data
from avr.control.errors import Conflict, Timeout
from avr.interfaces import ICallActions
from avr.sts.codec import (
    ActionResult,
    DtmfRequest,
    HangupRequest,
    InvalidAction,
    StsProtocolError,
    TransferRequest,
    UnknownMessage,
    action_fields,
    decode_client_message,
    decode_message,
    encode_action_result,
)
from tests.test_calls import U1, World

# -- codec ----------------------------------------------------------------------------------------------------------


def test_control_messages_decode() -> None:
    """hangup, transfer (endpoint or dialplan target) and dtmf decode to their requests, with the optional id."""
    assert decode_message('{"type":"hangup"}') == HangupRequest()
    assert decode_message('{"type":"hangup","reason":"bye","id":7}') == HangupRequest("bye", 7)
    assert decode_message('{"type":"transfer","endpoint":"PJSIP/1002","callerId":"5551","timeout":20,"id":"t1"}') \
        == TransferRequest(endpoint="PJSIP/1002", caller_id="5551", timeout=20, id="t1")
    assert decode_message('{"type":"transfer","context":"internal","extension":"1002","priority":1}') \
        == TransferRequest(context="internal", extension="1002", priority=1)
    assert decode_message('{"type":"dtmf","digits":"12#"}') == DtmfRequest("12#")
    # Types the client does not know stay ignorable.
    assert decode_message('{"type":"tool_invocation","name":"x"}') == UnknownMessage("tool_invocation")


@pytest.mark.parametrize("text, error", [
    ('{"type":"transfer"}', "endpoint, or both context and extension, are required"),
    ('{"type":"transfer","context":"internal"}', "endpoint, or both context and extension, are required"),
    ('{"type":"transfer","endpoint":"PJSIP/1","extension":"2"}', "either endpoint or context/extension"),
    ('{"type":"transfer","endpoint":5}', "endpoint must be a string"),
    ('{"type":"transfer","endpoint":"PJSIP/1","timeout":"20"}', "timeout must be a whole number of seconds"),
    ('{"type":"transfer","endpoint":"PJSIP/1","timeout":true}', "timeout must be a whole number of seconds"),
    ('{"type":"dtmf"}', "digits (a string of DTMF digits) is required"),
    ('{"type":"dtmf","digits":""}', "digits (a string of DTMF digits) is required"),
    ('{"type":"hangup","reason":["x"]}', "reason must be a string"),
])
def test_malformed_control_messages_are_answered_not_dropped(text: str, error: str) -> None:
    """A control message with wrong fields is an `InvalidAction` (answered with a failed result), not an error."""
    message = decode_message(text)
    assert isinstance(message, InvalidAction)
    assert message.action == json.loads(text)["type"] and error in message.error


def test_action_result_encoding_round_trip() -> None:
    """action_result carries action, ok, error and (only when the request had one) the id."""
    plain = encode_action_result(ActionResult("transfer", False, "busy"))
    assert json.loads(plain) == {"type": "action_result", "action": "transfer", "ok": False, "error": "busy"}
    with_id = encode_action_result(ActionResult("dtmf", True, None, 3))
    assert json.loads(with_id) == {"type": "action_result", "action": "dtmf", "ok": True, "error": None, "id": 3}
    assert decode_client_message(with_id) == ActionResult("dtmf", True, None, 3)
    with pytest.raises(StsProtocolError):
        decode_client_message('{"type":"action_result","action":"dtmf","ok":"yes"}')


def test_event_data_of_an_action() -> None:
    """agent.action data: the action, its status and the fields the agent gave."""
    request = TransferRequest(endpoint="PJSIP/1002", timeout=20)
    assert action_fields(request) == {"endpoint": "PJSIP/1002", "timeout": 20}
    assert agent_action_data(request, None) == {"action": "transfer", "status": "requested",
                                                "request": {"endpoint": "PJSIP/1002", "timeout": 20}}
    assert agent_action_data(request, ActionResult("transfer", False, "busy"))["error"] == "busy"
    assert agent_action_data(request, ActionResult("transfer", True))["status"] == "succeeded"


# -- the call -------------------------------------------------------------------------------------------------------


@implementer(ICallActions)
class ScriptedActions:
    """Carries out nothing: each request waits until the test answers it (``answer``)."""

    def __init__(self) -> None:
        self.requests: list[tuple[Any, Any, Deferred]] = []

    def perform(self, call: Any, request: Any) -> Deferred:
        d: Deferred = Deferred()
        self.requests.append((call, request, d))
        return d

    def answer(self, index: int, ok: bool = True, error: str | None = None) -> None:
        _, request, d = self.requests[index]
        d.callback(ActionResult(request.action, ok, error, request.id))


def open_call(actions: Any) -> tuple[World, Any, Any, Any]:
    world = World(actions=actions)
    leg, call = world.connect()
    session = world.sts.open(U1)
    return world, leg, call, session


def actions_of(world: World) -> list[tuple[str, Any]]:
    return [(e[2].action, e[3]) for e in world.observer.events if e[0] == "agent_action"]


def test_each_request_gets_one_result_and_two_events() -> None:
    """The call hands requests to its actions; each outcome goes to the agent and the observers once."""
    actions = ScriptedActions()
    world, leg, call, session = open_call(actions)
    verifyObject(ICallActions, actions)
    call.sts_action(DtmfRequest("12", id=1))
    call.sts_action(TransferRequest(endpoint="PJSIP/1002", id=2))
    assert [r for _, r, _ in actions.requests] == [DtmfRequest("12", id=1), TransferRequest(endpoint="PJSIP/1002",
                                                                                          id=2)]
    actions.answer(1, ok=False, error="busy")
    actions.answer(0)
    assert session.results == [ActionResult("transfer", False, "busy", 2), ActionResult("dtmf", True, None, 1)]
    assert actions_of(world) == [("dtmf", None), ("transfer", None), ("transfer", ActionResult("transfer", False,
                                                                                               "busy", 2)),
                                 ("dtmf", ActionResult("dtmf", True, None, 1))]
    assert not leg.hung_up and not call.ended


def test_invalid_request_is_answered_at_once() -> None:
    """A malformed control message is refused with its problem, without reaching the actions."""
    actions = ScriptedActions()
    world, _, call, session = open_call(actions)
    call.sts_action(InvalidAction("transfer", "endpoint must be a string", "x"))
    assert not actions.requests
    assert session.results == [ActionResult("transfer", False, "endpoint must be a string", "x")]
    assert [status for _, status in actions_of(world)][0] is None


def test_no_actions_refuses() -> None:
    """A call without an actions collaborator refuses every request with a clear result."""
    world, _, call, session = open_call(NoActions())
    call.sts_action(HangupRequest())
    assert session.results == [ActionResult("hangup", False, "hangup is not available on this call")]


def test_session_stays_open_until_pending_outcomes_are_known() -> None:
    """
    The call ends (the caller hung up) during a transfer: the agent still hears the outcome, then the session
    closes and call_ended is the last event.
    """
    actions = ScriptedActions()
    world, leg, call, session = open_call(actions)
    call.sts_action(TransferRequest(endpoint="PJSIP/1002"))
    call.caller_gone("connection lost")
    assert call.ended and not session.closed
    assert ("call_ended", U1, "Asterisk: connection lost") not in world.observer.events
    actions.answer(0, ok=False, error="Call ended during the transfer")
    assert session.results == [ActionResult("transfer", False, "Call ended during the transfer")]
    assert session.closed
    assert world.observer.events[-1] == ("call_ended", U1, "Asterisk: connection lost")
    assert len(world.manager) == 0
    assert not world.clock.getDelayedCalls()


def test_linger_is_bounded() -> None:
    """An outcome that never comes is reported as failed after ACTION_LINGER seconds; a late one is ignored."""
    actions = ScriptedActions()
    world, _, call, session = open_call(actions)
    call.sts_action(DtmfRequest("1"))
    call.end("test")
    world.clock.advance(ACTION_LINGER)
    assert session.results == [ActionResult("dtmf", False, "the call ended before it completed")]
    assert session.closed and world.observer.events[-1][0] == "call_ended"
    actions.answer(0)
    assert len(session.results) == 1


def test_shutdown_does_not_linger() -> None:
    """At shutdown pending requests fail at once and the session closes."""
    actions = ScriptedActions()
    world, _, call, session = open_call(actions)
    call.sts_action(DtmfRequest("1"))
    world.manager.stop()
    assert session.closed and session.results == [ActionResult("dtmf", False,
                                                               "the call ended before it completed")]


def test_request_after_the_end_is_refused() -> None:
    """A request arriving while the session lingers gets a failed result and reaches no one."""
    actions = ScriptedActions()
    world, _, call, session = open_call(actions)
    call.sts_action(DtmfRequest("1"))
    call.end("test")
    call.sts_action(HangupRequest())
    assert session.results == [ActionResult("hangup", False, "the call has ended")]
    assert len(actions.requests) == 1


# -- dialplan calls -------------------------------------------------------------------------------------------------


def test_dialplan_hangup_ends_the_leg_after_answering() -> None:
    """hangup ends the AudioSocket leg (0x00: the dialplan continues); the agent hears ok first."""
    world, leg, call, session = open_call(DialplanActions())
    call.sts_action(HangupRequest("done", id=9))
    assert leg.hung_up == 1
    assert session.results == [ActionResult("hangup", True, None, 9)] and session.closed
    assert world.observer.events[-1] == ("call_ended", U1, "the agent hung up (done)")


def test_dialplan_transfer_and_dtmf_without_ari_are_refused(log_events: list) -> None:
    """Without ARI, transfer and dtmf are refused with a clear result and a log line."""
    world, leg, call, session = open_call(DialplanActions())
    call.sts_action(TransferRequest(endpoint="PJSIP/1002"))
    call.sts_action(DtmfRequest("1"))
    assert [r.ok for r in session.results] == [False, False]
    assert "needs ARI, which is not configured" in session.results[0].error
    warnings = [e for e in log_events if "is refused" in str(e.get("log_format"))]
    assert len(warnings) == 2 and not call.ended


class FakeControl:
    """The ICallControl operations the actions use, recorded; ``failure`` is raised by each."""

    def __init__(self, failure: BaseException | None = None) -> None:
        self.calls: list[tuple] = []
        self.failure = failure

    async def hangup(self, call_id: str, reason: str = "normal") -> dict:
        return self._record("hangup", call_id, reason)

    async def transfer(self, call_id: str, endpoint: str, caller_id: str | None = None, timeout: int = 30) -> dict:
        return self._record("transfer", call_id, endpoint, caller_id, timeout)

    async def send_dtmf(self, call_id: str, dtmf: str, between: int | None = None,
                        duration: int | None = None) -> dict:
        return self._record("send_dtmf", call_id, dtmf)

    def _record(self, *call: Any) -> dict:
        self.calls.append(call)
        if self.failure is not None:
            raise self.failure
        return {}


class Registry:
    """The lookups DialplanActions makes in the call registry."""

    def __init__(self, *records: Any) -> None:
        self.records = {r.id: r for r in records}

    def find(self, call_id: Any) -> Any:
        return self.records.get(call_id)

    def __iter__(self) -> Any:
        return iter(self.records.values())


class Record:
    def __init__(self, id: str, channel_name: str, ended: bool = False) -> None:
        self.id, self.channel_name, self.ended = id, channel_name, ended


def test_dialplan_transfer_needs_a_channel_in_stasis() -> None:
    """With ARI, the payload must name the channel, and ARI acts on it only if it is in the Stasis app."""
    control = FakeControl()
    world = World(actions=DialplanActions(control, Registry(Record("17.1", "PJSIP/2000-1"))))  # type: ignore[arg-type]
    world.registrations.register(U1, {"channel": "PJSIP/9-1"}, None, False)
    _, call = world.connect()
    session = world.sts.open(U1)
    call.sts_action(DtmfRequest("1"))
    assert not session.results[0].ok and "PJSIP/9-1 is not in the Stasis application" in session.results[0].error
    assert not control.calls

    world2 = World(actions=DialplanActions(control, Registry()))  # type: ignore[arg-type]
    _, call2 = world2.connect()
    session2 = world2.sts.open(U1)
    call2.sts_action(DtmfRequest("1"))
    assert "payload named none" in session2.results[0].error


def test_dialplan_transfer_on_a_channel_under_call_control() -> None:
    """A payload channel that call control knows (by uniqueid or name) is acted on through it."""
    control = FakeControl()
    registry = Registry(Record("17.1", "PJSIP/2000-1"), Record("17.2", "PJSIP/2001-1", ended=True))
    world = World(actions=DialplanActions(control, registry))  # type: ignore[arg-type]
    world.registrations.register(U1, {"channel": "PJSIP/2000-1"}, None, False)
    _, call = world.connect()
    session = world.sts.open(U1)
    call.sts_action(DtmfRequest("5"))
    call.sts_action(TransferRequest(context="internal", extension="1002"))
    assert control.calls == [("send_dtmf", "17.1", "5"), ("transfer", "17.1", "Local/1002@internal", None, 30)]
    assert [r.ok for r in session.results] == [True, True]


# -- carrying out on ARI calls --------------------------------------------------------------------------------------


def run(coroutine: Any) -> Any:
    d = coroutine if isinstance(coroutine, Deferred) else Deferred.fromCoroutine(coroutine)
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "did not complete synchronously"
    return results[0]


def test_ari_actions_map_to_call_control() -> None:
    """hangup (reason mapped to ARI's), transfer and dtmf go to call control with the REST limits checked."""
    control = FakeControl()
    actions = AriCallActions(control, "c1")  # type: ignore[arg-type]
    verifyObject(ICallActions, actions)
    for request in (HangupRequest("the customer said bye"), HangupRequest("busy"),
                    TransferRequest(endpoint="PJSIP/1002", caller_id="5551", timeout=20), DtmfRequest("1a#")):
        assert run(actions.perform(None, request)).ok
    assert control.calls == [("hangup", "c1", "normal"), ("hangup", "c1", "busy"),
                             ("transfer", "c1", "PJSIP/1002", "5551", 20), ("send_dtmf", "c1", "1A#")]


@pytest.mark.parametrize("request_, error", [
    (TransferRequest(endpoint="not a dial string"), "endpoint: must be a dial string"),
    (TransferRequest(endpoint="PJSIP/1", timeout=500), "timeout: must be between 1 and 120"),
    (TransferRequest(context="c", extension="1", priority=3), "priority"),
    (DtmfRequest("12x"), "dtmf: must contain only DTMF characters"),
])
def test_ari_actions_check_the_rest_limits(request_: Any, error: str) -> None:
    """Out-of-limit values are refused before anything is asked of Asterisk."""
    control = FakeControl()
    result = run(carry_out(control, "c1", request_))  # type: ignore[arg-type]
    assert not result.ok and error in result.error and not control.calls


@pytest.mark.parametrize("failure, error", [
    (Conflict("Transfer target PJSIP/1002 is busy"), "Transfer target PJSIP/1002 is busy"),
    (Timeout("Transfer target PJSIP/1002 did not answer"), "did not answer"),
    (AriError(409, "Channel not in Stasis application"), "Asterisk: Channel not in Stasis application"),
])
def test_ari_action_failures_are_results(failure: BaseException, error: str) -> None:
    """Call control's failures become the result's error, for the agent to talk about."""
    result = run(carry_out(FakeControl(failure), "c1", TransferRequest(endpoint="PJSIP/1002")))  # type: ignore[arg-type]
    assert result == ActionResult("transfer", False, error) or (not result.ok and error in result.error)


def test_transfer_endpoint() -> None:
    assert transfer_endpoint(TransferRequest(endpoint="PJSIP/1")) == "PJSIP/1"
    assert transfer_endpoint(TransferRequest(context="ctx", extension="100", priority=1)) == "Local/100@ctx"
