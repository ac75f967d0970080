"""
`RegistryObserver`: puts the dialplan AudioSocket calls in the call registry and publishes their events, so that
``GET /calls``, ``GET /calls/:id``, ``/events`` and the events webhook show them next to the ARI calls, ARI
configured or not.

Events (``callId`` = the AudioSocket UUID): ``call.created`` (data: the call), ``call.dtmf`` (``digit``),
``call.transcript`` (``role``, ``text``), ``call.interruption`` (``{}``), ``agent.action`` (see `agent_action_data`),
``call.ended`` (``previousState``, ``cause`` and ``causeText`` ``null``, ``endedAt``, ``reason``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attrs import define
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from avr.control.call_registry import CallRegistry
from avr.control.records import ENDED, AudioSocketCallRecord, iso
from avr.interfaces import ICallObserver
from avr.sts.codec import action_fields

if TYPE_CHECKING:
    from avr.calls import Call
    from avr.sts.codec import ActionMessage, ActionResult


def agent_action_data(request: ActionMessage, result: ActionResult | None) -> dict[str, Any]:
    """
    The data of an ``agent.action`` event: ``action`` (``hangup``, ``transfer``, ``dtmf``), ``status``
    (``requested``, then ``succeeded`` or ``failed``), ``request`` (the fields the agent gave) and, when failed,
    ``error``.
    """
    data: dict[str, Any] = {"action": request.action, "request": action_fields(request)}
    if result is None:
        data["status"] = "requested"
    elif result.ok:
        data["status"] = "succeeded"
    else:
        data["status"] = "failed"
        data["error"] = result.error
    return data


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


@implementer(ICallObserver)
@define(eq=False)
class RegistryObserver:
    """
    :param registry: the one call registry.
    :param clock: stamps the calls' end.
    """

    registry: CallRegistry
    clock: IReactorTime
    log = Logger()

    def call_started(self, call: Call) -> None:
        previous = self.registry.lookup(call.uuid)
        if previous is not None:
            if not previous.ended:
                self.log.warn("Call {call_id} is not shown in /calls: a live {kind} call has that id",
                              call_id=call.uuid, kind=previous.kind)
                return
            self.registry.forget(previous)
        record = AudioSocketCallRecord(
            call, call.started_at,
            channel_id=_text(call.payload.get("uniqueid")), channel_name=_text(call.payload.get("channel")),
            caller_number=_text(call.payload.get("from")), callee_number=_text(call.payload.get("to")),
        )
        ari = self.registry.by_channel(record.channel_id)
        if ari is not None:
            record.linked_call_id = ari.id
            ari.linked_call_id = record.id
        self.registry.add(record)
        self.registry.publish("call.created", record.to_dict(), record)

    def dtmf(self, call: Call, digit: str) -> None:
        self._publish(call, "call.dtmf", {"digit": digit})

    def transcript(self, call: Call, role: str, text: str) -> None:
        self._publish(call, "call.transcript", {"role": role, "text": text})

    def interruption(self, call: Call) -> None:
        self._publish(call, "call.interruption", {})

    def agent_action(self, call: Call, request: ActionMessage, result: ActionResult | None) -> None:
        self._publish(call, "agent.action", agent_action_data(request, result))

    def call_ended(self, call: Call, reason: str) -> None:
        record = self._record(call)
        if record is None:
            return
        previous, record.state = record.state, ENDED
        record.ended_at = self.clock.seconds()
        record.end_reason = reason
        self.registry.publish("call.ended", {
            "previousState": previous, "cause": None, "causeText": None, "endedAt": iso(record.ended_at),
            "reason": reason,
        }, record)
        self.registry.retain(record)

    def _record(self, call: Call) -> AudioSocketCallRecord | None:
        record = self.registry.lookup(call.uuid)
        if isinstance(record, AudioSocketCallRecord) and record.call is call and not record.ended:
            return record
        return None

    def _publish(self, call: Call, type_: str, data: dict[str, Any]) -> None:
        record = self._record(call)
        if record is not None:
            self.registry.publish(type_, data, record)
