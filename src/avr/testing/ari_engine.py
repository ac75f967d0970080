"""
The behaviour of the fake Asterisk: channels (Local pairs and a small dialplan interpreter, PJSIP-like endpoints,
AudioSocket/UnicastRTP externalMedia, snoop), Stasis applications and their subscriptions, events, hangups, bridges.
Media (playbacks, recordings, DTMF) live in `avr.testing.ari_media`, which this class mixes in.

All timing comes from the injected clock. Every rule below reproduces what Asterisk 22.10.1 did in the captures of
``/work/shared/fixtures/asterisk/ari`` (the "facts" of its README); where they are silent, the rule follows the
Asterisk source and says so.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from twisted.logger import Logger

from avr.testing.ari_media import MediaMixin, valid_dtmf
from avr.testing.ari_model import (
    ASTERISK_ID,
    CODECS,
    App,
    Bridge,
    Channel,
    DialplanStep,
    Endpoint,
    Playback,
    LiveRecording,
    StasisState,
    StoredRecording,
    cause_text,
    format_timestamp,
    parse_caller_id,
)

UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
BRIDGE_TYPES = frozenset({"mixing", "holding", "dtmf_events", "proxy_media", "video_sfu", "video_single", "sdp_label"})

#: The ``soft`` hangup flags Asterisk reports as ``cause`` in ChannelHangupRequest (fact 19).
SOFT_EXPLICIT = 32
SOFT_APPUNLOAD = 16
SOFT_SHUTDOWN = 4


class AriHttpError(Exception):
    """
    An ARI error response.

    :ivar status: the HTTP status.
    :ivar body: the JSON body (``{"message": ...}`` unless given).
    """

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message
        self.body = body if body is not None else {"message": message}


def allocation_failed() -> AriHttpError:
    """Asterisk's ``ast_ari_response_alloc_failed``: 500 ``{"error":"Allocation failed"}`` (fact 11)."""
    return AriHttpError(500, "Allocation failed", {"error": "Allocation failed"})


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class AsteriskEngine(MediaMixin):
    """
    The simulated Asterisk. Methods named like ARI operations take already-parsed parameters and either return the
    JSON-ready result or raise `AriHttpError`; ``_``-prefixed methods are internal state transitions.

    :param clock: an ``IReactorTime`` (``task.Clock`` in unit tests).
    :param wall_start: the wall-clock time (epoch seconds) at ``clock.seconds()`` now; ids and timestamps use it.
    :param dialplan: ``{context: {exten: [DialplanStep]}}`` for Local channels.
    :param sounds: ``{name: seconds}`` for ``sound:`` media.
    :param audiosocket_connect: ``(host, port, uuid_bytes, on_lost) -> Deferred`` firing with an object that has
        ``close()``; ``None`` skips the TCP connection (pure unit tests).
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
        audiosocket_connect: Callable[..., Any] | None = None,
        uuid_factory: Callable[[], str] | None = None,
    ) -> None:
        self.clock = clock
        self._clock0 = clock.seconds()
        self._wall0 = wall_start
        self.dialplan = dialplan
        self.sounds = sounds
        self.audiosocket_connect = audiosocket_connect
        self._uuid = uuid_factory or (lambda: str(uuid.uuid4()))
        self.endpoints: dict[tuple[str, str], Endpoint] = {}
        #: global variables as configured (``[globals]``): restored on every restart
        self.config_globals: dict[str, str] = {}
        self.stored: dict[str, StoredRecording] = {}
        #: every event delivered to a socket: ``(application, event dict)``
        self.delivered: list[tuple[str, dict]] = []
        #: DTMF sent to channels whose far end is outside the fake (PJSIP), per channel id
        self.sent_dtmf: dict[str, list[str]] = {}
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
        self.emit(
            "Dial",
            [("dialstatus", status), ("forward", ""), ("dialstring", ch.dialstring if dialstring is None else
                                                        dialstring), ("peer", ch)],
            channels=[ch],
        )

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

    def originate(self, params: dict[str, Any], variables: dict[str, str] | None, channel_id: str | None = None) -> dict:
        """``POST /channels`` and ``POST /channels/{channelId}``: returns the new channel (state Down, fact 15)."""
        endpoint = _s(params.get("endpoint"))
        app = _s(params.get("app"))
        extension = _s(params.get("extension"))
        originator = _s(params.get("originator"))
        formats = _s(params.get("formats"))
        channel_id = channel_id or _s(params.get("channelId")) or None
        other_id = _s(params.get("otherChannelId")) or None
        if not endpoint:
            raise AriHttpError(400, "Endpoint must be specified")
        if originator and formats:
            raise AriHttpError(400, "Originator and formats can't both be specified")
        tech, _, resource = endpoint.partition("/")
        if not tech or not resource:
            raise AriHttpError(400, "Invalid endpoint specified")
        if not app and not extension:
            raise AriHttpError(400, "Application or extension must be specified")
        timeout = _atoi(params.get("timeout"), 30)
        name, number = parse_caller_id(_s(params.get("callerId")))
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
            ch.originate_args = _split_args(_s(params.get("appArgs")))
            self._subscribe(app, ch)
            if two is not None:
                self._subscribe(app, two)
        else:
            ch.originate_dialplan = (_s(params.get("context")) or "default", extension,
                                     _atoi(params.get("priority"), 1) or 1)  # fmt: skip
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
        endpoint = _s(params.get("endpoint"))
        app = _s(params.get("app"))
        if _s(params.get("originator")) and _s(params.get("formats")):
            raise AriHttpError(400, "Originator and formats can't both be specified")
        if not endpoint:
            raise AriHttpError(400, "Endpoint must be specified")
        if not app:
            raise AriHttpError(400, "Missing parameter app")
        tech, _, resource = endpoint.partition("/")
        cid = _s(params.get("channelId")) or None
        other = _s(params.get("otherChannelId")) or None
        self._check_ids(cid, other or (f"{cid};2" if cid else None))
        ch, two = self._request(tech, resource, cid, other)
        for var, value in (variables or {}).items():
            self._set_any(ch, var, value, quiet=True)
        ch.pending_two = two
        self._subscribe(app, ch)
        snapshot = ch.to_json()
        args = _split_args(_s(params.get("appArgs")))
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
        self._start_dial(ch, two, _atoi(params.get("timeout"), 0), {})

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
        context_p, exten_p = _s(params.get("context")), _s(params.get("extension"))
        priority = _atoi(params.get("priority"), 0)
        label = _s(params.get("label"))
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
        app = _s(params.get("app"))
        if not app:
            raise AriHttpError(400, "Missing parameter app")
        args = _split_args(_s(params.get("appArgs")))
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
        endpoint = _s(params.get("endpoint"))
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
        reason, code = _s(params.get("reason")), _s(params.get("reason_code"))
        if reason and code:
            raise AriHttpError(400, "The reason and reason_code can't both be specified")
        if code:
            if not code.lstrip("-").isdigit():
                raise AriHttpError(400, "Invalid reason for hangup reason provided")
            cause = int(code)
        elif reason:
            from avr.testing.ari_model import HANGUP_REASONS

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
    # The dialplan interpreter (Local channels)

    def _pbx_start(self, ch: Channel, context: str, exten: str, priority: int, nested: bool = False) -> None:
        steps = self.dialplan.get(context, {}).get(exten)
        if not steps or priority > len(steps) or priority < 1:
            self.log.info("Fake Asterisk: no extension {exten}@{context} for {name}", exten=exten, context=context,
                          name=ch.name)  # fmt: skip
            ch.context, ch.exten, ch.priority = context, exten, priority
            self._end_channel(ch, 0)
            return
        ch.pbx_started = True
        if not ch.pbx_kind:
            ch.pbx_kind = "nested" if nested else "real"
            if ch.nested_app is None:
                ch.nested_app = (ch.app_name, ch.app_data)
        ch.context, ch.exten, ch.priority = context, exten, priority
        self._pbx_run(ch)

    def _pbx_run(self, ch: Channel) -> None:
        while ch.alive and not ch.ending and ch.stasis is None:
            steps = self.dialplan.get(ch.context, {}).get(ch.exten, [])
            if ch.priority > len(steps):
                self._end_channel(ch, ch.hangupcause if ch.hangupcause is not None else 16)
                return
            step = steps[ch.priority - 1]
            data = self._substitute(ch, step.data)
            ch.saved_app = (ch.app_name, ch.app_data)
            ch.app_name, ch.app_data = step.app, data
            self.emit("ChannelDialplan", [("dialplan_app", step.app), ("dialplan_app_data", data),
                                          ("channel", ch)], channels=[ch])  # fmt: skip
            delay = self._exec_app(ch, step.app, data)
            if delay is None or not ch.alive or ch.ending or ch.stasis is not None:
                return
            if delay > 0:
                self._later(ch, delay, self._pbx_next, ch)
                return
            ch.priority += 1

    def _pbx_next(self, ch: Channel) -> None:
        if not ch.alive or ch.ending:
            return
        if ch.pbx_app == "Playback":
            self._setvar(ch, "PLAYBACKSTATUS", "SUCCESS")
        ch.pbx_app = ""
        ch.priority += 1
        self._pbx_run(ch)

    def _substitute(self, ch: Channel, data: str) -> str:
        return re.sub(r"\$\{([^}]+)\}", lambda m: ch.variables.get(m.group(1), self.global_vars.get(m.group(1), "")),
                      data)  # fmt: skip

    def _exec_app(self, ch: Channel, app: str, data: str) -> float | None:
        """Run one dialplan application; returns the delay before the next priority, or None to stop here."""
        name = app.lower()
        args = [a.strip() for a in data.split(",")] if data else []
        if name == "answer":
            if ch.state == "Up":
                return 0.0
            self._answer(ch)
            return 0.5  # Answer() waits up to 500 ms for media before the next priority
        if name == "wait":
            return _float(args[0] if args else "0")
        if name == "hangup":
            cause = _atoi(args[0] if args else "", 0) or (ch.hangupcause if ch.hangupcause is not None else 16)
            ch.hangupcause = cause
            self._end_channel(ch, cause)
            return None
        if name in ("ringing", "progress"):
            peer = ch.peer
            if peer is not None and peer.dialing and name == "ringing":
                self._state(peer, "Ringing")
                self._dial_event(peer, "RINGING")
            return 0.0
        if name in ("busy", "congestion"):
            cause, status = (17, "BUSY") if name == "busy" else (34, "CONGESTION")
            self._state(ch, "Busy" if name == "busy" else ch.state)
            ch.hangupcause = cause
            peer = ch.peer
            if peer is not None and peer.dialing:
                self._dial_event(peer, status)
                self._end_channel(peer, 0)
            else:
                self._end_channel(ch, cause)
            return None
        if name == "playback":
            seconds = self.sounds.get(args[0] if args else "")
            if seconds is None:
                self._setvar(ch, "PLAYBACKSTATUS", "FAILED")
                return 0.0
            ch.pbx_app = "Playback"
            return seconds
        if name == "senddtmf":
            digits = args[0] if args else ""
            between = _atoi(args[1] if len(args) > 1 else "", 0) or 250
            duration = _atoi(args[2] if len(args) > 2 else "", 0) or 100
            receiver = ch.peer if ch.peer is not None and ch.peer.alive else None
            return self._dtmf_stream(ch, receiver, digits, 0, between, duration, 0, owner=ch)
        if name == "set":
            var, _, value = data.partition("=")
            if var:
                self._set_any(ch, var.strip(), value)
            return 0.0
        if name == "stasis":
            stasis_app = args[0] if args else ""
            if not self._enter_stasis(ch, stasis_app, args[1:], "dialplan", saved=ch.saved_app):
                self._setvar(ch, "STASISSTATUS", "FAILED")
                return 0.0
            return None
        return 0.0  # NoOp, Verbose, Log and anything else the fake does not model

    def _answer(self, ch: Channel) -> None:
        self._state(ch, "Up")
        peer = ch.peer
        if peer is not None and peer.dialing:
            self._dial_answered(peer)

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
            direction = _s(params.get("direction")) or "both"
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
        spy = _s(params.get("spy")) or "none"
        whisper = _s(params.get("whisper")) or "none"
        if spy != "none" and spy not in directions:
            raise AriHttpError(400, "Invalid direction specified for spy")
        if whisper != "none" and whisper not in directions:
            raise AriHttpError(400, "Invalid direction specified for whisper")
        if spy == "none" and whisper == "none":
            raise AriHttpError(400, "Direction must be specified for at least spy or whisper")
        app = _s(params.get("app"))
        if not app:
            raise AriHttpError(400, "Application name is required")
        target = self.channels.get(target_id)
        if target is None:
            raise AriHttpError(404, "Provided channel was not found")
        snoop_id = snoop_id or _s(params.get("snoopId")) or None
        self._check_ids(snoop_id)
        self._snoop_seq += 1
        ch = self._new_channel(f"Snoop/{target.id}-{self._snoop_seq:08x}", "Snoop", snoop_id, state="Up")
        ch.snoop_target = target
        target.snoops.append(ch)
        snapshot = ch.to_json()
        if not self._enter_stasis(ch, app, _split_args(_s(params.get("appArgs"))), "snoop"):
            self._end_channel(ch, 16)
        return snapshot

    def external_media_check(self, params: dict[str, Any]) -> tuple[str, str, str, str, str]:
        """
        Validate ``POST /channels/externalMedia`` (before any connection is made).

        :return: ``(kind, host, port, format, data)`` with kind ``audiosocket`` or ``rtp``.
        """
        app = _s(params.get("app"))
        host = _s(params.get("external_host"))
        fmt = _s(params.get("format"))
        encapsulation = _s(params.get("encapsulation")) or "rtp"
        transport = _s(params.get("transport")) or "udp"
        data = _s(params.get("data"))
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
        self._check_ids(_s(params.get("channelId")) or None)
        return encapsulation.lower(), hostname, port, fmt, data

    def external_media_create(self, params: dict[str, Any], checked: tuple[str, str, str, str, str],
                              connection: Any, variables: dict[str, str] | None) -> dict:  # fmt: skip
        """Create the externalMedia channel once its connection (if any) is up; returns the response body."""
        kind, host, port, fmt, data = checked
        app = _s(params.get("app"))
        cid = _s(params.get("channelId")) or None
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

    # ----------------------------------------------------------------------------------------------------------------
    # Bridges

    def bridge_create(self, params: dict[str, Any], bridge_id: str | None = None) -> dict:
        """``POST /bridges`` and ``POST /bridges/{bridgeId}`` (no BridgeCreated event: fact 23)."""
        bridge_id = bridge_id or _s(params.get("bridgeId")) or None
        types = [t.strip() for t in (_s(params.get("type")) or "mixing").split(",") if t.strip()]
        if not types or any(t not in BRIDGE_TYPES for t in types):
            raise AriHttpError(500, f"Unable to create bridge. Possible duplicate bridge id '{bridge_id or '(null)'}'")
        if bridge_id and bridge_id in self.bridges:
            raise AriHttpError(409, f"Bridge with id '{bridge_id}' already exists")
        bridge = Bridge(id=bridge_id or self._uuid(), name=_s(params.get("name")), types=types,
                        creationtime=self.wall())  # fmt: skip
        self.bridges[bridge.id] = bridge
        return bridge.to_json()

    def _bridge_controls(self, params: dict[str, Any]) -> list[Channel]:
        ids = [c for c in _s(params.get("channel")).split(",") if c]
        if not ids:
            raise AriHttpError(400, "Missing parameter channel")
        out = []
        for cid in ids:
            ch = self.channels.get(cid)
            if ch is None:
                raise AriHttpError(400, "Channel not found")
            if ch.stasis is None or ch.ending:
                raise AriHttpError(422, "Channel not in Stasis application")
            out.append(ch)
        return out

    def bridge_add(self, bridge: Bridge, params: dict[str, Any]) -> None:
        """``POST /bridges/{id}/addChannel`` (comma list; a channel already inside leaves and re-enters)."""
        for ch in self._bridge_controls(params):
            self._bridge_join(bridge, ch)

    def bridge_remove(self, bridge: Bridge, params: dict[str, Any]) -> None:
        """``POST /bridges/{id}/removeChannel`` (422 if a channel is not in this bridge)."""
        chans = self._bridge_controls(params)
        if any(ch.bridge is not bridge for ch in chans):
            raise AriHttpError(422, "Channel not in this bridge")
        for ch in chans:
            self._bridge_leave(ch, bridge, by_hangup=False)

    def _bridge_join(self, bridge: Bridge, ch: Channel) -> None:
        if ch.bridge is not None:
            self._bridge_leave(ch, ch.bridge, by_hangup=False)
        bridge.members.append(ch)
        ch.bridge = bridge
        if ch.stasis is not None:
            app = self.apps.get(ch.stasis.app)
            if app is not None:
                app.sub(app.bridge_subs, bridge.id, 1)
        self.emit("ChannelEnteredBridge", [("bridge", bridge), ("channel", ch)], channels=[ch], bridges=[bridge])
        self._update_bridgepeers(bridge)

    def _bridge_leave(self, ch: Channel, bridge: Bridge, *, by_hangup: bool) -> None:
        """A channel leaves: BRIDGEPEER cleared, ChannelLeftBridge; the app stays subscribed after a hangup."""
        if ch.variables.get("BRIDGEPEER"):
            self._setvar(ch, "BRIDGEPEER", "")
        if ch in bridge.members:
            bridge.members.remove(ch)
        ch.bridge = None
        self.emit("ChannelLeftBridge", [("bridge", bridge), ("channel", ch)], channels=[ch], bridges=[bridge])
        if not by_hangup and ch.stasis is not None:
            app = self.apps.get(ch.stasis.app)
            if app is not None:
                app.sub(app.bridge_subs, bridge.id, -1)
        if len(bridge.members) >= 2:
            self._update_bridgepeers(bridge)

    def _update_bridgepeers(self, bridge: Bridge) -> None:
        """Each member's BRIDGEPEER lists the others, newest first (set for every member whenever 2+ are in)."""
        if bridge.bridge_type == "holding" or len(bridge.members) < 2:
            return
        names = [m.name if isinstance(m, Channel) else m for m in bridge.members]
        for index, member in enumerate(list(bridge.members)):
            if isinstance(member, Channel):
                others = [n for i, n in enumerate(names) if i != index]
                self._setvar(member, "BRIDGEPEER", ",".join(reversed(others)))

    def _pseudo_join(self, bridge: Bridge, name: str) -> None:
        bridge.members.append(name)
        self._update_bridgepeers(bridge)

    def _pseudo_leave(self, bridge: Bridge, name: str) -> None:
        if name in bridge.members:
            bridge.members.remove(name)
            if len(bridge.members) >= 2:
                self._update_bridgepeers(bridge)

    def bridge_destroy(self, bridge: Bridge) -> None:
        """``DELETE /bridges/{id}``: members leave; BridgeDestroyed only if the app is still subscribed (fact 23)."""
        for member in list(bridge.members):
            if isinstance(member, Channel):
                self._bridge_leave(member, bridge, by_hangup=False)
        self._stop_bridge_media(bridge)
        self.emit("BridgeDestroyed", [("bridge", bridge)], bridges=[bridge])
        self._drop_bridge(bridge)

    def _drop_bridge(self, bridge: Bridge) -> None:
        bridge.gone = True
        self.bridges.pop(bridge.id, None)
        for app in self.apps.values():
            app.bridge_subs.pop(bridge.id, None)

    # ----------------------------------------------------------------------------------------------------------------
    # Applications REST

    def app_subscription(self, app: App, params: dict[str, Any], subscribe: bool) -> dict:
        """``POST|DELETE /applications/{name}/subscription``."""
        source = _s(params.get("eventSource"))
        if not source:
            raise AriHttpError(400, "Missing parameter eventSource")
        for item in source.split(","):
            scheme, _, name = item.partition(":")
            if scheme == "channel":
                table, exists = app.channel_subs, name in self.channels
            elif scheme == "bridge":
                table, exists = app.bridge_subs, name in self.bridges
            elif scheme == "endpoint":
                tech, _, res = name.partition("/")
                exists = any(e.technology == tech and (not res or e.resource == res) for e in self.endpoints.values())
                table = None
            elif scheme == "deviceState":
                table, exists = None, True
            else:
                raise AriHttpError(400, "Invalid event source URI scheme")
            listing = app.endpoint_subs if scheme == "endpoint" else app.device_subs
            if not subscribe:
                present = table.get(name, 0) > 0 if table is not None else name in listing
                if not present:
                    raise AriHttpError(422, "Event source was not subscribed to")
                if table is not None:
                    app.sub(table, name, -1)
                else:
                    listing.remove(name)
                continue
            if not exists:
                raise AriHttpError(422, "Event source does not exist")
            if table is not None:
                app.sub(table, name, 1)
            elif name not in listing:
                listing.append(name)
        return app.to_json()

    def app_filter(self, app: App, body: Any) -> dict:
        """``PUT /applications/{name}/eventFilter``: the JSON body is the filter; ``{}`` clears it."""
        if not isinstance(body, dict):
            raise AriHttpError(400, "Invalid format definition")
        for key in ("allowed", "disallowed"):
            if key in body and (not isinstance(body[key], list) or not all(isinstance(f, dict) for f in body[key])):
                raise AriHttpError(400, "Invalid format definition")
        if not body:
            app.allowed, app.disallowed = [], []
        if "allowed" in body:
            app.allowed = list(body["allowed"])
        if "disallowed" in body:
            app.disallowed = list(body["disallowed"])
        return app.to_json()


def _s(value: Any) -> str:
    """A parameter as a string (JSON bodies may carry numbers and booleans)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def _atoi(value: Any, default: int) -> int:
    """C ``atoi`` on a parameter: leading digits, 0 for garbage; ``default`` when absent."""
    text = _s(value).strip()
    if not text:
        return default
    match = re.match(r"[-+]?\d+", text)
    return int(match.group(0)) if match else 0


def _float(value: str) -> float:
    try:
        return max(float(value), 0.0)
    except ValueError:
        return 0.0


def _split_args(value: str) -> list[str]:
    return value.split(",") if value else []


__all__ = ["AriHttpError", "AsteriskEngine", "allocation_failed", "valid_dtmf"]
