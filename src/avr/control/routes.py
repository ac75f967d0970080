"""
The call-control REST API (asterisk-api's routes) and ``/events``, installed on avr's Klein app next to avr-core's
``/health`` and ``/call``.

``GET /`` answers the API overview (JSON), or a browser the live calls page (`avr.http.page`). Every route but
``GET /`` needs the API key when one is configured. Request bodies are validated (wrong types and
out-of-range values are a 400 listing every problem; unknown fields are accepted, as asterisk-api accepts them, and
named in the ``X-AVR-Ignored-Fields`` response header) and ids are checked before use. Every
error is JSON: the model's `ControlError` carries its status; Asterisk's answers map to 400/404/409/422 or 502 with
Asterisk's message; an unreachable ARI is 503; so is every call-control route when ARI is not configured, while the
rest of the server works.
"""

from __future__ import annotations

import re
from typing import Any, Awaitable, Callable

from attrs import define, field, frozen
from klein import Klein
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

import avr
from avr.ari.errors import AriError, AriUnavailable
from avr.control.call_registry import CallRegistry
from avr.control.download import relay
from avr.control.errors import ControlError
from avr.control.hub import EventsHub
from avr.control.agents import AgentSpec
from avr.control.request_fields import (
    AGENT,
    BRIDGE_MEMBER,
    COPY_RECORDING,
    CREATE_BRIDGE,
    DTMF,
    HANGUP,
    ORIGINATE,
    PLAY,
    RECORD,
    SPEAK,
    TRANSFER,
    Field,
    checked_id,
    checked_recording_name,
    unknown_fields,
    validate,
)
from avr.control.wav import WavError, decode_wav
from avr.http.auth import check_api_key, strip_credentials
from avr.http.json import ApiError, add_route, json_response, read_json_body
from avr.http.page import LiveCallsPage, wants_html
from avr.http.site import RoutePolicy, key_waived
from avr.interfaces import ICallControl
from avr.logtext import clip

#: The response header naming the request body's fields that were accepted but ignored (unknown to the route).
IGNORED_FIELDS_HEADER = b"x-avr-ignored-fields"

#: Answer of every call-control route while ARI is not configured.
NOT_CONFIGURED = "ARI is not configured (set ARI_URL, ARI_USERNAME, ARI_PASSWORD)"

#: Largest uploaded WAV file (``POST /calls/<id>/play/file``).
MAX_UPLOAD_BYTES = 10 * 1024 * 1024
#: Content types accepted for an uploaded WAV file.
WAV_CONTENT_TYPES = ("audio/wav", "audio/x-wav", "audio/wave", "application/octet-stream")

_RULE_ARGUMENT = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
_HEADER_UNSAFE = re.compile(r"[^\x21-\x7e]")


log = Logger()


def _query(request: IRequest, name: str) -> str | None:
    values = (request.args or {}).get(name.encode("ascii"))
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(400, f"query parameter {name} given more than once")
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, f"query parameter {name} is not UTF-8") from None


def _body_is_empty(request: IRequest, max_bytes: int) -> bool:
    content = request.content
    if content is None:
        return True
    content.seek(0)
    empty = not content.read(max_bytes + 1).strip()
    content.seek(0)
    return empty


def _read_raw_body(request: IRequest, max_bytes: int) -> bytes:
    length = request.getHeader("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise ApiError(413, f"request body is larger than the limit of {max_bytes} bytes", limit=max_bytes)
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data: bytes = content.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ApiError(413, f"request body is larger than the limit of {max_bytes} bytes", limit=max_bytes)
    return data


def _error_response(request: IRequest, error: BaseException) -> bytes:
    """The JSON answer for a failed call-control operation."""
    if isinstance(error, ApiError):
        return json_response(request, error.status, error.body())
    if isinstance(error, ControlError):
        extra = {k: v for k, v in error.extra.items() if k != "error"}
        return json_response(request, error.status, {"error": error.message, **extra})
    if isinstance(error, AriError):
        status = {400: 400, 404: 404, 409: 409, 412: 409, 422: 422}.get(error.status, 502)
        return json_response(request, status, {"error": f"Asterisk: {error.message}", "ariStatus": error.status})
    if isinstance(error, AriUnavailable):
        return json_response(request, 503, {"error": f"ARI is not reachable: {error.message}"})
    return json_response(request, 500, {"error": "internal error"})


def _agent_spec(fields: dict[str, Any]) -> AgentSpec:
    return AgentSpec(fields.get("sts_url"), fields.get("route"), fields.get("payload") or {})


def summary(doc: str | None) -> str:
    """
    The description of a route in ``GET /``: the first paragraph of its handler's docstring (its summary, however
    many lines it is wrapped over), on one line, without the reStructuredText literal quotes.
    """
    paragraph = (doc or "").strip().split("\n\n", 1)[0]
    return " ".join(paragraph.split()).replace("``", "")


# --- the routes ------------------------------------------------------------------------------------------------------


@frozen
class _Route:
    method: str
    path: str
    name: str
    #: Needs the call-control model (503 while ARI is not configured).
    control: bool = True
    #: Served without the API key.
    open: bool = False


_ROUTES = (
    _Route("GET", "/", "index", control=False, open=True),
    _Route("GET", "/events", "events", control=False),
    _Route("GET", "/endpoints", "list_endpoints"),
    _Route("GET", "/calls", "list_calls", control=False),
    _Route("POST", "/calls", "originate"),
    _Route("GET", "/calls/<id>", "get_call", control=False),
    _Route("DELETE", "/calls/<id>", "hangup"),
    _Route("POST", "/calls/<id>/answer", "answer"),
    _Route("POST", "/calls/<id>/play", "play"),
    _Route("DELETE", "/calls/<id>/play/<playbackId>", "stop_playback"),
    _Route("POST", "/calls/<id>/play/file", "play_file"),
    _Route("POST", "/calls/<id>/speak", "speak"),
    _Route("POST", "/calls/<id>/audio/start", "start_audio_capture"),
    _Route("POST", "/calls/<id>/audio/stop", "stop_audio_capture"),
    _Route("POST", "/calls/<id>/record", "record"),
    _Route("POST", "/calls/<id>/dtmf", "send_dtmf"),
    _Route("POST", "/calls/<id>/transfer", "transfer"),
    _Route("POST", "/calls/<id>/agent", "attach_agent"),
    _Route("DELETE", "/calls/<id>/agent", "detach_agent"),
    _Route("POST", "/bridges", "create_bridge"),
    _Route("GET", "/bridges", "list_bridges"),
    _Route("GET", "/bridges/<id>", "get_bridge"),
    _Route("DELETE", "/bridges/<id>", "destroy_bridge"),
    _Route("POST", "/bridges/<id>/addChannel", "add_to_bridge"),
    _Route("POST", "/bridges/<id>/removeChannel", "remove_from_bridge"),
    _Route("GET", "/recordings", "list_recordings"),
    _Route("GET", "/recordings/<name>", "get_recording"),
    _Route("GET", "/recordings/<name>/file", "recording_file"),
    _Route("POST", "/recordings/<name>/copy", "copy_recording"),
    _Route("DELETE", "/recordings/<name>", "delete_recording"),
)


@define(eq=False)
class ControlRoutes:
    """
    Installs the REST API and ``/events`` on a Klein app.

    :param control: the call-control model, or ``None`` when ARI is not configured.
    :param hub: the ``/events`` hub (its resource is built once, here).
    :param registry: every call, of every kind (``GET /calls``, ``GET /calls/:id``, the ``/events`` snapshot work
        without ARI).
    :param max_body: largest JSON request body, in bytes.
    :param api_key: required on every route but ``GET /`` when not ``None``.
    :param clock: the reactor's time (part of the wiring contract; the routes themselves keep no timers).
    :param max_upload: largest uploaded WAV file, in bytes.
    :param page: what ``GET /`` answers a browser (`avr.http.page`).
    """

    control: ICallControl | None
    hub: EventsHub
    registry: CallRegistry
    max_body: int
    api_key: str | None = field(repr=False)
    clock: IReactorTime
    max_upload: int = MAX_UPLOAD_BYTES
    page: LiveCallsPage = field(factory=LiveCallsPage.load, repr=False)
    _app: Klein | None = field(default=None, init=False)
    _descriptions: dict[str, str] = field(factory=dict, init=False)
    _events_resource: Any = field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self._events_resource = self.hub.resource(self._snapshot)

    def _snapshot(self) -> dict[str, Any]:
        if self.control is not None:
            return self.control.snapshot()
        return {"calls": self.registry.listing(), "bridges": []}

    def install(self, app: Klein) -> None:
        """Register every route on ``app`` (endpoint names ``control.<name>``)."""
        self._app = app
        for route in _ROUTES:
            handler = getattr(self, "_" + route.name)
            endpoint = "control." + route.name
            self._descriptions[endpoint] = summary(handler.__doc__)
            add_route(app, route.path, self._guarded(route, handler), methods=[route.method], endpoint=endpoint)

    def policies(self) -> dict[str, RoutePolicy]:
        """
        What the routes admit before their bodies are read (`avr.http.site`): ``GET /`` is public, an uploaded file
        may be ``max_upload`` bytes, every other body ``max_body``.
        """
        return {
            "control." + route.name: RoutePolicy(
                public=route.open, max_body=self.max_upload if route.name == "play_file" else self.max_body)
            for route in _ROUTES
        }

    def _guarded(self, route: _Route, handler: Callable[..., Awaitable[Any]]) -> Callable[..., Deferred]:
        async def guarded(request: IRequest, **values: str) -> Any:
            try:
                if not route.open and not key_waived(request, "control." + route.name):
                    check_api_key(request, self.api_key)
                if route.control and self.control is None:
                    raise ApiError(503, NOT_CONFIGURED)
                return await handler(request, **values)
            except CancelledError:
                raise
            except (ApiError, ControlError, AriError, AriUnavailable) as e:
                return _error_response(request, e)
            except Exception:
                log.failure("Unhandled error serving {method} {path}", method=route.method, path=route.path)
                return _error_response(request, RuntimeError())

        def start(request: IRequest, **values: str) -> Deferred:
            return Deferred.fromCoroutine(guarded(request, **values))

        return start

    @property
    def _model(self) -> ICallControl:
        # Only reached behind the "configured" check of `_guarded`.
        assert self.control is not None
        return self.control

    def _json(self, request: IRequest, fields: tuple[Field, ...]) -> Awaitable[dict[str, Any]]:
        return self._read_fields(request, fields, optional=False)

    async def _read_fields(self, request: IRequest, fields: tuple[Field, ...], optional: bool) -> dict[str, Any]:
        if optional and _body_is_empty(request, self.max_body):
            return {}
        body = await read_json_body(request, self.max_body)
        values = validate(body, fields)
        ignored = unknown_fields(body, fields)
        if ignored:
            # Accepted as asterisk-api accepts them, and said: clients can see what had no effect.
            names = [_HEADER_UNSAFE.sub("?", name)[:60] for name in ignored[:20]]
            request.setHeader(IGNORED_FIELDS_HEADER, ", ".join(names).encode("ascii"))
            log.debug("{method} {path}: ignoring unknown fields {fields}", method=request.method,
                      path=clip(request.path.decode("latin-1")), fields=names)
        return values

    # --- handlers (the first paragraph of the docstring is the description in GET /) ---------------------------------

    async def _index(self, request: IRequest) -> bytes:
        """
        API overview with every available endpoint (JSON); a browser (Accept: text/html) gets the live calls page.
        """
        if wants_html(request):
            return self.page.render(request)
        request.setHeader(b"vary", b"Accept")
        endpoints: dict[str, str] = {}
        assert self._app is not None
        rules = sorted(self._app.url_map.iter_rules(), key=lambda r: r.rule)
        for rule in rules:
            path = _RULE_ARGUMENT.sub(r":\1", rule.rule)
            for method in sorted(m for m in (rule.methods or ()) if m not in ("HEAD", "OPTIONS")):
                endpoints[f"{method} {path}"] = self._describe(rule.endpoint)
        overview = {
            "name": "avr",
            "version": avr.__version__,
            "description": "Asterisk call control over ARI, avr-core AudioSocket bridge, and a real-time event stream",
            "ari": self.control.status().get("ari") if self.control is not None else "not configured",
            "authentication": ("API key required on every route but GET /, GET /health, GET /ready and "
                               "GET /openapi.json: header X-API-Key, Authorization: Bearer <key> or query parameter "
                               "api_key")
            if self.api_key is not None else "none",
            "endpoints": endpoints,
        }
        return json_response(request, 200, overview)

    def _describe(self, endpoint: str) -> str:
        if endpoint in self._descriptions:
            return self._descriptions[endpoint]
        assert self._app is not None
        return summary(getattr(self._app.endpoints.get(endpoint), "__doc__", None))

    async def _events(self, request: IRequest) -> Any:
        """WebSocket: real-time call event stream (a snapshot, then one JSON message per event)."""
        strip_credentials(request)  # autobahn logs the whole handshake it is given
        return self._events_resource

    async def _list_endpoints(self, request: IRequest) -> bytes:
        """List the SIP/PJSIP endpoints Asterisk knows."""
        return json_response(request, 200, {"endpoints": await self._model.list_endpoints()})

    async def _list_calls(self, request: IRequest) -> bytes:
        """List active calls (ARI and AudioSocket)."""
        return json_response(request, 200, {"calls": self.registry.listing()})

    async def _originate(self, request: IRequest) -> bytes:
        """Originate an outbound call."""
        body = await self._json(request, ORIGINATE)
        call = await self._model.originate(
            body["endpoint"],
            caller_id=body.get("callerId"),
            timeout=body.get("timeout", 30),
            variables=body.get("variables"),
            context=body.get("context"),
            extension=body.get("extension"),
            priority=body.get("priority"),
            agent=_agent_spec(body["agent"]) if "agent" in body else None,
        )
        # asterisk-api answers {call}; the OpenClaw plugin reads callId: both.
        return json_response(request, 201, {"call": call, "callId": call["id"]})

    async def _get_call(self, request: IRequest, id: str) -> bytes:
        """Get call details."""
        call = self.registry.describe(checked_id(id, "call"))
        return json_response(request, 200, {"call": call})

    async def _hangup(self, request: IRequest, id: str) -> bytes:
        """Hang up a call (optional reason in the body or query: normal, busy, congestion, ...)."""
        call_id = checked_id(id, "call")
        body = await self._read_fields(request, HANGUP, optional=True)
        reason = body.get("reason")
        query_reason = _query(request, "reason")
        if query_reason is not None:
            if reason is not None and reason != query_reason:
                raise ApiError(400, "reason given twice (body and query) with different values")
            reason = validate({"reason": query_reason}, HANGUP)["reason"]
        call = await self._model.hangup(call_id, reason=reason or "normal")
        return json_response(request, 200, {"status": "hungup", "callId": call["id"], "reason": reason or "normal",
                                            "call": call})

    async def _answer(self, request: IRequest, id: str) -> bytes:
        """Answer a ringing inbound call."""
        call_id = checked_id(id, "call")
        await self._read_fields(request, (), optional=True)
        call = await self._model.answer(call_id)
        return json_response(request, 200, {"status": "answered", "call": call})

    async def _play(self, request: IRequest, id: str) -> bytes:
        """Play audio: one media URI or a sequential playlist (sound:, recording:, digits:, tone:, ...)."""
        call_id = checked_id(id, "call")
        body = await self._json(request, PLAY)
        playback = await self._model.play(call_id, body["media"])
        return json_response(request, 201, {"playback": playback})

    async def _stop_playback(self, request: IRequest, id: str, playbackId: str) -> bytes:
        """Stop a playback started with POST /calls/:id/play."""
        call_id = checked_id(id, "call")
        playback_id = checked_id(playbackId, "playback")
        await self._model.stop_playback(call_id, playback_id)
        return json_response(request, 200, {"status": "stopped", "playbackId": playback_id})

    async def _play_file(self, request: IRequest, id: str) -> bytes:
        """Upload and play a WAV file (raw body, Content-Type audio/wav; PCM 8/16-bit, mono/stereo, up to 10 MB)."""
        call_id = checked_id(id, "call")
        media_type = (request.getHeader("content-type") or "").split(";")[0].strip().lower()
        if media_type not in WAV_CONTENT_TYPES:
            raise ApiError(415, "send the WAV file as the raw request body with Content-Type audio/wav "
                                f"(got {media_type or 'none'})", accepted=list(WAV_CONTENT_TYPES))
        data = _read_raw_body(request, self.max_upload)
        if not data:
            raise ApiError(400, "request body is empty: expected a WAV file")
        try:
            audio = decode_wav(data)
        except WavError as e:
            raise ApiError(e.status, e.message) from None
        playback = await self._model.play_pcm(call_id, audio.pcm, audio.rate)
        return json_response(request, 201, {"status": "ok", "durationSeconds": round(audio.duration, 3),
                                            "sampleRate": audio.rate, "playback": playback})

    async def _speak(self, request: IRequest, id: str) -> bytes:
        """Speak text into the call (TTS): {text, voice?, language?, speed?}; answers once it has been played."""
        call_id = checked_id(id, "call")
        body = await self._json(request, SPEAK)
        result = await self._model.speak(call_id, body["text"], voice=body.get("voice"),
                                         language=body.get("language"), speed=body.get("speed"))
        return json_response(request, 200, result)

    async def _start_audio_capture(self, request: IRequest, id: str) -> bytes:
        """Start live capture of the caller's audio into the streaming ASR (call.transcription events)."""
        call_id = checked_id(id, "call")
        await self._read_fields(request, (), optional=True)
        return json_response(request, 200, await self._model.start_audio_capture(call_id))

    async def _stop_audio_capture(self, request: IRequest, id: str) -> bytes:
        """Stop the audio capture (always a JSON answer, also when none was running)."""
        call_id = checked_id(id, "call")
        await self._read_fields(request, (), optional=True)
        return json_response(request, 200, await self._model.stop_audio_capture(call_id))

    async def _record(self, request: IRequest, id: str) -> bytes:
        """Start recording a call."""
        call_id = checked_id(id, "call")
        body = await self._json(request, RECORD)
        options = {snake: body[camel] for camel, snake in (
            ("name", "name"), ("format", "format"), ("maxDurationSeconds", "max_duration"), ("beep", "beep"),
            ("ifExists", "if_exists")) if camel in body}
        recording = await self._model.record(call_id, **options)
        return json_response(request, 201, {"recordingName": recording["name"], "recording": recording})

    async def _send_dtmf(self, request: IRequest, id: str) -> bytes:
        """Send DTMF tones (0-9, A-D, *, #; w/W pause 0.5/1 s)."""
        call_id = checked_id(id, "call")
        body = await self._json(request, DTMF)
        await self._model.send_dtmf(call_id, body["dtmf"], between=body.get("between"),
                                    duration=body.get("duration"))
        return json_response(request, 200, {"status": "ok", "dtmf": body["dtmf"]})

    async def _transfer(self, request: IRequest, id: str) -> bytes:
        """Transfer a call to another endpoint (bridged when the target answers)."""
        call_id = checked_id(id, "call")
        body = await self._json(request, TRANSFER)
        result = await self._model.transfer(call_id, body["endpoint"], caller_id=body.get("callerId"),
                                            timeout=body.get("timeout", 30))
        return json_response(request, 201, result)

    async def _attach_agent(self, request: IRequest, id: str) -> bytes:
        """Put an AI agent on an answered call (body: sts_url or route, payload; all optional)."""
        call_id = checked_id(id, "call")
        body = await self._read_fields(request, AGENT, optional=True)
        if "sts_url" in body and "route" in body:
            raise ApiError(400, "Validation failed: give sts_url or route, not both")
        spec = _agent_spec(body)
        result = await self._model.attach_agent(call_id, spec.sts_url, spec.route, dict(spec.payload))
        return json_response(request, 201, {"status": "ok", **result})

    async def _detach_agent(self, request: IRequest, id: str) -> bytes:
        """Take the AI agent off a call (the call stays up)."""
        result = await self._model.detach_agent(checked_id(id, "call"))
        return json_response(request, 200, {"status": "detached", **result})

    async def _create_bridge(self, request: IRequest) -> bytes:
        """Create a mixing bridge."""
        body = await self._read_fields(request, CREATE_BRIDGE, optional=True)
        bridge = await self._model.create_bridge(name=body.get("name"))
        return json_response(request, 201, {"bridge": bridge})

    async def _list_bridges(self, request: IRequest) -> bytes:
        """List all bridges."""
        return json_response(request, 200, {"bridges": await self._model.list_bridges()})

    async def _get_bridge(self, request: IRequest, id: str) -> bytes:
        """Get bridge details."""
        bridge = await self._model.get_bridge(checked_id(id, "bridge"))
        return json_response(request, 200, {"bridge": bridge})

    async def _destroy_bridge(self, request: IRequest, id: str) -> bytes:
        """Destroy a bridge."""
        bridge_id = checked_id(id, "bridge")
        await self._model.destroy_bridge(bridge_id)
        return json_response(request, 200, {"status": "destroyed", "bridgeId": bridge_id})

    async def _add_to_bridge(self, request: IRequest, id: str) -> bytes:
        """Add a call to a bridge (body: callId)."""
        bridge_id = checked_id(id, "bridge")
        body = await self._json(request, BRIDGE_MEMBER)
        bridge = await self._model.add_to_bridge(bridge_id, body["callId"])
        return json_response(request, 200, {"status": "ok", "bridge": bridge})

    async def _remove_from_bridge(self, request: IRequest, id: str) -> bytes:
        """Remove a call from a bridge (body: callId)."""
        bridge_id = checked_id(id, "bridge")
        body = await self._json(request, BRIDGE_MEMBER)
        bridge = await self._model.remove_from_bridge(bridge_id, body["callId"])
        return json_response(request, 200, {"status": "ok", "bridge": bridge})

    async def _list_recordings(self, request: IRequest) -> bytes:
        """List stored recordings."""
        return json_response(request, 200, {"recordings": await self._model.list_recordings()})

    async def _get_recording(self, request: IRequest, name: str) -> bytes:
        """Get a stored recording's metadata."""
        recording = await self._model.get_recording(checked_recording_name(name))
        return json_response(request, 200, {"recording": recording})

    async def _recording_file(self, request: IRequest, name: str) -> None:
        """Download a stored recording (streamed, with Asterisk's content type)."""
        name = checked_recording_name(name)
        response = await self._model.recording_file(name)
        await relay(response, request)

    async def _copy_recording(self, request: IRequest, name: str) -> bytes:
        """Copy a stored recording (body: destinationName)."""
        name = checked_recording_name(name)
        body = await self._json(request, COPY_RECORDING)
        recording = await self._model.copy_recording(name, body["destinationName"])
        return json_response(request, 201, {"recording": recording})

    async def _delete_recording(self, request: IRequest, name: str) -> bytes:
        """Stop a live recording, or delete a stored one (?stored=true)."""
        name = checked_recording_name(name)
        stored = _query(request, "stored")
        if stored not in (None, "true", "false"):
            raise ApiError(400, "query parameter stored must be true or false")
        if stored == "true":
            await self._model.delete_recording(name)
            return json_response(request, 200, {"status": "deleted", "name": name})
        await self._model.stop_recording(name)
        return json_response(request, 200, {"status": "stopped", "name": name})
