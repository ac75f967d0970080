"""
`CallControl`: the in-memory model of calls and bridges behind the call-control REST API, kept in step with
Asterisk by the ARI events (`IAriEventListener`) and driving Asterisk through ARI REST (`IAriClient`).

Identity: a call's API id is a version-4 UUID distinct from its ARI channel id, as asterisk-api's are (its
clients take them for UUIDs); the channel id is the call's ``channelId``. The call id is derived from the channel id
(`avr.control.records.call_id_for`), so it needs no table and no ARI request, and stays the same across a resync
or an avr restart (``GET /channels`` gives the same channel ids). The API routes take either id (the channel id is
what Asterisk's own tools show). For calls avr originates, avr chooses the channel id (a UUID4), so the call id is
known and the call registered before Asterisk is asked: events that arrive before Asterisk's response (they
usually do) are never mistaken for an unknown channel.

Call states (`avr.control.records.STATES`): outbound ``dialing`` → ``ringing`` → ``answered``; inbound ``ringing``
→ ``answered``; ``answered`` ⇄ ``bridged`` (in a bridge made through the API or a transfer); any → ``ended``.
``call.state_changed`` is published only on a real change; the end is ``call.ended`` (not a state change), exactly
once per call, with the Q.850 cause. Playback and recording are events, not states. Ended calls stay readable
through `get_call` for ``retention`` seconds.

Events published (``{"type", "callId" | "bridgeId", "timestamp", "data"}``): every type and its ``data`` are in
README.md, section "Calls and events".

Every operation is a coroutine (``async def``); wrap it with ``Deferred.fromCoroutine`` at the HTTP boundary.

`CallControl` is a façade: it builds the components, each with one job and its own state, and routes the ARI
events to them (each component has a table of the event types it applies):

* `avr.control.call_registry.CallRegistry`: the calls, their state machine, ``call.ended``, event publishing;
* `avr.control.channels.Channels`: originate, answer, hang up, DTMF, inbound calls, the channel events;
* `avr.control.bridges.Bridges`: bridges and their members;
* `avr.control.media_leg.MediaLegs`: externalMedia legs (uploaded audio today);
* `avr.control.playbacks.Playbacks`: ARI media and uploaded PCM;
* `avr.control.recordings.Recordings`: live and stored recordings;
* `avr.control.transfers.Transfers`: transfer through a new leg and a bridge;
* `avr.control.agents.Agents`: AI agents on calls, each on a media leg;
* `avr.control.speak.Speaker`: asterisk-api's ``/speak`` (TTS played on a media leg);
* `avr.control.capture.AudioCaptures`: asterisk-api's live capture (snoop + media leg) and its streaming ASR;
* `avr.control.resync.Resync`: reconciling with Asterisk after each connect;
* shared by all: `avr.control.tasks.TaskGroup` (timers, tasks, waits) and `avr.control.ari_link.AriLink`.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable

from attrs import define, field
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from avr.allowlist import Allowlist
from avr.calls import Refusal
from avr.config import INBOUND_POLICIES
from avr.control.agents import AgentSpec, Agents
from avr.control.ari_link import AriLink
from avr.control.bridges import Bridges
from avr.control.call_registry import DEFAULT_RETENTION, CallRegistry
from avr.control.capture import AsrSessions, AudioCaptures, AudioListener
from avr.control.channels import Channels
from avr.control.hub import EventsHub
from avr.control.errors import Conflict, Unavailable
from avr.control.media_leg import MediaLegs
from avr.control.playbacks import Playbacks
from avr.control.recordings import Recordings
from avr.control.resync import Resync
from avr.control.speak import Speaker
from avr.control.tasks import TaskGroup
from avr.control.transfers import Transfers
from avr.interfaces import IAgentRunner, IAriClient, IAriEventListener, IAudioInjector, ICallControl, IEventSink
from avr.speech.openai_tts import OpenAiTts


def _new_uuid() -> str:
    return str(uuid.uuid4())


def _or_uuid(new_id: Callable[[], str] | None) -> Callable[[], str]:
    return new_id or _new_uuid


def _check_policy(instance: Any, attribute: Any, value: str) -> None:
    if value not in INBOUND_POLICIES:
        raise ValueError(f"inbound_policy must be one of {', '.join(INBOUND_POLICIES)}, got {value!r}")


@implementer(ICallControl, IAriEventListener)
@define(eq=False)
class CallControl:
    """
    Call control over ARI (see the module documentation).

    :param ari: the ARI REST client, or ``None`` when ARI is not configured (operations then raise `Unavailable`).
    :param clock: time source for timestamps, the ended-call retention and every timeout.
    :param sink: receives every event (the /events hub and the events webhook).
    :param app: the Stasis application name.
    :param inbound_policy: ``answer``, ``ring`` or ``none`` (see `avr.config.INBOUND_POLICIES`).
    :param injector: plays uploaded PCM through an AudioSocket connection (``None``: `play_pcm` is unavailable).
    :param audiosocket_address: ``host:port`` where Asterisk reaches avr's AudioSocket server (for media legs).
    :param retention: seconds an ended call stays readable.
    :param setup_timeout: seconds to wait for Asterisk during multi-step setups (a media channel entering Stasis).
    :param new_id: makes the ids of originated channels (the calls' ids derive from them), created bridges and ARI
        playbacks (UUID4 by default).
    :param pcm_lead_in: seconds of silence played before uploaded audio (see `Playbacks`).
    :param registry: the call registry shared with the AudioSocket side (its own ``sink`` and ``retention``
        apply); when not given, one is built on ``sink``.
    :param ring_delay: with the ``answer`` policy, seconds inbound calls ring before they are answered.
    :param agent_runner: runs the sessions of AI agents on calls (``None``: agents are unavailable; settable once
        the AudioSocket side exists).
    :param default_agent: the agent of inbound calls that do not ask for one (``ARI_AGENT``).
    :param sts_routes: named STS URLs (``STS_ROUTES``).
    :param agent_on_failure: ``hangup`` or ``continue`` (``ARI_AGENT_ON_FAILURE``).
    :param allowlist: asterisk-api's allowlist of inbound and outbound numbers (``None``: all allowed).
    :param tts: the OpenAI-compatible TTS of ``/speak`` (``None``: 501).
    :param listener: takes the AudioSocket connections of audio captures (``None``: capture unavailable).
    :param asr_sessions: makes the streaming ASR session of a captured call (``None``: no ASR).
    :param frames: the ``/events`` hub, for the ``call.audio_frame`` events subscribers ask for.
    :param refusal: says why no call may be originated now (`Unavailable` then), or ``None``.
    """

    ari: IAriClient | None
    clock: IReactorTime
    sink: IEventSink
    app: str
    inbound_policy: str = field(default="answer", validator=_check_policy)
    injector: IAudioInjector | None = None
    _audiosocket_address: str | None = None
    retention: float = DEFAULT_RETENTION
    setup_timeout: float = 10.0
    new_id: Callable[[], str] = field(default=None, converter=_or_uuid)
    pcm_lead_in: float = 0.3
    _given_registry: CallRegistry | None = field(default=None, alias="registry", repr=False)
    ring_delay: float = 0.0
    _agent_runner: IAgentRunner | None = None
    default_agent: AgentSpec | None = None
    sts_routes: dict[str, str] = field(factory=dict)
    agent_on_failure: str = "hangup"
    allowlist: Allowlist | None = None
    tts: OpenAiTts | None = None
    listener: AudioListener | None = None
    asr_sessions: AsrSessions | None = None
    frames: EventsHub | None = None
    #: Why no call may be originated now (avr draining, ``MAX_CALLS`` reached), or ``None``
    #: (`avr.calls.CallManager.refusal`; settable once the AudioSocket side is built).
    refusal: Callable[[], Refusal | None] | None = None
    tasks: TaskGroup = field(init=False)
    link: AriLink = field(init=False)
    registry: CallRegistry = field(init=False)
    legs: MediaLegs = field(init=False)
    channels: Channels = field(init=False)
    bridges: Bridges = field(init=False)
    playbacks: Playbacks = field(init=False)
    recordings: Recordings = field(init=False)
    transfers: Transfers = field(init=False)
    speaker: Speaker = field(init=False)
    captures: AudioCaptures = field(init=False)
    resync: Resync = field(init=False)
    agents: Agents = field(init=False)
    _handlers: dict[str, list[Callable[[dict], None]]] = field(factory=dict, init=False)
    log = Logger()

    def __attrs_post_init__(self) -> None:
        clock, app = self.clock, self.app
        self.tasks = tasks = TaskGroup(clock)
        self.link = link = AriLink(self.ari, tasks)
        self.registry = registry = self._given_registry or CallRegistry(clock, self.sink, tasks, self.retention)
        self.legs = MediaLegs(registry, link, tasks, app, self._audiosocket_address, self.setup_timeout)
        self.channels = Channels(registry, link, tasks, clock, self.legs, app, self.inbound_policy, self.new_id,
                                 self.ring_delay, self.allowlist)
        self.bridges = Bridges(registry, link, clock, self.new_id)
        self.playbacks = Playbacks(registry, link, clock, self.legs, self.injector, self.new_id, self.pcm_lead_in)
        self.recordings = Recordings(registry, link, clock)
        self.transfers = Transfers(registry, link, tasks, self.channels, self.bridges)
        self.resync = Resync(registry, link, tasks, clock, app, self.channels, self.bridges, self.legs,
                             self.playbacks, self.recordings)
        self.agents = Agents(registry, link, tasks, clock, self.legs, self, self._agent_runner, self.default_agent,
                             self.sts_routes, self.agent_on_failure)
        self.speaker = Speaker(registry, self.playbacks, self.tts)
        self.captures = AudioCaptures(registry, link, tasks, clock, self.legs, app, self.listener, self.asr_sessions,
                                      self.frames)
        # What an ended call held is released in this order (its events are published in it).
        for released in (self.channels, self.speaker, self.captures, self.recordings, self.legs, self.playbacks,
                         self.bridges, self.agents):
            registry.on_call_ended(released.call_ended)
        # Media legs see StasisStart first: their channels are not calls. Agents start once the calls are known.
        for component in (self.legs, self.channels, self.bridges, self.playbacks, self.recordings, self.captures,
                          self.agents):
            for type_, handler in component.handlers.items():
                self._handlers.setdefault(type_, []).append(handler)

    @property
    def audiosocket_address(self) -> str | None:
        """``host:port`` where Asterisk reaches avr's AudioSocket server (settable once the port is known)."""
        return self.legs.address

    @audiosocket_address.setter
    def audiosocket_address(self, address: str | None) -> None:
        self.legs.address = address

    @property
    def agent_runner(self) -> IAgentRunner | None:
        """Runs the agents' sessions (settable once the AudioSocket side is built)."""
        return self.agents.runner

    @agent_runner.setter
    def agent_runner(self, runner: IAgentRunner | None) -> None:
        self.agents.runner = runner

    # -- IAriEventListener ----------------------------------------------------------------------------------------

    def ari_connected(self) -> None:
        """The events socket is up: mark ARI connected and resynchronise from REST."""
        self.link.up()
        self.resync.start()

    def ari_event(self, event: dict) -> None:
        """Apply one ARI event to the model (unknown types and channels are ignored)."""
        self.resync.note(event)
        if self.tasks.stopped:
            return
        for handler in self._handlers.get(event.get("type", ""), ()):
            try:
                handler(event)
            except Exception:
                self.log.failure("Call control cannot apply an ARI {type} event", type=event.get("type"))

    def ari_disconnected(self, reason: str) -> None:
        """The events socket dropped: mark ARI disconnected (calls are kept; the next connect resynchronises)."""
        self.link.down(reason)
        self.resync.cancel_retry()

    # -- status and lifecycle -------------------------------------------------------------------------------------

    def status(self) -> dict:
        """See `ICallControl.status`."""
        return {
            "ari": self.link.state,
            "ariReason": self.link.reason,
            "app": self.app,
            "inboundPolicy": self.inbound_policy,
            "activeCalls": len(self.registry.active()),
            "bridges": len(self.bridges),
        }

    def snapshot(self) -> dict:
        """See `ICallControl.snapshot`."""
        return {
            "calls": self.registry.listing(),
            "bridges": [b.to_dict() for b in self.bridges],
        }

    def stop(self) -> Deferred:
        """
        Shut down: cancel every timer, fail pending waits, stop the media legs (their channels are hung up). Live
        calls are left alone.

        :return: a Deferred firing once the ARI requests still in flight (cleanups) are done and the audio
            captures' ASR sessions are flushed and closed.
        """
        self.speaker.stop()
        capturing = self.captures.stop_all()
        self.tasks.stop()
        self.channels.stop()
        self.registry.stop()
        self.legs.stop()
        return DeferredList([capturing, self.tasks.drained()], consumeErrors=True).addCallback(lambda _: None)

    # -- calls --------------------------------------------------------------------------------------------------

    async def list_calls(self) -> list[dict]:
        """See `Channels.list_calls`."""
        return await self.channels.list_calls()

    async def get_call(self, call_id: str) -> dict:
        """See `Channels.get_call`."""
        return await self.channels.get_call(call_id)

    async def list_endpoints(self) -> list[dict]:
        """See `Channels.list_endpoints`."""
        return await self.channels.list_endpoints()

    async def originate(self, endpoint: str, caller_id: str | None = None, timeout: int = 30,
                        variables: dict | None = None, context: str | None = None, extension: str | None = None,
                        priority: int | None = None, agent: AgentSpec | None = None) -> dict:
        """
        See `Channels.originate`; with ``agent``, see `Agents.want`.

        :raises Unavailable: avr is draining or at ``MAX_CALLS`` (``refusal``).
        """
        refusal = self.refusal() if self.refusal is not None else None
        if refusal is not None:
            raise Unavailable(refusal.message, reason=refusal.code)
        if agent is not None:
            if context is not None or extension is not None:
                raise Conflict("a call sent to the dialplan cannot get an agent")
            self.agents.check(agent)  # before anything is dialled
        call = await self.channels.originate(endpoint, caller_id, timeout, variables, context, extension, priority)
        if agent is not None:
            self.agents.want(call["id"], agent)
        return call

    async def attach_agent(self, call_id: str, sts_url: str | None = None, route: str | None = None,
                           payload: dict | None = None) -> dict:
        """See `Agents.attach`."""
        return await self.agents.attach(call_id, sts_url, route, payload)

    async def detach_agent(self, call_id: str) -> dict:
        """See `Agents.detach`."""
        return await self.agents.detach(call_id)

    async def answer(self, call_id: str) -> dict:
        """See `Channels.answer`."""
        return await self.channels.answer(call_id)

    async def hangup(self, call_id: str, reason: str = "normal") -> dict:
        """See `Channels.hangup`."""
        return await self.channels.hangup(call_id, reason)

    async def send_dtmf(self, call_id: str, dtmf: str, between: int | None = None,
                        duration: int | None = None) -> dict:
        """See `Channels.send_dtmf`."""
        return await self.channels.send_dtmf(call_id, dtmf, between, duration)

    async def transfer(self, call_id: str, endpoint: str, caller_id: str | None = None, timeout: int = 30) -> dict:
        """See `Transfers.transfer`."""
        return await self.transfers.transfer(call_id, endpoint, caller_id, timeout)

    # -- recordings -----------------------------------------------------------------------------------------------

    async def record(self, call_id: str, name: str | None = None, format: str = "wav", max_duration: int = 300,
                     beep: bool = False, if_exists: str = "fail") -> dict:
        """See `Recordings.record`."""
        return await self.recordings.record(call_id, name, format, max_duration, beep, if_exists)

    async def stop_recording(self, name: str) -> dict:
        """See `Recordings.stop_recording`."""
        return await self.recordings.stop_recording(name)

    async def cancel_recording(self, name: str) -> dict:
        """See `Recordings.cancel_recording`."""
        return await self.recordings.cancel_recording(name)

    async def list_recordings(self) -> list[dict]:
        """See `Recordings.list_recordings`."""
        return await self.recordings.list_recordings()

    async def get_recording(self, name: str) -> dict:
        """See `Recordings.get_recording`."""
        return await self.recordings.get_recording(name)

    async def recording_file(self, name: str) -> Any:
        """See `Recordings.recording_file`."""
        return await self.recordings.recording_file(name)

    async def copy_recording(self, name: str, destination: str) -> dict:
        """See `Recordings.copy_recording`."""
        return await self.recordings.copy_recording(name, destination)

    async def delete_recording(self, name: str) -> dict:
        """See `Recordings.delete_recording`."""
        return await self.recordings.delete_recording(name)

    # -- bridges --------------------------------------------------------------------------------------------------

    async def create_bridge(self, name: str | None = None) -> dict:
        """See `Bridges.create_bridge`."""
        return await self.bridges.create_bridge(name)

    async def list_bridges(self) -> list[dict]:
        """See `Bridges.list_bridges`."""
        return await self.bridges.list_bridges()

    async def get_bridge(self, bridge_id: str) -> dict:
        """See `Bridges.get_bridge`."""
        return await self.bridges.get_bridge(bridge_id)

    async def destroy_bridge(self, bridge_id: str) -> dict:
        """See `Bridges.destroy_bridge`."""
        return await self.bridges.destroy_bridge(bridge_id)

    async def add_to_bridge(self, bridge_id: str, call_id: str) -> dict:
        """See `Bridges.add_to_bridge`."""
        return await self.bridges.add_to_bridge(bridge_id, call_id)

    async def remove_from_bridge(self, bridge_id: str, call_id: str) -> dict:
        """See `Bridges.remove_from_bridge`."""
        return await self.bridges.remove_from_bridge(bridge_id, call_id)

    # -- playback -------------------------------------------------------------------------------------------------

    async def play(self, call_id: str, media: list[str]) -> dict:
        """See `Playbacks.play`."""
        return await self.playbacks.play(call_id, media)

    async def stop_playback(self, call_id: str, playback_id: str) -> dict:
        """See `Playbacks.stop_playback`."""
        return await self.playbacks.stop_playback(call_id, playback_id)

    async def play_pcm(self, call_id: str, pcm: bytes, rate: int) -> dict:
        """See `Playbacks.play_pcm`."""
        return await self.playbacks.play_pcm(call_id, pcm, rate)

    async def speak(self, call_id: str, text: str, voice: str | None = None, language: str | None = None,
                    speed: float | None = None) -> dict:
        """See `Speaker.speak`."""
        return await self.speaker.speak(call_id, text, voice, language, speed)

    async def start_audio_capture(self, call_id: str) -> dict:
        """See `AudioCaptures.start`."""
        return await self.captures.start(call_id)

    async def stop_audio_capture(self, call_id: str) -> dict:
        """See `AudioCaptures.stop`."""
        return await self.captures.stop(call_id)
