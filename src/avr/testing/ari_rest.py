"""
The ARI REST operations of the fake Asterisk: the route table (Asterisk 22.10's paths and methods) and what each
operation does. A handler takes the composed Asterisk and the parsed request, looks up the object the path names
(404 with Asterisk's message when it does not exist), runs the checks Asterisk makes first, and calls the
component that does the work; it returns a JSON value (200), ``None`` (204), an `AriResponse`, or a Deferred of one
of them, or raises `AriHttpError`. The HTTP format around them is `avr.testing.ari_http`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from avr.testing.ari_applications import ASTERISK_ID
from avr.testing.ari_clock import format_timestamp
from avr.testing.ari_http import AriRequest, AriResponse
from avr.testing.ari_model import App, Bridge, Channel, Endpoint, LiveRecording, Playback, StoredRecording
from avr.testing.ari_params import AriHttpError, param_str
from avr.testing.ari_recordings import check_limits, recording_mime

if TYPE_CHECKING:
    from avr.testing.ari_asterisk import Asterisk

ASTERISK_VERSION = "22.10.1"
MODULES = {
    "res_ari.so": ("Asterisk RESTful Interface", 13),
    "res_stasis.so": ("Stasis application support", 12),
    "res_ari_channels.so": ("RESTful API module - Channel resources", 0),
    "res_ari_bridges.so": ("RESTful API module - Bridge resources", 0),
    "chan_audiosocket.so": ("AudioSocket Channel", 0),
    "res_audiosocket.so": ("AudioSocket support", 1),
    "app_audiosocket.so": ("AudioSocket Application", 0),
}
T = TypeVar("T")
Handler = Callable[["Asterisk", AriRequest], Any]


# --------------------------------------------------------------------------------------------------------------------
# Lookups and parameters


def _find(table: Mapping[str, T], key: str, message: str) -> T:
    found = table.get(key)
    if found is None:
        raise AriHttpError(404, message)
    return found


def _channel(a: Asterisk, r: AriRequest, message: str = "Channel not found") -> Channel:
    return _find(a.channels.by_id, r.path_args["channelId"], message)


def _bridge(a: Asterisk, r: AriRequest) -> Bridge:
    return _find(a.bridges.by_id, r.path_args["bridgeId"], "Bridge not found")


def _app(a: Asterisk, r: AriRequest) -> App:
    return _find(a.apps.by_name, r.path_args["applicationName"], "Application not found")


def _playback(a: Asterisk, r: AriRequest) -> Playback:
    return _find(a.playbacks.by_id, r.path_args["playbackId"], "Playback not found")


def _live(a: Asterisk, r: AriRequest) -> LiveRecording:
    return _find(a.recordings.live, r.path_args["recordingName"], "Recording not found")


def _stored(a: Asterisk, r: AriRequest) -> StoredRecording:
    return _find(a.recordings.stored, r.path_args["recordingName"], "Recording not found")


def _variables(r: AriRequest) -> dict[str, str] | None:
    """The ``variables`` object of a JSON body (``{"name": "value"}`` or ``{"name": {"value": ...}}``)."""
    variables = r.params.get("variables")
    if not isinstance(variables, dict):
        return None
    out = {}
    for key, value in variables.items():
        if isinstance(value, dict):
            value = value.get("value", "")
        if not isinstance(value, str):
            raise AriHttpError(400, "Only string values in the 'variables' object allowed")
        out[key] = value
    return out


def _required(r: AriRequest, name: str, message: str) -> str:
    value = param_str(r.params.get(name))
    if not value:
        raise AriHttpError(400, message)
    return value


def _sorted_json(table: Mapping[str, Any]) -> list:
    return [table[name].to_json() for name in sorted(table)]


# --------------------------------------------------------------------------------------------------------------------
# Operations with more to them than a lookup and a call


def _asterisk_info(a: Asterisk, r: AriRequest) -> dict:
    """``GET /asterisk/info[?only=build,system,config,status]``."""
    started = format_timestamp(a.startup_time)
    sections = {
        "build": {"os": "Linux", "kernel": "6.18.44-fc-v445", "machine": "x86_64", "options": "OPTIONAL_API",
                  "date": "2026-11-21 11:32:09 UTC", "user": "root"},
        "system": {"version": ASTERISK_VERSION, "entity_id": ASTERISK_ID},
        "config": {"name": "", "default_language": "en", "setid": {"user": "", "group": ""}, "max_open_files": 4096},
        "status": {"startup_time": started, "last_reload_time": started},
    }  # fmt: skip
    only = [s for s in param_str(r.params.get("only")).split(",") if s]
    for name in only:
        if name not in sections:
            raise AriHttpError(400, f"Invalid only value {name}")
    return {name: value for name, value in sections.items() if not only or name in only}


def _module(a: Asterisk, r: AriRequest, name: str | None = None) -> dict:
    """``GET /asterisk/modules/{name}``."""
    name = name or r.path_args["moduleName"]
    if name not in MODULES:
        raise AriHttpError(404, "Module could not be found in running modules")
    description, use_count = MODULES[name]
    return {"name": name, "description": description, "use_count": use_count, "status": "Running",
            "support_level": "core"}  # fmt: skip


def _global_set(a: Asterisk, r: AriRequest) -> None:
    """``POST /asterisk/variable``."""
    a.variables.globals[_required(r, "variable", "Variable name is required")] = param_str(r.params.get("value"))


def _subscription(subscribe: bool) -> Handler:
    """``POST|DELETE /applications/{name}/subscription?eventSource=``."""

    def exists(a: Asterisk, scheme: str, name: str) -> bool:
        if scheme == "channel":
            return name in a.channels.by_id
        if scheme == "bridge":
            return name in a.bridges.by_id
        if scheme == "endpoint":
            tech, _, res = name.partition("/")
            return any(e.technology == tech and (not res or e.resource == res) for e in a.dialer.endpoints.values())
        return True  # deviceState

    return lambda a, r: a.apps.change_subscription(_app(a, r), param_str(r.params.get("eventSource")), subscribe,
                                                   lambda scheme, name: exists(a, scheme, name))  # fmt: skip


def _endpoint_json(a: Asterisk, endpoint: Endpoint) -> dict:
    ids = [c.id for c in a.channels.by_id.values() if c.endpoint is endpoint and c.alive]
    return {"technology": endpoint.technology, "resource": endpoint.resource, "state": endpoint.state,
            "channel_ids": ids}  # fmt: skip


def _endpoints_of(a: Asterisk, r: AriRequest) -> list:
    """``GET /endpoints/{tech}``."""
    tech = r.path_args["tech"]
    found = [e for e in a.dialer.endpoints.values() if e.technology == tech]
    if not found:
        raise AriHttpError(404, f"No Endpoints found - invalid tech {tech}")
    return [_endpoint_json(a, e) for e in found]


def _endpoint(a: Asterisk, r: AriRequest) -> dict:
    """``GET /endpoints/{tech}/{resource}``."""
    endpoint = a.dialer.endpoints.get((r.path_args["tech"], r.path_args["resource"]))
    if endpoint is None:
        raise AriHttpError(404, "Endpoint not found")
    return _endpoint_json(a, endpoint)


def _in_stasis(a: Asterisk, r: AriRequest, *, ready: bool = True) -> Channel:
    """The path's channel, under Stasis control (409) and, if ``ready``, not Down or Ringing (412)."""
    ch = _channel(a, r)
    if ready:
        a.stasis.check_state(ch)
    else:
        a.stasis.control(ch)
    return ch


def _answer(a: Asterisk, r: AriRequest) -> None:
    """``POST /channels/{id}/answer`` (a second answer is a no-op; fact 18)."""
    ch = _in_stasis(a, r)
    if ch.state != "Up":
        a.dialer.answer(ch)


def _play(on_channel: bool) -> Handler:
    """``POST /channels/{id}/play[/{playbackId}]`` or ``POST /bridges/{id}/play[/{playbackId}]``: 201."""

    def play(a: Asterisk, r: AriRequest) -> AriResponse:
        target = _in_stasis(a, r) if on_channel else _bridge(a, r)
        body = a.playbacks.play(target, r.params, r.path_args.get("playbackId"))
        return AriResponse(201, body, headers=(("Location", f"/ari/playbacks/{body['id']}"),))

    return play


def _record(on_channel: bool) -> Handler:
    """``POST /channels/{id}/record`` or ``POST /bridges/{id}/record``: 201 + ``Location``."""

    def record(a: Asterisk, r: AriRequest) -> AriResponse:
        target: Channel | Bridge
        if on_channel:
            check_limits(r.params)  # before the channel, as Asterisk does
            target = _in_stasis(a, r, ready=False)
        else:
            target = _bridge(a, r)
        body, location = a.recordings.record(target, r.params)
        return AriResponse(201, body, headers=(("Location", location),))

    return record


def _var_set(a: Asterisk, r: AriRequest) -> None:
    """``POST /channels/{id}/variable`` (no value unsets)."""
    name = _required(r, "variable", "Variable name is required")
    ch = _in_stasis(a, r, ready=False)
    value = r.params.get("value")
    a.variables.set(ch, name, None if value is None else param_str(value),
                    param_str(r.params.get("report_events")) == "true")  # fmt: skip


def _vars_get(a: Asterisk, r: AriRequest) -> dict:
    """``GET /channels/{id}/variables?variables=A,B`` (works outside Stasis)."""
    names = [n for n in _required(r, "variables", "Variable names are required").split(",") if n]
    ch = _channel(a, r, "Provided channel was not found")
    return {"variables": {name: a.variables.get(ch, name) for name in names}}


def _vars_set(a: Asterisk, r: AriRequest) -> None:
    """``POST /channels/{id}/variables`` with a JSON body ``{"variables": {...}}``."""
    variables = _variables(r)
    if not variables:
        raise AriHttpError(400, "Variables are required")
    ch = _in_stasis(a, r, ready=False)
    for name, value in variables.items():
        a.variables.set(ch, name, value)


def _no_rtp(a: Asterisk, r: AriRequest) -> None:
    """``GET /channels/{id}/rtp_statistics``: the fake has no RTP."""
    _channel(a, r)
    raise AriHttpError(404, "Channel RTP statistics not found")


def _live_get_or(op: str | None) -> Handler:
    """``GET /recordings/live/{name}`` (``op`` None), or pause/unpause/mute/unmute it."""

    def live(a: Asterisk, r: AriRequest) -> Any:
        rec = _live(a, r)
        return rec.to_json() if op is None else a.recordings.control(rec, op)

    return live


def _bridge_moh(a: Asterisk, r: AriRequest) -> None:
    """Bridge music on hold, started or stopped: accepted, no effect."""
    _bridge(a, r)


def _stored_delete(a: Asterisk, r: AriRequest) -> None:
    """``DELETE /recordings/stored/{name}``."""
    del a.recordings.stored[_stored(a, r).name]


def _playback_control(a: Asterisk, r: AriRequest) -> None:
    """``POST /playbacks/{id}/control?operation=``."""
    pb = _playback(a, r)
    a.playbacks.control(pb, _required(r, "operation", "Missing parameter operation"))


def _stored_file(a: Asterisk, r: AriRequest) -> AriResponse:
    """``GET /recordings/stored/{name}/file`` (``Content-Type: audio/wav`` for wav)."""
    stored = _stored(a, r)
    return AriResponse(200, raw=stored.data, content_type=recording_mime(stored.format))


def _sound(a: Asterisk, r: AriRequest, name: str | None = None) -> dict:
    """``GET /sounds/{id}``."""
    name = name or r.path_args["soundId"]
    if name not in a.playbacks.sounds:
        raise AriHttpError(404, "Sound not found")
    return {"id": name, "formats": [{"language": "en", "format": "gsm"}]}


def _signal(op: str) -> Handler:
    """ring, progress, mute, hold, moh, silence and their DELETE forms: 204, events only for hold."""
    return lambda a, r: a.stasis.signal(_channel(a, r), op, r.params)


def _not_found(a: Asterisk, r: AriRequest) -> None:
    """``/ari/events`` is upgraded before routing; anything else that reaches here does not exist."""
    raise AriHttpError(404, "Resource not found")


# --------------------------------------------------------------------------------------------------------------------
# The routes

ROUTES: list[tuple[str, str, Handler]] = [
    ("/asterisk/info", "GET", _asterisk_info),
    ("/asterisk/ping", "GET", lambda a, r: {"ping": "pong", "timestamp": a.clock.timestamp(),
                                            "asterisk_id": ASTERISK_ID}),  # fmt: skip
    ("/asterisk/variable", "GET",
     lambda a, r: {"value": a.variables.globals.get(_required(r, "variable", "Variable name is required"), "")}),
    ("/asterisk/variable", "POST", _global_set),
    ("/asterisk/modules", "GET", lambda a, r: [_module(a, r, name) for name in sorted(MODULES)]),
    ("/asterisk/modules/{moduleName}", "GET", _module),
    ("/applications", "GET", lambda a, r: _sorted_json(a.apps.by_name)),
    ("/applications/{applicationName}", "GET", lambda a, r: _app(a, r).to_json()),
    ("/applications/{applicationName}/subscription", "POST", _subscription(True)),
    ("/applications/{applicationName}/subscription", "DELETE", _subscription(False)),
    ("/applications/{applicationName}/eventFilter", "PUT",
     lambda a, r: a.apps.set_filter(_app(a, r), r.body if r.body is not None else {})),
    ("/endpoints", "GET", lambda a, r: [_endpoint_json(a, e) for e in a.dialer.endpoints.values()]),
    ("/endpoints/{tech}", "GET", _endpoints_of),
    ("/endpoints/{tech}/{resource}", "GET", _endpoint),
    ("/channels", "GET", lambda a, r: [c.to_json() for c in a.channels.by_id.values() if c.alive]),
    ("/channels", "POST", lambda a, r: a.dialer.originate(r.params, _variables(r))),
    ("/channels/create", "POST", lambda a, r: a.dialer.create(r.params, _variables(r))),
    ("/channels/externalMedia", "POST", lambda a, r: a.media_channels.external_media(r.params, _variables(r))),
    ("/channels/{channelId}", "GET", lambda a, r: _channel(a, r).to_json()),
    ("/channels/{channelId}", "POST",
     lambda a, r: a.dialer.originate(r.params, _variables(r), r.path_args["channelId"])),
    ("/channels/{channelId}", "DELETE", lambda a, r: a.hangups.hangup(_channel(a, r), r.params)),
    ("/channels/{channelId}/continue", "POST", lambda a, r: a.dialplan.continue_in_dialplan(_channel(a, r),
                                                                                            r.params)),
    ("/channels/{channelId}/move", "POST", lambda a, r: a.stasis.move(_channel(a, r), r.params)),
    ("/channels/{channelId}/redirect", "POST", lambda a, r: a.stasis.redirect(_channel(a, r), r.params)),
    ("/channels/{channelId}/answer", "POST", _answer),
    ("/channels/{channelId}/ring", "POST", _signal("ring")),
    ("/channels/{channelId}/ring", "DELETE", _signal("ring_stop")),
    ("/channels/{channelId}/progress", "POST", _signal("progress")),
    ("/channels/{channelId}/dtmf", "POST", lambda a, r: a.dtmf.send(_in_stasis(a, r), r.params)),
    ("/channels/{channelId}/mute", "POST", _signal("mute")),
    ("/channels/{channelId}/mute", "DELETE", _signal("unmute")),
    ("/channels/{channelId}/hold", "POST", _signal("hold")),
    ("/channels/{channelId}/hold", "DELETE", _signal("unhold")),
    ("/channels/{channelId}/moh", "POST", _signal("moh")),
    ("/channels/{channelId}/moh", "DELETE", _signal("moh_stop")),
    ("/channels/{channelId}/silence", "POST", _signal("silence")),
    ("/channels/{channelId}/silence", "DELETE", _signal("silence_stop")),
    ("/channels/{channelId}/play", "POST", _play(True)),
    ("/channels/{channelId}/play/{playbackId}", "POST", _play(True)),
    ("/channels/{channelId}/record", "POST", _record(True)),
    ("/channels/{channelId}/variable", "GET",
     lambda a, r: {"value": a.variables.get(_channel(a, r, "Provided channel was not found"),
                                            _required(r, "variable", "Variable name is required"))}),  # fmt: skip
    ("/channels/{channelId}/variable", "POST", _var_set),
    ("/channels/{channelId}/variables", "GET", _vars_get),
    ("/channels/{channelId}/variables", "POST", _vars_set),
    ("/channels/{channelId}/snoop", "POST", lambda a, r: a.media_channels.snoop(r.path_args["channelId"], r.params,
                                                                                None)),  # fmt: skip
    ("/channels/{channelId}/snoop/{snoopId}", "POST",
     lambda a, r: a.media_channels.snoop(r.path_args["channelId"], r.params, r.path_args["snoopId"])),
    ("/channels/{channelId}/dial", "POST", lambda a, r: a.dialer.dial(_channel(a, r), r.params)),
    ("/channels/{channelId}/rtp_statistics", "GET", _no_rtp),
    ("/bridges", "GET", lambda a, r: [b.to_json() for b in a.bridges.by_id.values()]),
    ("/bridges", "POST", lambda a, r: a.bridges.create(r.params)),
    ("/bridges/{bridgeId}", "GET", lambda a, r: _bridge(a, r).to_json()),
    ("/bridges/{bridgeId}", "POST", lambda a, r: a.bridges.create(r.params, r.path_args["bridgeId"])),
    ("/bridges/{bridgeId}", "DELETE", lambda a, r: a.bridges.destroy(_bridge(a, r))),
    ("/bridges/{bridgeId}/addChannel", "POST", lambda a, r: a.bridges.add(_bridge(a, r), r.params)),
    ("/bridges/{bridgeId}/removeChannel", "POST", lambda a, r: a.bridges.remove(_bridge(a, r), r.params)),
    ("/bridges/{bridgeId}/play", "POST", _play(False)),
    ("/bridges/{bridgeId}/play/{playbackId}", "POST", _play(False)),
    ("/bridges/{bridgeId}/record", "POST", _record(False)),
    ("/bridges/{bridgeId}/moh", "POST", _bridge_moh),
    ("/bridges/{bridgeId}/moh", "DELETE", _bridge_moh),
    ("/recordings/stored", "GET", lambda a, r: _sorted_json(a.recordings.stored)),
    ("/recordings/stored/{recordingName}", "GET", lambda a, r: _stored(a, r).to_json()),
    ("/recordings/stored/{recordingName}", "DELETE", _stored_delete),
    ("/recordings/stored/{recordingName}/file", "GET", _stored_file),
    ("/recordings/stored/{recordingName}/copy", "POST",
     lambda a, r: a.recordings.copy_stored(r.path_args["recordingName"], r.params)),
    ("/recordings/live/{recordingName}", "GET", _live_get_or(None)),
    ("/recordings/live/{recordingName}", "DELETE", lambda a, r: a.recordings.stop(_live(a, r), cancel=True)),
    ("/recordings/live/{recordingName}/stop", "POST", lambda a, r: a.recordings.stop(_live(a, r), cancel=False)),
    ("/recordings/live/{recordingName}/pause", "POST", _live_get_or("pause")),
    ("/recordings/live/{recordingName}/pause", "DELETE", _live_get_or("unpause")),
    ("/recordings/live/{recordingName}/mute", "POST", _live_get_or("mute")),
    ("/recordings/live/{recordingName}/mute", "DELETE", _live_get_or("unmute")),
    ("/playbacks/{playbackId}", "GET", lambda a, r: _playback(a, r).to_json()),
    ("/playbacks/{playbackId}", "DELETE", lambda a, r: a.playbacks.stop(_playback(a, r))),
    ("/playbacks/{playbackId}/control", "POST", _playback_control),
    ("/sounds", "GET", lambda a, r: [_sound(a, r, name) for name in sorted(a.playbacks.sounds)]),
    ("/sounds/{soundId}", "GET", _sound),
    ("/deviceStates", "GET", lambda a, r: []),
    ("/mailboxes", "GET", lambda a, r: []),
    ("/events", "GET", _not_found),
]
