"""
The behaviour of the fake Asterisk: channels (Local pairs and a small dialplan interpreter, PJSIP-like endpoints,
AudioSocket/UnicastRTP externalMedia, snoop), Stasis applications and their subscriptions, events, hangups, bridges.
Media (playbacks, recordings, DTMF) live in `avr.testing.ari_media`, bridges and application subscriptions in
`avr.testing.ari_bridges`, the dialplan interpreter in `avr.testing.ari_dialplan`; this class mixes them in.

All timing comes from the injected clock. Every rule below reproduces what Asterisk 22.10.1 did in the captures of
``avr/testing/captures/asterisk/ari`` (the "facts" of its README); where they are silent, the rule follows the
Asterisk source and says so.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from twisted.logger import Logger

from avr.testing.ari_bridges import BridgeMixin
from avr.testing.ari_dialplan import DialplanMixin
from avr.testing.ari_media import MediaMixin
from avr.testing.ari_model import (
    ASTERISK_ID,
    CODECS,
    HANGUP_REASONS,
    App,
    AriHttpError,
    Bridge,
    Channel,
    DialplanStep,
    Endpoint,
    LiveRecording,
    Playback,
    StasisState,
    StoredRecording,
    allocation_failed,
    cause_text,
    format_timestamp,
    param_int,
    param_str,
    parse_caller_id,
    split_args,
)

UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

#: The ``soft`` hangup flags Asterisk reports as ``cause`` in ChannelHangupRequest (fact 19).
SOFT_EXPLICIT = 32
SOFT_APPUNLOAD = 16
SOFT_SHUTDOWN = 4


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class AsteriskEngine(MediaMixin, BridgeMixin, DialplanMixin):
    """
    The simulated Asterisk. Methods named like ARI operations take already-parsed parameters and either return the
    JSON-ready result or raise `AriHttpError`; ``_``-prefixed methods are internal state transitions.

    :param clock: an ``IReactorTime`` (``task.Clock`` in unit tests).
    :param wall_start: the wall-clock time (epoch seconds) at ``clock.seconds()`` now; ids and timestamps use it.
    :param dialplan: ``{context: {exten: [DialplanStep]}}`` for Local channels.
    :param sounds: ``{name: seconds}`` for ``sound:`` media.
    :param uuid_factory: makes bridge and playback ids (``uuid.uuid4`` by default).
    """

    log = Logger()

    def __init__(
        self,
        clock: Any,
        *,
        wall_start: float,
        dialplan: dict[str, dict[str, list[DialplanStep]]],
        sounds: dict[str, float],
        uuid_factory: Callable[[], str] | None = None,
    ) -> None:
        self.clock = clock
        self._clock0 = clock.seconds()
        self._wall0 = wall_start
        self.dialplan = dialplan
        self.sounds = sounds
        self._uuid = uuid_factory or (lambda: str(uuid.uuid4()))
        self.endpoints: dict[tuple[str, str], Endpoint] = {}
        #: global variables as configured (``[globals]``): restored on every restart
        self.config_globals: dict[str, str] = {}
        self.stored: dict[str, StoredRecording] = {}
        #: every event delivered to a socket: ``(application, event dict)``
        self.delivered: list[tuple[str, dict]] = []
        #: DTMF sent to channels whose far end is outside the fake (PJSIP), per channel id
        self.sent_dtmf: dict[str, list[str]] = {}
        #: keep `delivered` (see `FakeAsterisk`)
        self.history = True
        #: echo DTMF sent to PJSIP channels back as ChannelDtmfReceived (see `FakeAsterisk`)
        self.dtmf_loopback = False
        #: ``(channel id, endpoint)`` of every ``redirect`` accepted for a non-Local channel
        self.redirects: list[tuple[str, str]] = []
        self.reset()

    # ----------------------------------------------------------------------------------------------------------------
    # Time, ids, lifecycle

    def wall(self) -> float:
        """The simulated wall-clock time."""
        return self._wall0 + (self.clock.seconds() - self._clock0)

    def reset(self) -> None:
        """Forget every channel, bridge, playback, live recording and application (a restart); counters restart."""
        self.channels: dict[str, Channel] = {}
        self.bridges: dict[str, Bridge] = {}
        self.playbacks: dict[str, Playback] = {}
        self.live_recordings: dict[str, LiveRecording] = {}
        self.apps: dict[str, App] = {}
        self.global_vars = dict(self.config_globals)
        self._seq = 0
        self._unreal = 0
        self._snoop_seq = 0
        self._pjsip_seq = 0
        self.startup_time = self.wall()

    def _next_id(self) -> str:
        self._seq += 1
        return f"{int(self.wall())}.{self._seq}"

    def _next_unreal(self) -> int:
        self._unreal += 1
        return self._unreal

    def _later(self, owner: Any, delay: float, fn: Callable[..., Any], *args: Any) -> Any:
        """Schedule ``fn`` and remember the call on ``owner.timers`` so that it is cancelled when ``owner`` ends."""
        call = self.clock.callLater(delay, self._fire, owner, fn, args)
        owner.timers.append(call)
        return call

    def _fire(self, owner: Any, fn: Callable[..., Any], args: tuple) -> None:
        owner.timers[:] = [c for c in owner.timers if c.active()]
        try:
            fn(*args)
        except Exception:
            self.log.failure("Fake Asterisk timer failed")

    @staticmethod
    def _cancel_timers(owner: Any) -> None:
        for call in owner.timers:
            if call.active():
                call.cancel()
        owner.timers.clear()

    def cancel_all(self) -> None:
        """Cancel every pending timer and close every AudioSocket connection (stop, restart, test teardown)."""
        for ch in list(self.channels.values()):
            self._cancel_timers(ch)
            if ch.stasis is not None:
                for cmd in [ch.stasis.current, *ch.stasis.queue]:
                    if cmd is not None:
                        self._cancel_timers(cmd)
            if ch.audiosocket is not None:
                conn, ch.audiosocket = ch.audiosocket, None
                conn.close()
        for owner in [*self.playbacks.values(), *self.live_recordings.values()]:
            self._cancel_timers(owner)

    def shutdown(self) -> None:
        """
        Hang every channel up the way ``core restart now`` does (fact 30): ChannelHangupRequest ``{cause:4,
        soft:true}`` for all channels, then each ends with cause 0, ;2 halves first.
        """
        chans = [c for c in self.channels.values() if c.alive]
        for ch in chans:
            self._hangup_request(ch, SOFT_SHUTDOWN, soft=True)
        for ch in sorted(chans, key=lambda c: c.half != 2):
            if ch.alive and not ch.ending:
                ch.hangupcause = 0
                self._end_channel(ch, 0, force=True)
        for bridge in list(self.bridges.values()):
            self._drop_bridge(bridge)
        for pb in list(self.playbacks.values()):
            self._cancel_timers(pb)
        for rec in list(self.live_recordings.values()):
            self._cancel_timers(rec)

    # ----------------------------------------------------------------------------------------------------------------
    # Applications and events

    def attach(self, sink: Any, names: Iterable[str], subscribe_all: bool = False) -> None:
        """
        A socket for applications ``names`` connected: register them; a previous socket of the same app gets
        ApplicationReplaced and no more events (fact 29).

        :param sink: has ``deliver(app_name, text)``.
        """
        for name in names:
            app = self.apps.get(name)
            if app is None:
                app = self.apps[name] = App(name)
            old = app.sink
            if old is not None and old is not sink:
                event = {"type": "ApplicationReplaced", "timestamp": format_timestamp(self.wall()),
                         "application": name, "asterisk_id": ASTERISK_ID}  # fmt: skip
                self._send(old, name, event)
            app.sink = sink
            app.subscribe_all = subscribe_all

    def detach(self, sink: Any) -> None:
        """A socket closed: its apps stay registered only while a channel is in them (fact 28)."""
        for app in list(self.apps.values()):
            if app.sink is sink:
                app.sink = None
                self._maybe_unregister(app)

    def _maybe_unregister(self, app: App) -> None:
        if app.sink is None and not any(c.stasis and c.stasis.app == app.name for c in self.channels.values()):
            self.apps.pop(app.name, None)

    def _app_active(self, name: str) -> bool:
        app = self.apps.get(name)
        return app is not None and app.sink is not None

    def _send(self, sink: Any, app_name: str, event: dict) -> None:
        if self.history:
            self.delivered.append((app_name, event))
        try:
            sink.deliver(app_name, _compact(event))
        except Exception:
            self.log.failure("Delivering an event to {app} failed", app=app_name)

    def emit(
        self,
        event_type: str,
        fields: list[tuple[str, Any]],
        *,
        channels: Iterable[Channel] = (),
        bridges: Iterable[Bridge] = (),
        pre: list[tuple[str, Any]] | None = None,
        only_app: str | None = None,
    ) -> None:
        """
        Publish one event to every application subscribed to one of ``channels``/``bridges`` (or only to
        ``only_app``), through its event filter. Objects in ``fields`` are rendered now, in the key order given.
        """
        channels = list(channels)
        bridges = list(bridges)
        body: dict[str, Any] = {}
        for key, value in pre or ():
            body[key] = value
        body["type"] = event_type
        body["timestamp"] = format_timestamp(self.wall())
        for key, value in fields:
            body[key] = value.to_json() if hasattr(value, "to_json") else value
        body["asterisk_id"] = ASTERISK_ID
        for app in list(self.apps.values()):
            if only_app is not None:
                if app.name != only_app:
                    continue
            elif not (
                app.subscribe_all
                or any(app.channel_subs.get(c.id) for c in channels)
                or any(app.bridge_subs.get(b.id) for b in bridges)
            ):
                continue
            if app.sink is None or not app.wants(event_type):
                continue
            self._send(app.sink, app.name, dict(body, application=app.name))

    def _subscribe(self, app_name: str, ch: Channel, delta: int = 1) -> None:
        app = self.apps.get(app_name)
        if app is not None:
            app.sub(app.channel_subs, ch.id, delta)

    # ----------------------------------------------------------------------------------------------------------------
    # Channel events

    def _state(self, ch: Channel, state: str) -> None:
        if ch.state != state:
            ch.state = state
            self.emit("ChannelStateChange", [("channel", ch)], channels=[ch])

    def _setvar(self, ch: Channel, name: str, value: str | None) -> None:
        if value is None:
            ch.variables.pop(name, None)
        else:
            ch.variables[name] = value
        self.emit("ChannelVarset", [("channel", ch)], channels=[ch], pre=[("variable", name), ("value", value or "")])

    def _hangup_request(self, ch: Channel, cause: int, soft: bool = False) -> None:
        pre: list[tuple[str, Any]] = [("cause", cause)]
        if soft:
            pre.append(("soft", True))
        self.emit("ChannelHangupRequest", [("channel", ch)], channels=[ch], pre=pre)

    def _dial_event(self, ch: Channel, status: str, dialstring: str | None = None) -> None:
        dialstring = ch.dialstring if dialstring is None else dialstring
        fields = [("dialstatus", status), ("forward", ""), ("dialstring", dialstring), ("peer", ch)]
        self.emit("Dial", fields, channels=[ch])

    # ----------------------------------------------------------------------------------------------------------------
    # Creating channels

    def _check_ids(self, *ids: str | None) -> None:
        for cid in ids:
            if cid and cid in self.channels:
                raise AriHttpError(409, "Channel with given unique ID already exists")

    def _new_channel(self, name: str, tech: str, cid: str | None = None, **fields: Any) -> Channel:
        ch = Channel(id=cid or self._next_id(), name=name, tech=tech, creationtime=self.wall(), **fields)
        self.channels[ch.id] = ch
        self.emit("ChannelCreated", [("channel", ch)], channels=[ch])
        return ch

    def _new_local_pair(self, resource: str, id1: str | None, id2: str | None) -> tuple[Channel, Channel]:
        exten, _, context = resource.partition("@")
        context = (context or "default").split("/")[0]
        base = f"Local/{exten}@{context}-{self._next_unreal():08x}"
        one = self._new_channel(f"{base};1", "Local", id1, context=context, exten=exten)
        two = self._new_channel(f"{base};2", "Local", id2 or (f"{id1};2" if id1 else None), state="Ring",
                                context=context, exten=exten, half=2)  # fmt: skip
        one.half = 1
        one.peer, two.peer = two, one
        one.dialstring = f"{exten}@{context}"
        return one, two

    def originate(self, params: dict[str, Any], variables: dict[str, str] | None,
                  channel_id: str | None = None) -> dict:  # fmt: skip
        """``POST /channels`` and ``POST /channels/{channelId}``: returns the new channel (state Down, fact 15)."""
        endpoint = param_str(params.get("endpoint"))
        app = param_str(params.get("app"))
        extension = param_str(params.get("extension"))
        originator = param_str(params.get("originator"))
        formats = param_str(params.get("formats"))
        channel_id = channel_id or param_str(params.get("channelId")) or None
        other_id = param_str(params.get("otherChannelId")) or None
        if not endpoint:
            raise AriHttpError(400, "Endpoint must be specified")
        if originator and formats:
            raise AriHttpError(400, "Originator and formats can't both be specified")
        tech, _, resource = endpoint.partition("/")
        if not tech or not resource:
            raise AriHttpError(400, "Invalid endpoint specified")
        if not app and not extension:
            raise AriHttpError(400, "Application or extension must be specified")
        timeout = param_int(params.get("timeout"), 30)
        name, number = parse_caller_id(param_str(params.get("callerId")))
        if originator and originator not in self.channels:
            raise AriHttpError(400, "Provided originator channel was not found")
        for fmt in filter(None, (f.strip() for f in formats.split(","))):
            if fmt not in CODECS:
                raise AriHttpError(400, f"Provided format ({fmt}) was not found")
        if not channel_id:
            other_id = None  # fact 14: otherChannelId without channelId is ignored
        self._check_ids(channel_id, other_id or (f"{channel_id};2" if channel_id else None))
        ch, two = self._request(tech, resource, channel_id, other_id)
        ch.formats = formats
        if name or number:
            ch.caller_name, ch.caller_number = name, number
            ch.connected_name, ch.connected_number = name, number
        for var, value in (variables or {}).items():
            self._set_any(ch, var, value, quiet=True)
        ch.app_name, ch.app_data = "AppDial2", "(Outgoing Line)"
        if app:
            ch.originate_app = app
            ch.originate_args = split_args(param_str(params.get("appArgs")))
            self._subscribe(app, ch)
            if two is not None:
                self._subscribe(app, two)
        else:
            ch.originate_dialplan = (param_str(params.get("context")) or "default", extension,
                                     param_int(params.get("priority"), 1) or 1)  # fmt: skip
        snapshot = ch.to_json()
        self._start_dial(ch, two, timeout, variables or {})
        return snapshot

    def _request(self, tech: str, resource: str, cid: str | None, other: str | None) -> tuple[Channel, Channel | None]:
        """``ast_request``: a Local pair, or a channel on a configured endpoint; else 500 Allocation failed."""
        if tech.lower() == "local":
            one, two = self._new_local_pair(resource, cid, other)
            return one, two
        endpoint_name = resource.split("@")[-1].split("/")[0]
        endpoint = self.endpoints.get((tech.upper(), endpoint_name)) or self.endpoints.get((tech, endpoint_name))
        if endpoint is None:
            raise allocation_failed()
        self._pjsip_seq += 1
        ch = self._new_channel(f"{endpoint.technology}/{endpoint.resource}-{self._pjsip_seq:08x}",
                               endpoint.technology, cid, endpoint=endpoint)  # fmt: skip
        ch.dialstring = resource
        return ch, None

    def _start_dial(self, ch: Channel, two: Channel | None, timeout: int, variables: dict[str, str]) -> None:
        ch.dialing = True
        if two is not None and not self.dialplan.get(two.context, {}).get(two.exten):
            # local_call fails before anything is dialled: no Dial event, both halves go with cause 0
            self.log.info("Fake Asterisk: no extension {exten}@{context}", exten=two.exten, context=two.context)
            self._end_channel(two, 0)
            return
        if timeout > 0:
            self._later(ch, timeout, self._dial_timeout, ch)
        self._dial_event(ch, "")
        if two is not None:
            for var, value in reversed(list(variables.items())):
                if not var.endswith(")"):  # dialplan functions (CALLERID) arrive with the caller copy below
                    self._setvar(two, var, value)
            # the Local ;2 half sees the call from the other side: caller and connected line swap
            two.caller_name, two.caller_number = ch.connected_name, ch.connected_number
            two.connected_name, two.connected_number = ch.caller_name, ch.caller_number
            if ch.caller_name or ch.caller_number:
                self.emit("ChannelCallerId", [("caller_presentation", 0),
                          ("caller_presentation_txt", "Presentation Allowed, Not Screened"), ("channel", two)],
                          channels=[two])  # fmt: skip
                self.emit("ChannelConnectedLine", [("channel", two)], channels=[two])
            self._pbx_start(two, two.context, two.exten, 1)
            return
        endpoint = ch.endpoint
        assert endpoint is not None
        if endpoint.answer in ("auto", "busy") and endpoint.delay <= 0:
            self._far_end_result(ch)
            return
        self._state(ch, "Ringing")
        self._dial_event(ch, "RINGING")
        if endpoint.answer in ("auto", "busy"):
            self._later(ch, endpoint.delay, self._far_end_result, ch)

    def _far_end_result(self, ch: Channel) -> None:
        if not ch.alive or not ch.dialing:
            return
        assert ch.endpoint is not None
        if ch.endpoint.answer == "busy":
            self._dial_event(ch, "BUSY")
            self._end_channel(ch, 17)
        else:
            self._dial_answered(ch)

    def _dial_timeout(self, ch: Channel) -> None:
        if ch.alive and ch.dialing and not ch.ending:
            self._end_channel(ch, 19)

    def _dial_answered(self, ch: Channel) -> None:
        """The dialled channel answered: Up, Dial ANSWER, then Stasis or the dialplan (fact 18)."""
        if not ch.dialing or not ch.alive:
            return
        ch.dialing = False
        self._cancel_timers(ch)
        self._state(ch, "Up")
        self._dial_event(ch, "ANSWER", "" if ch.stasis else None)
        if ch.stasis:
            return  # created with /channels/create and dialled with /dial: already in Stasis
        if ch.originate_app:
            if not self._enter_stasis(ch, ch.originate_app, ch.originate_args, "originate"):
                self._end_channel(ch, 16)
        elif ch.originate_dialplan:
            self._pbx_start(ch, *ch.originate_dialplan)

    def create(self, params: dict[str, Any], variables: dict[str, str] | None) -> dict:
        """``POST /channels/create``: the channel enters Stasis at once, undialled (state Down)."""
        endpoint = param_str(params.get("endpoint"))
        app = param_str(params.get("app"))
        if param_str(params.get("originator")) and param_str(params.get("formats")):
            raise AriHttpError(400, "Originator and formats can't both be specified")
        if not endpoint:
            raise AriHttpError(400, "Endpoint must be specified")
        if not app:
            raise AriHttpError(400, "Missing parameter app")
        tech, _, resource = endpoint.partition("/")
        cid = param_str(params.get("channelId")) or None
        other = param_str(params.get("otherChannelId")) or None
        self._check_ids(cid, other or (f"{cid};2" if cid else None))
        ch, two = self._request(tech, resource, cid, other)
        for var, value in (variables or {}).items():
            self._set_any(ch, var, value, quiet=True)
        ch.pending_two = two
        self._subscribe(app, ch)
        snapshot = ch.to_json()
        args = split_args(param_str(params.get("appArgs")))
        ch.app_name, ch.app_data = "Stasis", ",".join([app, *args])
        self.emit("ChannelDialplan", [("dialplan_app", "Stasis"), ("dialplan_app_data", ch.app_data),
                                      ("channel", ch)], channels=[ch])  # fmt: skip
        if not self._enter_stasis(ch, app, args, "create", saved=("", "")):
            self._end_channel(ch, 16)
        return snapshot

    def dial(self, ch: Channel, params: dict[str, Any]) -> None:
        """``POST /channels/{id}/dial`` for a channel made with ``/channels/create``."""
        self.control(ch)
        if ch.state not in ("Down", "Rsrved"):
            raise AriHttpError(409, "Channel is not in the 'Down' state")
        if not ch.dialstring:
            raise AriHttpError(409, "Dialing a channel not created by ARI")
        two, ch.pending_two = ch.pending_two, None
        self._start_dial(ch, two, param_int(params.get("timeout"), 0), {})

    # ----------------------------------------------------------------------------------------------------------------
    # Inbound calls and the far end (scenario control)

    def inbound_call(
        self,
        caller_number: str,
        exten: str,
        *,
        answered: bool,
        app: str,
        args: Iterable[str],
        caller_name: str,
        endpoint: str,
        context: str,
        channel_id: str | None,
    ) -> Channel:
        """A call from ``endpoint`` that runs ``Stasis(app,args)`` in the dialplan (see `FakeAsterisk.inbound_call`)."""
        self._check_ids(channel_id)
        self._pjsip_seq += 1
        known = self.endpoints.get(("PJSIP", endpoint))
        ch = self._new_channel(f"PJSIP/{endpoint}-{self._pjsip_seq:08x}", "PJSIP", channel_id,
                               state="Up" if answered else "Ring", caller_name=caller_name,
                               caller_number=caller_number, context=context, exten=exten, endpoint=known)  # fmt: skip
        args = list(args)
        ch.priority = 2 if answered else 1
        ch.pbx_started = True
        ch.pbx_kind = "real"
        ch.nested_app = ("", "")
        if not self._enter_stasis(ch, app, args, "inbound", saved=("", "")):
            ch.variables["STASISSTATUS"] = "FAILED"
            self._end_channel(ch, 16)
        return ch

    def answer_remote(self, ch: Channel) -> None:
        """The far end of a ringing outbound channel answers."""
        if not ch.dialing:
            raise ValueError(f"Channel {ch.id} is not ringing")
        self._dial_answered(ch)

    def remote_hangup(self, ch: Channel, cause: int) -> None:
        """The far end hangs up: ChannelHangupRequest ``{cause}`` (no ``soft``), then the channel ends (fact 19)."""
        if ch.gone or ch.ending:
            return
        ch.hangupcause = cause
        if ch.dialing:
            status = {17: "BUSY", 34: "CONGESTION", 42: "CONGESTION", 18: "NOANSWER", 19: "NOANSWER"}
            self._dial_event(ch, status.get(cause, "CHANUNAVAIL"))
            self._end_channel(ch, cause)
            return
        self._hangup_request(ch, cause)
        self._end_channel(ch, cause)

    # ----------------------------------------------------------------------------------------------------------------
    # Stasis

    def control(self, ch: Channel) -> StasisState:
        """``find_control``: the channel's Stasis state, or 409 if it is not in an application."""
        if ch.stasis is None or ch.ending:
            raise AriHttpError(409, "Channel not in Stasis application")
        return ch.stasis

    @staticmethod
    def check_state(ch: Channel) -> None:
        """``channel_state_invalid``: 412 for Down, Rsrved and Ringing channels."""
        if ch.state in ("Down", "Rsrved", "Ringing"):
            raise AriHttpError(412, "Channel in invalid state")

    def _enter_stasis(self, ch: Channel, app: str, args: list[str], origin: str,
                      saved: tuple[str, str] | None = None) -> bool:  # fmt: skip
        """Run ``Stasis(app,args)`` on ``ch``: ``STASISSTATUS=""`` then StasisStart; False if the app does not exist."""
        if saved is None:
            saved = (ch.app_name, ch.app_data)
        ch.app_name, ch.app_data = "Stasis", ",".join([app, *args])
        if app not in self.apps:
            self.log.info("Fake Asterisk: Stasis app '{app}' doesn't exist", app=app)
            ch.variables["STASISSTATUS"] = "FAILED"
            return False
        self._setvar(ch, "STASISSTATUS", "")
        ch.stasis = StasisState(app=app, args=list(args), origin=origin, saved_app=saved)
        self._subscribe(app, ch)
        self.emit("StasisStart", [("args", list(args)), ("channel", ch)], channels=[ch], only_app=app)
        return True

    def _leave_stasis(self, ch: Channel, *, report_status: bool) -> tuple[str, str]:
        """StasisEnd; on hangup (``report_status``) running media fails and ``STASISSTATUS=SUCCESS`` is reported."""
        state = ch.stasis
        assert state is not None
        self._abort_commands(ch, hangup=report_status)
        self.emit("StasisEnd", [("channel", ch)], channels=[ch], only_app=state.app)
        ch.stasis = None
        self._subscribe(state.app, ch, -1)
        app = self.apps.get(state.app)
        if app is not None:
            self._maybe_unregister(app)
        if report_status:
            self._setvar(ch, "STASISSTATUS", "SUCCESS")
        elif state.origin == "dialplan":
            ch.variables["STASISSTATUS"] = "SUCCESS"
        else:
            ch.deferred_stasis_status = True
        if not report_status:
            ch.app_name, ch.app_data = state.saved_app
        return state.saved_app

    def continue_in_dialplan(self, ch: Channel, params: dict[str, Any]) -> None:
        """``POST /channels/{id}/continue`` (StasisEnd, then the dialplan runs; fact 25)."""
        self.control(ch)
        self.check_state(ch)
        context_p, exten_p = param_str(params.get("context")), param_str(params.get("extension"))
        priority = param_int(params.get("priority"), 0)
        label = param_str(params.get("label"))
        if context_p:
            context, exten = context_p, exten_p or "s"
        else:
            context, exten = ch.context, exten_p or ch.exten
        if label:
            if not label.isdigit():
                raise AriHttpError(404, "Requested label can not be found")
            priority = int(label)
            if priority == 0:
                raise AriHttpError(400, "Requested priority is illegal")
        elif not priority:
            priority = ch.priority + 1 if not context_p and not exten_p else 1
        nested = self.control(ch).origin != "dialplan"
        if nested and ch.nested_app is None:
            ch.nested_app = self.control(ch).saved_app
        self._leave_stasis(ch, report_status=False)
        self._pbx_start(ch, context, exten, priority, nested=nested)

    def move(self, ch: Channel, params: dict[str, Any]) -> None:
        """``POST /channels/{id}/move``: to a registered app, or ApplicationMoveFailed (204 either way)."""
        state = self.control(ch)
        app = param_str(params.get("app"))
        if not app:
            raise AriHttpError(400, "Missing parameter app")
        args = split_args(param_str(params.get("appArgs")))
        if not self._app_active(app):
            self.emit("ApplicationMoveFailed", [("channel", ch), ("destination", app), ("args", args)],
                      channels=[ch], only_app=state.app)  # fmt: skip
            return
        self._abort_commands(ch, hangup=False)
        self.emit("StasisEnd", [("channel", ch)], channels=[ch], only_app=state.app)
        self._subscribe(state.app, ch, -1)
        ch.deferred_stasis_status = True
        ch.stasis = StasisState(app=app, args=args, origin=state.origin, saved_app=state.saved_app)
        self._subscribe(app, ch)
        self.emit("StasisStart", [("args", args), ("channel", ch)], channels=[ch], only_app=app)

    def redirect(self, ch: Channel, params: dict[str, Any]) -> None:
        """``POST /channels/{id}/redirect``: Local channels cannot be redirected (204 and nothing happens)."""
        self.control(ch)
        self.check_state(ch)
        endpoint = param_str(params.get("endpoint"))
        if not endpoint:
            raise AriHttpError(400, "Required parameter 'endpoint' not provided.")
        tech, slash, resource = endpoint.partition("/")
        if not slash or not tech:
            raise AriHttpError(422, f"Endpoint parameter '{endpoint}' does not contain tech/resource")
        if not resource:
            raise AriHttpError(422, f"No resource provided in endpoint parameter '{endpoint}'")
        if tech.lower() != ch.tech.lower():
            raise AriHttpError(422, f"Endpoint technology '{tech}' does not match channel technology '{ch.tech}'")
        if ch.tech != "Local":
            self.redirects.append((ch.id, endpoint))

    # ----------------------------------------------------------------------------------------------------------------
    # Ending channels

    def hangup(self, ch: Channel, params: dict[str, Any]) -> None:
        """``DELETE /channels/{id}``: works on any channel (fact 19)."""
        reason, code = param_str(params.get("reason")), param_str(params.get("reason_code"))
        if reason and code:
            raise AriHttpError(400, "The reason and reason_code can't both be specified")
        if code:
            if not code.lstrip("-").isdigit():
                raise AriHttpError(400, "Invalid reason for hangup reason provided")
            cause = int(code)
        elif reason:
            if reason not in HANGUP_REASONS:
                raise AriHttpError(400, "Invalid reason for hangup reason provided")
            cause = HANGUP_REASONS[reason]
        else:
            cause = 16
        if ch.ending:
            return
        ch.hangupcause = cause
        self._hangup_request(ch, SOFT_EXPLICIT, soft=True)
        self._end_channel(ch, cause)

    def _end_channel(self, ch: Channel, cause: int, force: bool = False) -> None:
        """
        ``ch`` goes away with ``cause``: its activity is interrupted (bridge, Stasis, dialplan app), a Local ;2
        half reports ``{cause:16, soft:true}``, the Local peer gets a hangup request, then ChannelDestroyed, then the
        peer ends too (facts 19, 23; ordering as in the captures).
        """
        if ch.gone:
            return
        state = ch.stasis
        if state is not None and state.current is not None and not state.current.interruptible and not force:
            state.pending_end = cause
            ch.ending = True
            return
        ch.ending = True
        self._cancel_timers(ch)
        ch.dialing = False
        if ch.bridge is not None:
            self._bridge_leave(ch, ch.bridge, by_hangup=True)
        restore = None
        if ch.stasis is not None:
            restore = self._leave_stasis(ch, report_status=True)
        elif ch.deferred_stasis_status:
            self._setvar(ch, "STASISSTATUS", "SUCCESS")
        if ch.pbx_app == "Playback":
            self._setvar(ch, "PLAYBACKSTATUS", "SUCCESS")
        ch.pbx_app = ""
        if ch.pbx_kind == "real":
            self._hangup_request(ch, SOFT_APPUNLOAD, soft=True)
        if restore is not None:
            ch.app_name, ch.app_data = restore  # pbx_exec returns from Stasis()
        peer = ch.peer
        peer_cause = cause
        if peer is not None and not peer.gone and not peer.ending:
            if not (peer.half == 1 and peer.dialing):
                self._hangup_request(peer, cause)
            if peer.hangupcause is not None:
                peer_cause = peer.hangupcause
        else:
            peer = None
        if ch.pbx_kind and ch.nested_app is not None:
            ch.app_name, ch.app_data = ch.nested_app  # the PBX has ended: the application before it shows again
        self.emit("ChannelDestroyed", [("cause", cause), ("cause_txt", cause_text(cause)), ("channel", ch)],
                  channels=[ch])  # fmt: skip
        self._destroy(ch)
        if peer is not None:
            self._end_channel(peer, peer_cause, force=force)
        for snoop in list(ch.snoops):
            if snoop.alive and not snoop.ending:
                self.remote_hangup(snoop, 16)

    def _destroy(self, ch: Channel) -> None:
        ch.gone = True
        self._cancel_timers(ch)
        self.channels.pop(ch.id, None)
        for app in list(self.apps.values()):
            app.channel_subs.pop(ch.id, None)
            self._maybe_unregister(app)
        for pb in [p for p in self.playbacks.values() if p.target is ch]:
            self._cancel_timers(pb)
            self.playbacks.pop(pb.id, None)
        if ch.audiosocket is not None:
            conn, ch.audiosocket = ch.audiosocket, None
            try:
                conn.close()
            except Exception:
                self.log.failure("Closing the fake AudioSocket connection failed")

    # ----------------------------------------------------------------------------------------------------------------
    # Channel operations

    def answer(self, ch: Channel) -> None:
        """``POST /channels/{id}/answer`` (a second answer is a no-op; fact 18)."""
        self.control(ch)
        self.check_state(ch)
        if ch.state != "Up":
            self._answer(ch)

    def simple_op(self, ch: Channel, op: str, params: dict[str, Any]) -> None:
        """ring, ring stop, progress, hold, unhold, moh, silence, mute, unmute: 204 after the usual checks."""
        self.control(ch)
        self.check_state(ch)
        if op in ("mute", "unmute"):
            direction = param_str(params.get("direction")) or "both"
            if direction not in ("both", "in", "out"):
                raise AriHttpError(400, "Invalid direction specified")
        if op == "hold":
            self.emit("ChannelHold", [("channel", ch)], channels=[ch])
        elif op == "unhold":
            self.emit("ChannelUnhold", [("channel", ch)], channels=[ch])

    def get_variable(self, ch: Channel, name: str) -> str:
        """``GET /channels/{id}/variable`` (plain variables and a few dialplan functions)."""
        if name.endswith(")"):
            value = self._read_function(ch, name)
            if value is None:
                raise AriHttpError(500, "Unable to read provided function")
            return value
        if name in ch.variables:
            return ch.variables[name]
        if name in self.global_vars:
            return self.global_vars[name]
        raise AriHttpError(404, "Provided variable was not found")

    def _read_function(self, ch: Channel, expr: str) -> str | None:
        match = re.fullmatch(r"([A-Z_]+)\((.*)\)", expr)
        if not match:
            return None
        func, arg = match.group(1), match.group(2).strip().lower()
        if func == "CHANNEL":
            values = {"name": ch.name, "uniqueid": ch.id, "linkedid": ch.id, "state": ch.state,
                      "language": ch.language, "channeltype": ch.tech, "context": ch.context, "exten": ch.exten,
                      "audionativeformat": f"({ch.formats.split(',')[0] if ch.formats else 'ulaw'})"}  # fmt: skip
            return values.get(arg)
        if func == "CALLERID":
            return {"name": ch.caller_name, "num": ch.caller_number, "number": ch.caller_number,
                    "all": f'"{ch.caller_name}" <{ch.caller_number}>'}.get(arg)  # fmt: skip
        if func == "CONNECTEDLINE":
            return {"name": ch.connected_name, "num": ch.connected_number, "number": ch.connected_number}.get(arg)
        return None

    def set_variable(self, ch: Channel, name: str, value: str | None, report_events: bool = False) -> None:
        """``POST /channels/{id}/variable`` (no value unsets; ``report_events`` adds it to ``channelvars``)."""
        self.control(ch)
        if report_events and name not in ch.reported:
            ch.reported.append(name)
        if not self._set_any(ch, name, value):
            raise AriHttpError(400, "Failed to execute function")

    def _set_any(self, ch: Channel, name: str, value: str | None, quiet: bool = False) -> bool:
        if name.endswith(")"):
            match = re.fullmatch(r"(CALLERID|CONNECTEDLINE)\((\w+)\)", name)
            if not match:
                return False
            which, field_name = match.group(1), match.group(2).lower()
            prefix = "caller" if which == "CALLERID" else "connected"
            if field_name == "name":
                setattr(ch, f"{prefix}_name", value or "")
            elif field_name in ("num", "number"):
                setattr(ch, f"{prefix}_number", value or "")
            elif field_name == "all":
                name_v, num_v = parse_caller_id(value or "")
                setattr(ch, f"{prefix}_name", name_v)
                setattr(ch, f"{prefix}_number", num_v)
            else:
                return False
            if not quiet:
                if which == "CALLERID":
                    self.emit("ChannelCallerId", [("caller_presentation", 0),
                              ("caller_presentation_txt", "Presentation Allowed, Not Screened"), ("channel", ch)],
                              channels=[ch])  # fmt: skip
                else:
                    self.emit("ChannelConnectedLine", [("channel", ch)], channels=[ch])
            return True
        if quiet:
            if value is None:
                ch.variables.pop(name, None)
            else:
                ch.variables[name] = value
        else:
            self._setvar(ch, name, value)
        return True

    # ----------------------------------------------------------------------------------------------------------------
    # Snoop and externalMedia

    def snoop(self, target_id: str, params: dict[str, Any], snoop_id: str | None) -> dict:
        """``POST /channels/{id}/snoop[/{snoopId}]``: a ``Snoop/…`` channel, already Up, in ``app``."""
        directions = ("both", "out", "in")
        spy = param_str(params.get("spy")) or "none"
        whisper = param_str(params.get("whisper")) or "none"
        if spy != "none" and spy not in directions:
            raise AriHttpError(400, "Invalid direction specified for spy")
        if whisper != "none" and whisper not in directions:
            raise AriHttpError(400, "Invalid direction specified for whisper")
        if spy == "none" and whisper == "none":
            raise AriHttpError(400, "Direction must be specified for at least spy or whisper")
        app = param_str(params.get("app"))
        if not app:
            raise AriHttpError(400, "Application name is required")
        target = self.channels.get(target_id)
        if target is None:
            raise AriHttpError(404, "Provided channel was not found")
        snoop_id = snoop_id or param_str(params.get("snoopId")) or None
        self._check_ids(snoop_id)
        self._snoop_seq += 1
        ch = self._new_channel(f"Snoop/{target.id}-{self._snoop_seq:08x}", "Snoop", snoop_id, state="Up")
        ch.snoop_target = target
        target.snoops.append(ch)
        snapshot = ch.to_json()
        if not self._enter_stasis(ch, app, split_args(param_str(params.get("appArgs"))), "snoop"):
            self._end_channel(ch, 16)
        return snapshot

    def external_media_check(self, params: dict[str, Any]) -> tuple[str, str, str, str, str]:
        """
        Validate ``POST /channels/externalMedia`` (before any connection is made).

        :return: ``(kind, host, port, format, data)`` with kind ``audiosocket`` or ``rtp``.
        """
        app = param_str(params.get("app"))
        host = param_str(params.get("external_host"))
        fmt = param_str(params.get("format"))
        encapsulation = param_str(params.get("encapsulation")) or "rtp"
        transport = param_str(params.get("transport")) or "udp"
        data = param_str(params.get("data"))
        if not app:
            raise AriHttpError(400, "app cannot be empty")
        if not host:
            raise AriHttpError(400, "external_host cannot be empty")
        if not fmt:
            raise AriHttpError(400, "format cannot be empty")
        if encapsulation.lower() == "audiosocket" and transport.lower() != "tcp":
            raise AriHttpError(400, "transport must be 'tcp' for audiosocket encapsulation")
        if (encapsulation.lower(), transport.lower()) not in (("rtp", "udp"), ("audiosocket", "tcp")):
            raise AriHttpError(501, "The encapsulation and/or transport is not supported")
        if fmt not in CODECS:
            raise AriHttpError(400, f"Provided format ({fmt}) was not found")
        hostname, colon, port = host.rpartition(":")
        if not colon or not hostname or not port.isdigit():
            raise AriHttpError(400, "external_host must be specified as <host>:<port>")
        if encapsulation.lower() == "audiosocket":
            if not data:
                raise AriHttpError(400, "data can not be empty")
            if not UUID_RE.match(data):
                raise AriHttpError(500, "An internal error prevented this request from being handled")
        self._check_ids(param_str(params.get("channelId")) or None)
        return encapsulation.lower(), hostname, port, fmt, data

    def external_media_create(self, params: dict[str, Any], checked: tuple[str, str, str, str, str],
                              connection: Any, variables: dict[str, str] | None) -> dict:  # fmt: skip
        """Create the externalMedia channel once its connection (if any) is up; returns the response body."""
        kind, host, port, fmt, data = checked
        app = param_str(params.get("app"))
        cid = param_str(params.get("channelId")) or None
        self._check_ids(cid)
        if kind == "audiosocket":
            ch = self._new_channel(f"AudioSocket/{host}:{port}-{data}", "AudioSocket", cid)
            ch.dialstring = f"{host}:{port}/{data}"
            extra = {"AUDIOSOCKET_SERVICE": f"{host}:{port}", "AUDIOSOCKET_UUID": data}
            ch.audiosocket = connection
        else:
            ch = self._new_channel(f"UnicastRTP/{host}:{port}-0x{abs(hash((host, port, self._seq))) % 16**12:x}",
                                   "UnicastRTP", cid)  # fmt: skip
            ch.dialstring = f"{host}:{port}/c({fmt})"
            extra = {"UNICASTRTP_LOCAL_PORT": str(10000 + 2 * (self._seq % 5000)), "UNICASTRTP_LOCAL_ADDRESS":
                     "127.0.0.1"}  # fmt: skip
        ch.formats = fmt
        ch.variables.update(extra)
        for var, value in (variables or {}).items():
            self._set_any(ch, var, value, quiet=True)
        ch.app_name, ch.app_data = "AppDial2", "(Outgoing Line)"
        self._subscribe(app, ch)
        snapshot = ch.to_json()
        snapshot["channelvars"] = extra
        ch.originate_app = app
        ch.originate_args = [data] if data else []
        ch.dialing = True
        self._dial_event(ch, "")
        self._dial_answered(ch)
        return snapshot

    def audiosocket_lost(self, ch: Channel) -> None:
        """The AudioSocket server closed the connection: the channel hangs up like a far-end hangup."""
        if ch.alive and not ch.ending and ch.audiosocket is not None:
            ch.audiosocket = None
            self.remote_hangup(ch, 16)



__all__ = ["AsteriskEngine"]
