"""
AI agents on ARI calls: an externalMedia AudioSocket leg (`avr.control.media_leg`, ``format=slin16``, ``data`` a
fresh UUID) that Asterisk opens back to avr's AudioSocket server, bridged with the call, and the agent session run
on it exactly as for a dialplan call (`avr.interfaces.IAgentRunner`: ``call_initiated``, STS URL with the payload,
``init``, audio, DTMF, interruptions, transcripts, the AVR webhooks).

Where an agent comes from: ``POST /calls`` with ``agent`` (it joins when the call is answered), ``POST
/calls/:id/agent`` (a call that is up), the dialplan's ``Stasis(<app>,agent[,<STS URL or route name>])``, or the
configured default for inbound calls (``ARI_AGENT``; ``Stasis(<app>,noagent)`` opts out).

Events (``callId`` = the ARI call): ``agent.started`` (``uuid``, ``stsUrl``) once the leg is bridged,
``call.transcript``, ``call.interruption`` and ``agent.action`` while it runs, ``agent.ended`` (``uuid``,
``reason``) once it is gone (also for an agent that could not start). The agent leaves when it is detached, when the
call ends or leaves the agent's bridge (a transfer that was answered), or when its session ends (the STS closed or
failed): then the call is hung up, or left up without agent with ``ARI_AGENT_ON_FAILURE=continue``. Every ARI
resource made for it (channel, temporary bridge) is released then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

from attrs import define, field, frozen
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from avr.actions import AriCallActions
from avr.ari.errors import AriError, AriUnavailable
from avr.control.ari_link import AriLink
from avr.control.call_observer import agent_action_data
from avr.control.call_registry import CallRegistry, require_stasis
from avr.control.errors import Conflict, ControlError, Invalid, Unavailable
from avr.control.media_leg import MediaLeg, MediaLegs
from avr.control.records import INBOUND, AgentRecord, CallRecord
from avr.control.tasks import TaskGroup
from avr.frames import Kind
from avr.interfaces import IAgentRunner, ICallControl, ICallObserver
from avr.logtext import redact_url
from avr.urls import is_sts_url

if TYPE_CHECKING:
    from avr.calls import Call
    from avr.sts.codec import ActionMessage, ActionResult

#: The externalMedia format of agent legs, and the AudioSocket kind it arrives as.
AGENT_FORMAT = "slin16"
AGENT_KIND = Kind.SLIN16

#: What ``ARI_AGENT_ON_FAILURE`` may say: hang the call up when its agent fails, or leave it up without agent.
FAILURE_POLICIES = ("hangup", "continue")

#: The first Stasis argument that asks for an agent, and the one that declines the configured default.
AGENT_ARG, NO_AGENT_ARG = "agent", "noagent"


@frozen
class AgentSpec:
    """
    Which agent to run: an STS URL, or a named route (``STS_ROUTES``), else ``STS_URL``; ``payload`` becomes the
    STS URL's query parameters, on top of the call's ``from``, ``to``, ``uniqueid`` and ``channel``.
    """

    sts_url: str | None = None
    route: str | None = None
    payload: Mapping[str, Any] = field(factory=dict)

    @classmethod
    def from_setting(cls, value: str) -> AgentSpec:
        """The spec a dialplan argument or ``ARI_AGENT`` names: an STS URL, ``default`` (``STS_URL``) or a route."""
        if value == "default":
            return cls()
        return cls(sts_url=value) if is_sts_url(value) else cls(route=value)


@implementer(ICallObserver)
@define(eq=False)
class AgentEvents:
    """The agent session's events, under the ARI call's id (its DTMF is the call's own ``call.dtmf``)."""

    registry: CallRegistry
    call: CallRecord

    def call_started(self, call: Call) -> None:
        """Announced as ``agent.started`` once the leg is bridged."""

    def dtmf(self, call: Call, digit: str) -> None:
        """Published from ARI's ChannelDtmfReceived already."""

    def transcript(self, call: Call, role: str, text: str) -> None:
        self.registry.publish("call.transcript", {"role": role, "text": text}, self.call)

    def interruption(self, call: Call) -> None:
        self.registry.publish("call.interruption", {}, self.call)

    def agent_action(self, call: Call, request: ActionMessage, result: ActionResult | None) -> None:
        self.registry.publish("agent.action", agent_action_data(request, result), self.call)

    def call_ended(self, call: Call, reason: str) -> None:
        """Announced as ``agent.ended`` once the leg is released."""


@define(eq=False)
class _Agent:
    call: CallRecord
    record: AgentRecord
    leg: MediaLeg
    automatic: bool
    detaching: bool = False
    announced: bool = False


@define(eq=False)
class Agents:
    """
    The agents of ARI calls.

    :param registry: the calls, and where the events go.
    :param ari: the way to Asterisk.
    :param tasks: runs automatic starts in the background.
    :param clock: timestamps.
    :param legs: opens the agents' media legs.
    :param control: carries out what the agents ask for (the call-control façade).
    :param runner: runs the agent sessions (``None``: agents are unavailable).
    :param default: the agent of inbound calls that do not ask for one (``ARI_AGENT``), or ``None``.
    :param routes: named STS URLs (``STS_ROUTES``).
    :param on_failure: ``hangup`` or ``continue`` (`FAILURE_POLICIES`).
    """

    registry: CallRegistry
    ari: AriLink
    tasks: TaskGroup
    clock: IReactorTime
    legs: MediaLegs
    control: ICallControl
    runner: IAgentRunner | None = None
    default: AgentSpec | None = None
    routes: Mapping[str, str] = field(factory=dict)
    on_failure: str = "hangup"
    _agents: dict[str, _Agent] = field(factory=dict, init=False)
    #: Calls that get an agent once they are answered and in Stasis.
    _wanted: dict[str, AgentSpec] = field(factory=dict, init=False)
    log = Logger()

    @property
    def handlers(self) -> dict[str, Callable[[dict], None]]:
        """The ARI events this component applies, by type (after `avr.control.channels.Channels`)."""
        return {"StasisStart": self._on_stasis_start, "ChannelStateChange": self._on_state_change}

    def __len__(self) -> int:
        return len(self._agents)

    # -- operations -----------------------------------------------------------------------------------------------

    def want(self, call_id: str, spec: AgentSpec) -> None:
        """Give the call ``spec``'s agent once it is answered and in Stasis (at once if it already is)."""
        self.check(spec)
        call = self.registry.find(call_id)
        if call is None or call.ended:
            return
        self._wanted[call.id] = spec
        self._maybe_start(call)

    async def attach(self, call_id: str, sts_url: str | None = None, route: str | None = None,
                     payload: Mapping[str, Any] | None = None) -> dict:
        """See `avr.interfaces.ICallControl.attach_agent`."""
        spec = AgentSpec(sts_url, route, dict(payload or {}))
        self.check(spec)
        call = self.registry.live(call_id)
        self.ari.require_connected()
        require_stasis(call)
        if call.answered_at is None:
            raise Conflict(f"Call {call_id} is not answered yet")
        self._wanted.pop(call.id, None)
        agent = await self._start(call, spec, automatic=False)
        return {"callId": call.id, "agent": agent.record.to_dict()}

    async def detach(self, call_id: str) -> dict:
        """See `avr.interfaces.ICallControl.detach_agent`."""
        call = self.registry.require(call_id)
        agent = self._agents.get(call.id)
        if agent is None:
            if self._wanted.pop(call.id, None) is not None:
                return {"callId": call.id, "agent": None}
            raise Conflict(f"Call {call_id} has no agent")
        agent.detaching = True
        agent.leg.stop()
        return {"callId": call.id, "agent": agent.record.to_dict()}

    def call_ended(self, call: CallRecord) -> None:
        """The ended ``call`` gets no agent any more (a running one ends with the call's media legs)."""
        self._wanted.pop(call.id, None)

    # -- starting -------------------------------------------------------------------------------------------------

    def check(self, spec: AgentSpec) -> None:
        """:raises Unavailable: agents cannot run. :raises Invalid: ``spec`` names an unknown route."""
        if self.runner is None or not self.legs.address:
            raise Unavailable("AI agents are not available (no AudioSocket server address)")
        if spec.route is not None and spec.route not in self.routes:
            known = ", ".join(sorted(self.routes)) or "none are configured (STS_ROUTES)"
            raise Invalid(f"unknown STS route {spec.route!r} (routes: {known})")

    def _maybe_start(self, call: CallRecord) -> None:
        if call.id not in self._wanted or call.ended or call.answered_at is None or not call.in_stasis:
            return
        if call.id in self._agents or call.handed_off:
            self._wanted.pop(call.id)
            return
        spec = self._wanted.pop(call.id)
        self.tasks.spawn(self._start_quietly(call, spec), f"starting the agent of call {call.id}")

    async def _start_quietly(self, call: CallRecord, spec: AgentSpec) -> None:
        try:
            await self._start(call, spec, automatic=True)
        except (ControlError, AriError, AriUnavailable) as e:
            self.log.warn("Cannot start the agent of call {call_id}: {error}", call_id=call.id,
                          error=getattr(e, "message", str(e)))

    async def _start(self, call: CallRecord, spec: AgentSpec, automatic: bool) -> _Agent:
        runner = self.runner
        assert runner is not None
        if call.id in self._agents:
            raise Conflict(f"Call {call.id} has an agent already")
        base = self.routes[spec.route] if spec.route is not None else spec.sts_url
        leg = self.legs.open(call, AGENT_FORMAT, "the agent", self._leg_ended)
        agent = _Agent(call, AgentRecord(leg.uuid, base, self.clock.seconds()), leg, automatic)
        self._agents[call.id] = agent
        call.agent = agent.record
        payload = {"from": call.caller_number, "to": call.callee_number, "uniqueid": call.channel_id,
                   "channel": call.channel_name, **spec.payload}
        try:
            url = await runner.route(leg.uuid, base, payload)
            agent.record.sts_url = url
            if call.ended or agent.detaching:
                raise Conflict(f"Call {call.id} ended before its agent started" if call.ended
                               else f"The agent of call {call.id} was detached before it started")
            events = AgentEvents(self.registry, call)
            actions = AriCallActions(self.control, call.id)
            await leg.start(lambda uuid: runner.expect(uuid, url, payload, events, actions, AGENT_KIND))
        except BaseException as e:
            leg.release()
            self._forget(agent)
            why = getattr(e, "message", None) or str(e) or type(e).__name__
            if automatic:
                self._ended(agent, f"could not start: {why}", failed=True)
            raise
        agent.record.state = "active"
        agent.announced = True
        self.log.info("Agent {agent_id} on call {call_id} (STS: {sts})", agent_id=leg.uuid, call_id=call.id,
                      sts=redact_url(url) if url else "built-in echo agent")
        self.registry.publish("agent.started", {"uuid": leg.uuid, "stsUrl": agent.record.to_dict()["stsUrl"]},
                              call)
        return agent

    # -- ending ---------------------------------------------------------------------------------------------------

    def _leg_ended(self, leg: MediaLeg) -> None:
        agent = next((a for a in self._agents.values() if a.leg is leg), None)
        if agent is None:
            return
        self._forget(agent)
        call = agent.call
        if agent.detaching:
            self._ended(agent, "detached")
        elif call.ended or call.hangup_request_cause is not None or call.requested_reason is not None:
            # Hanging up: Asterisk takes the call out of the agent's bridge before it reports the end.
            self._ended(agent, "the call ended")
        elif leg.stopped:
            self._ended(agent, "the call left the agent's bridge")
        else:
            self._ended(agent, leg.error or "the agent session ended", failed=True)

    def _forget(self, agent: _Agent) -> None:
        if self._agents.get(agent.call.id) is agent:
            del self._agents[agent.call.id]
        if agent.call.agent is agent.record:
            agent.call.agent = None

    def _ended(self, agent: _Agent, reason: str, failed: bool = False) -> None:
        call = agent.call
        self.log.info("Agent {agent_id} left call {call_id}: {reason}", agent_id=agent.record.uuid, call_id=call.id,
                      reason=reason)
        self.registry.publish("agent.ended", {"uuid": agent.record.uuid, "reason": reason}, call)
        if failed and not call.ended and self.on_failure == "hangup" and not self.tasks.stopped:
            self.log.info("Hanging up call {call_id}: its agent failed (ARI_AGENT_ON_FAILURE=hangup)", call_id=call.id)
            call.requested_reason = call.requested_reason or "normal"
            self.ari.hang_up_quietly(call.channel_id)

    # -- events ---------------------------------------------------------------------------------------------------

    def _on_stasis_start(self, event: dict) -> None:
        call = self.registry.by_channel((event.get("channel") or {}).get("id"))
        if call is None or call.ended:
            return
        if call.direction == INBOUND and call.id not in self._wanted and call.id not in self._agents:
            spec = self._inbound_spec(call.args)
            if spec is not None:
                try:
                    self.check(spec)
                except ControlError as e:
                    self.log.warn("Inbound call {call_id} asks for an agent: {error}", call_id=call.id, error=e.message)
                    return
                self._wanted[call.id] = spec
        self._maybe_start(call)

    def _inbound_spec(self, args: list[str]) -> AgentSpec | None:
        if args and args[0] == AGENT_ARG:
            return AgentSpec.from_setting(args[1]) if len(args) > 1 and args[1] else AgentSpec()
        if args and args[0] == NO_AGENT_ARG:
            return None
        return self.default

    def _on_state_change(self, event: dict) -> None:
        call = self.registry.by_channel((event.get("channel") or {}).get("id"))
        if call is not None:
            self._maybe_start(call)
