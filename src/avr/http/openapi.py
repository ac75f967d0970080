"""
The OpenAPI 3.1 document of avr's HTTP API, served at ``GET /openapi.json`` without the API key (like ``/health``
and ``GET /``: the contract is no secret, and an operator reads it before holding a key).

The request bodies of the call-control routes are generated from `avr.control.request_fields`, the one place where
they are validated (each check carries its JSON Schema); the rest (paths, parameters, responses, the ``POST /call``
body of `avr.http.core`) is written here. ``tests/test_openapi.py`` checks that the document names exactly the
routes of the Klein app `avr.service.build` assembles, and ``tests/test_schemathesis.py`` fuzzes a running server
against it.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from attrs import define, field
from klein import Klein
from twisted.web.iweb import IRequest

import avr
from avr.control import request_fields as rf
from avr.control.records import RECORDING_NAME
from avr.control.routes import WAV_CONTENT_TYPES
from avr.http.json import add_route
from avr.http.site import RoutePolicy

#: The endpoint name of ``GET /openapi.json``.
OPENAPI_ENDPOINT = "openapi.document"

_UUID = "^[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}$"
_ID = "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"

_DESCRIPTION = """\
avr bridges Asterisk calls to AI speech-to-speech agents. Its HTTP API has two parts on the same port:

- **avr-core**: `POST /call` registers a dialplan AudioSocket call and decides its agent's URL; `GET /health`
  (liveness), `GET /ready` (readiness), `GET /metrics` (Prometheus).
- **Call control** (asterisk-api compatible, needs `ARI_URL`): calls, playback, speech, recordings, bridges, AI agents
  on calls, the allowlist, and `/events`, a WebSocket of call events.

**Authentication**: when `API_KEY` is set, every operation but `GET /`, `GET /health`, `GET /ready` and
`GET /openapi.json` needs the key, in the `X-API-Key` header, an `Authorization: Bearer` header or the `api_key` query
parameter; without it the answer is `401`. Without `API_KEY` nothing needs a key.

**Errors** are JSON `{"error": "<what is wrong>", ...}`. Unknown fields in a JSON body are accepted and ignored (as
asterisk-api accepts them) and named in the `X-AVR-Ignored-Fields` response header; a field given as `null` counts as
not given. The key and a declared `Content-Length` over the limit (`HTTP_MAX_BODY`, 10 MB for a WAV upload) are
checked before the body is read (`401`/`413` with `Connection: close`).

**`/events`** (WebSocket, `GET /events` with the upgrade): a `snapshot` message (the live calls and bridges), then one
JSON text message per call event (`call.created`, `call.state_changed`, `call.dtmf`, `call.ended`, `playback.*`,
`recording.*`, `call.transcription`, agent events...); `?audioFrames=true` adds `call.audio_frame` events. The README's
"Calls and events" section lists every event and field.

**The STS protocol** (avr as a WebSocket client of the agent, one connection per call: `init`, `audio`, `dtmf_digit`,
`action_result` from avr; `audio`, `clear`, `transcript`, `hangup`, `transfer`, `dtmf`... from the agent) is not an
HTTP API of avr: the README's "Writing an agent" section specifies it, every message and field.
"""


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/responses/{name}"}


def _object(required: tuple[str, ...], **properties: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


_STRING = {"type": "string"}
_NULLABLE_STRING = {"type": ["string", "null"]}
_BOOLEAN = {"type": "boolean"}
_INTEGER = {"type": "integer"}
_TIME = {"type": ["string", "null"], "description": "ISO 8601 time (UTC), or null"}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        **_object(("error",), error={"type": "string", "description": "What is wrong (never a secret)"},
                  details={"type": "array", "items": _STRING, "description": "Every problem of a body (400)"}),
        "description": "Every error answer; some carry more fields (limit, reason, ariStatus, allowed, ...)",
    },
    "Agent": {
        **_object(("uuid", "state"), uuid=_STRING, state={"type": "string", "enum": ["starting", "active"]},
                  stsUrl={**_NULLABLE_STRING, "description": "Secrets masked"}, createdAt=_TIME),
        "description": "The AI agent on an ARI call (its media leg's AudioSocket UUID, its STS URL)",
    },
    "Call": {
        **_object(("id", "kind", "state"), id=_STRING, callId={**_STRING, "description": "Repeats id"},
                  kind={"type": "string", "enum": ["ari", "audiosocket", "media"]}, state=_STRING,
                  channelId=_NULLABLE_STRING, direction=_STRING, uuid=_STRING, callerNumber=_NULLABLE_STRING,
                  callerName=_STRING, calleeNumber=_NULLABLE_STRING, endpoint=_NULLABLE_STRING,
                  channelName=_NULLABLE_STRING, args={"type": "array", "items": _STRING}, createdAt=_TIME,
                  answeredAt=_TIME, endedAt=_TIME, bridgeId=_NULLABLE_STRING, inStasis=_BOOLEAN,
                  dialStatus=_NULLABLE_STRING, hangupCause={"type": ["integer", "null"]},
                  hangupCauseText=_NULLABLE_STRING, transferredFrom=_NULLABLE_STRING,
                  recordings={"type": "array", "items": _STRING}, linkedCallId=_NULLABLE_STRING,
                  agent={"anyOf": [_ref("Agent"), {"type": "null"}]}, stsUrl=_NULLABLE_STRING,
                  sampleRate={"type": ["integer", "null"]}, codec=_NULLABLE_STRING, endReason=_NULLABLE_STRING),
        "description": "A call: an ARI channel (kind ari), a dialplan AudioSocket call (audiosocket) or a media leg "
                       "of a call (media, GET /calls/{id} only); the README's \"Calls and events\" has every field",
    },
    "Bridge": _object(("id", "calls"), id=_STRING, name=_NULLABLE_STRING, type=_STRING,
                      kind={"type": "string", "enum": ["user", "transfer"]},
                      calls={"type": "array", "items": _STRING}, channelIds={"type": "array", "items": _STRING},
                      createdAt=_TIME),
    "Playback": _object(("playbackId", "callId", "kind", "state"), playbackId=_STRING, callId=_STRING,
                        kind={"type": "string", "enum": ["media", "pcm"]},
                        state={"type": "string", "enum": ["queued", "playing", "done", "failed", "stopped"]},
                        media={"type": "array", "items": _STRING}, rate={"type": ["integer", "null"]},
                        durationMs={"type": ["integer", "null"]}),
    "Recording": {**_object(("name",), name=_STRING, callId=_STRING, format=_NULLABLE_STRING, state=_STRING),
                  "description": "A live recording (name, callId, format, state) or a stored one (name, format, ...)"},
    "Endpoint": _object((), technology=_NULLABLE_STRING, resource=_NULLABLE_STRING, state=_NULLABLE_STRING,
                        channelIds={"type": "array", "items": _STRING}),
    "AudioCapture": _object(("enabled",), enabled=_BOOLEAN, snoopChannelId=_NULLABLE_STRING,
                            externalMediaChannelId=_NULLABLE_STRING, format=_STRING, sampleRate=_INTEGER,
                            startedAt=_TIME),
    "Allowlist": _object(("inbound", "outbound"), inbound={"type": "array", "items": _STRING},
                         outbound={"type": "array", "items": _STRING}),
}

_RESPONSES: dict[str, Any] = {
    name: _json(_ref("Error"), text) for name, text in {
        "BadRequest": "The request is invalid: a field, an id or a query parameter (every problem listed)",
        "Unauthorized": "The API key is missing or wrong",
        "Forbidden": "The allowlist does not allow the number",
        "NotFound": "No such call, bridge, playback, recording or endpoint",
        "Conflict": "The object's state forbids it (an ended call, a name in use, ...)",
        "UnsupportedMediaType": "The upload's Content-Type is not a WAV type (accepted: the types allowed)",
        "TooLarge": "The body is larger than the route's limit (limit: bytes)",
        "Unprocessable": "Well-formed but cannot be carried out as asked (Asterisk's 422 included)",
        "BadGateway": "Asterisk answered with an error (ariStatus: its status), or the TTS failed",
        "Unavailable": "ARI is not configured or not reachable; or avr is draining or at MAX_CALLS",
        "Timeout": "Asterisk (or the TTS) did not do it in time",
        "NoTts": "No TTS is configured (TTS_URL), as asterisk-api answers",
    }.items()
}

#: Every call-control operation may meet these (ARI down, Asterisk refusing).
_CONTROL_ERRORS = {"401": "Unauthorized", "503": "Unavailable", "502": "BadGateway"}
#: ... and those that act on Asterisk objects these.
_ARI_ERRORS = {"400": "BadRequest", "403": "Forbidden", "404": "NotFound", "409": "Conflict", "422": "Unprocessable",
               "504": "Timeout", **_CONTROL_ERRORS}
_BODY_ERRORS = {"400": "BadRequest", "413": "TooLarge"}


def _parameter(name: str, description: str, pattern: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": {"type": "string", "pattern": pattern}}


_CALL_ID = _parameter("id", "A call id (GET /calls), or an ARI call's channel id", _ID)
_BRIDGE_ID = _parameter("id", "A bridge id", _ID)
_PLAYBACK_ID = _parameter("playbackId", "A playback id (POST /calls/{id}/play)", _ID)
_RECORDING = _parameter("name", "A recording name", f"^(?:{RECORDING_NAME.pattern})$")


def _operation(
    operation_id: str, tag: str, summary: str, responses: dict[str, Any], *, errors: dict[str, str] | None = None,
    body: tuple[rf.Field, ...] | dict[str, Any] | None = None, body_required: bool = True,
    parameters: list[dict[str, Any]] | None = None, public: bool = False, description: str = "",
) -> dict[str, Any]:
    """One operation; ``body`` is a tuple of `avr.control.request_fields.Field` or a JSON Schema."""
    operation: dict[str, Any] = {"operationId": operation_id, "tags": [tag], "summary": summary}
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = parameters
    all_errors = dict(errors or {})
    if not public:
        all_errors["401"] = "Unauthorized"
    if body is not None:
        schema = rf.body_schema(body) if isinstance(body, tuple) else body
        operation["requestBody"] = {"required": body_required, "content": {"application/json": {"schema": schema}}}
        all_errors.update(_BODY_ERRORS)
    operation["responses"] = {**responses, **{status: _error(name) for status, name in sorted(all_errors.items())}}
    if public:
        operation["security"] = []
    return operation


_HEALTH = _object(
    ("status", "service", "version", "registrations", "ready", "ari", "ariState"),
    status={"const": "ok"}, service={"const": "avr"}, version=_STRING,
    registrations={"type": "integer", "description": "POST /call registrations waiting for their AudioSocket call"},
    ready={"type": "boolean", "description": "What GET /ready says"}, audiosocket=_STRING,
    audiosocketCalls=_INTEGER, maxCalls={"type": ["integer", "null"]}, draining=_BOOLEAN, mode=_STRING,
    ari={"type": "boolean", "description": "ARI connected (asterisk-api's boolean)"},
    ariState={"type": "string", "description": "connected, connecting, disconnected or not configured"},
    ariReason=_NULLABLE_STRING, app=_STRING, inboundPolicy=_STRING, activeCalls=_INTEGER, bridges=_INTEGER,
)
_READY = _object(("ready", "reasons"), ready=_BOOLEAN, reasons={
    "type": "array", "items": _object(("component", "reason"), component=_STRING, reason=_STRING)})
_CALL_BODY = {
    "type": "object", "required": ["uuid"],
    "properties": {
        "uuid": {"type": "string", "pattern": _UUID,
                 "description": "The AudioSocket UUID the call will connect with (8-4-4-4-12 hex digits)"},
        "payload": {"type": "object", "description": "Call data: each field is appended to the STS URL as a query "
                                                     "parameter and sent in the call_initiated webhook"},
    },
}


def _call_control_paths() -> dict[str, Any]:
    call = _json(_object(("call",), call=_ref("Call")), "The call")
    status_call = {"status": {"type": "string"}, "call": _ref("Call")}
    return {
        "/endpoints": {"get": _operation(
            "listEndpoints", "calls", "List the SIP/PJSIP endpoints Asterisk knows.",
            {"200": _json(_object(("endpoints",), endpoints={"type": "array", "items": _ref("Endpoint")}),
                          "Asterisk's endpoints")}, errors=_CONTROL_ERRORS)},
        "/calls": {
            "get": _operation("listCalls", "calls", "List active calls (ARI and AudioSocket).",
                              {"200": _json(_object(("calls",), calls={"type": "array", "items": _ref("Call")}),
                                            "The live calls (and the recently ended ones, kept for 5 minutes)")}),
            "post": _operation(
                "originate", "calls", "Originate an outbound call.",
                {"201": _json(_object(("call", "callId"), call=_ref("Call"), callId=_STRING), "Dialling")},
                errors=_ARI_ERRORS, body=rf.ORIGINATE,
                description="With context and extension (and priority) the answered call continues in the dialplan "
                            "(one without the other, or priority alone: 422); with agent an AI agent answers it. "
                            "503 while avr is draining or MAX_CALLS calls are live."),
        },
        "/calls/{id}": {
            "parameters": [_CALL_ID],
            "get": _operation("getCall", "calls", "Get call details (ended calls stay readable for 5 minutes).",
                              {"200": call}, errors={"400": "BadRequest", "404": "NotFound"}),
            "delete": _operation(
                "hangup", "calls", "Hang up a call.",
                {"200": _json(_object(("status", "callId", "reason", "call"), callId=_STRING, reason=_STRING,
                                      **status_call), "Hung up")},
                errors=_ARI_ERRORS, body=rf.HANGUP, body_required=False,
                parameters=[{"name": "reason", "in": "query", "required": False,
                             "schema": {"type": "string", "enum": list(rf.HANGUP_REASONS)},
                             "description": "The reason (or in the body; both must agree); default normal"}]),
        },
        "/calls/{id}/answer": {"parameters": [_CALL_ID], "post": _operation(
            "answer", "calls", "Answer a ringing inbound call (ARI_INBOUND=ring).",
            {"200": _json(_object(("status", "call"), **status_call), "Answered")}, errors=_ARI_ERRORS,
            body=rf.body_schema(()), body_required=False)},
        "/calls/{id}/play": {"parameters": [_CALL_ID], "post": _operation(
            "play", "media", "Play one media URI or a playlist (sound:, recording:, digits:, tone:, ...).",
            {"201": _json(_object(("playback",), playback=_ref("Playback")),
                          "Playback started (its end is the playback.finished event)")},
            errors=_ARI_ERRORS, body=rf.PLAY)},
        "/calls/{id}/play/{playbackId}": {"parameters": [_CALL_ID, _PLAYBACK_ID], "delete": _operation(
            "stopPlayback", "media", "Stop a playback.",
            {"200": _json(_object(("status", "playbackId"), status=_STRING, playbackId=_STRING), "Stopped")},
            errors=_ARI_ERRORS)},
        "/calls/{id}/play/file": {"parameters": [_CALL_ID], "post": {
            **_operation(
                "playFile", "media", "Upload and play a WAV file (PCM 8/16-bit, mono/stereo, up to 10 MB).",
                {"201": _json(_object(("status", "durationSeconds", "sampleRate", "playback"), status=_STRING,
                                      durationSeconds={"type": "number"}, sampleRate=_INTEGER,
                                      playback=_ref("Playback")), "Playing")},
                errors={**_ARI_ERRORS, "413": "TooLarge", "415": "UnsupportedMediaType"}),
            "requestBody": {"required": True, "description": "The WAV file, as the raw body",
                            "content": {media_type: {"schema": {"type": "string", "format": "binary"}}
                                        for media_type in WAV_CONTENT_TYPES}},
        }},
        "/calls/{id}/speak": {"parameters": [_CALL_ID], "post": _operation(
            "speak", "media", "Speak text into the call (TTS); answers once it has been played.",
            {"200": _json(_object(("status",), status=_STRING, text=_STRING, voice=_NULLABLE_STRING,
                                  language=_NULLABLE_STRING, durationSeconds={"type": "number"},
                                  playbackId=_STRING), "Spoken")},
            errors={**_ARI_ERRORS, "501": "NoTts"}, body=rf.SPEAK)},
        "/calls/{id}/audio/start": {"parameters": [_CALL_ID], "post": _operation(
            "startAudioCapture", "media",
            "Start live capture of the caller's audio into the streaming ASR (call.transcription events).",
            {"200": _json(_object(("status", "audioCapture"), status=_STRING, audioCapture=_ref("AudioCapture")),
                          "Capturing")}, errors=_ARI_ERRORS, body=rf.body_schema(()), body_required=False)},
        "/calls/{id}/audio/stop": {"parameters": [_CALL_ID], "post": _operation(
            "stopAudioCapture", "media", "Stop the audio capture (also when none was running).",
            {"200": _json(_object(("status", "audioCapture"), status=_STRING,
                                  audioCapture={"anyOf": [_ref("AudioCapture"), {"type": "null"}]}), "Stopped")},
            errors=_ARI_ERRORS, body=rf.body_schema(()), body_required=False)},
        "/calls/{id}/record": {"parameters": [_CALL_ID], "post": _operation(
            "record", "recordings", "Start recording a call.",
            {"201": _json(_object(("recordingName", "recording"), recordingName=_STRING,
                                  recording=_ref("Recording")), "Recording")},
            errors=_ARI_ERRORS, body=rf.RECORD)},
        "/calls/{id}/dtmf": {"parameters": [_CALL_ID], "post": _operation(
            "sendDtmf", "calls", "Send DTMF tones (0-9, A-D, *, #; w/W pause 0.5/1 s).",
            {"200": _json(_object(("status", "dtmf"), status=_STRING, dtmf=_STRING), "Sent")},
            errors=_ARI_ERRORS, body=rf.DTMF)},
        "/calls/{id}/transfer": {"parameters": [_CALL_ID], "post": _operation(
            "transfer", "calls", "Transfer a call to another endpoint (bridged when the target answers).",
            {"201": _json(_object(("callId", "newCallId", "bridgeId", "bridge"), callId=_STRING, newCallId=_STRING,
                                  bridgeId=_STRING, bridge=_ref("Bridge")), "Transferred")},
            errors={**_ARI_ERRORS, "408": "Timeout"}, body=rf.TRANSFER)},
        "/calls/{id}/agent": {
            "parameters": [_CALL_ID],
            "post": _operation(
                "attachAgent", "agents", "Put an AI agent on an answered call.",
                {"201": _json(_object(("status", "callId", "agent"), status=_STRING, callId=_STRING,
                                      agent=_ref("Agent")), "The agent is starting")},
                errors=_ARI_ERRORS, body={**rf.body_schema(rf.AGENT), **rf.ONE_OF_URL_AND_ROUTE},
                body_required=False,
                description="sts_url or route (an STS_ROUTES name), not both, and payload; all optional "
                            "(neither: STS_URL)."),
            "delete": _operation(
                "detachAgent", "agents", "Take the AI agent off a call (the call stays up).",
                {"200": _json(_object(("status", "callId", "agent"), status=_STRING, callId=_STRING,
                                      agent={"anyOf": [_ref("Agent"), {"type": "null"}]}), "Detached")},
                errors=_ARI_ERRORS),
        },
        "/bridges": {
            "get": _operation("listBridges", "bridges", "List all bridges.",
                              {"200": _json(_object(("bridges",), bridges={"type": "array", "items": _ref("Bridge")}),
                                            "The bridges")}, errors=_CONTROL_ERRORS),
            "post": _operation("createBridge", "bridges", "Create a mixing bridge.",
                               {"201": _json(_object(("bridge",), bridge=_ref("Bridge")), "Created")},
                               errors=_ARI_ERRORS, body=rf.CREATE_BRIDGE, body_required=False),
        },
        "/bridges/{id}": {
            "parameters": [_BRIDGE_ID],
            "get": _operation("getBridge", "bridges", "Get bridge details.",
                              {"200": _json(_object(("bridge",), bridge=_ref("Bridge")), "The bridge")},
                              errors=_ARI_ERRORS),
            "delete": _operation("destroyBridge", "bridges", "Destroy a bridge.",
                                 {"200": _json(_object(("status", "bridgeId"), status=_STRING, bridgeId=_STRING),
                                               "Destroyed")}, errors=_ARI_ERRORS),
        },
        **{f"/bridges/{{id}}/{action}Channel": {"parameters": [_BRIDGE_ID], "post": _operation(
            f"{action}BridgeMember", "bridges", f"{verb} a call {where} a bridge.",
            {"200": _json(_object(("status", "bridge"), status=_STRING, bridge=_ref("Bridge")), "Done")},
            errors=_ARI_ERRORS, body=rf.BRIDGE_MEMBER)}
           for action, verb, where in (("add", "Add", "to"), ("remove", "Remove", "from"))},
        "/recordings": {"get": _operation(
            "listRecordings", "recordings", "List stored recordings.",
            {"200": _json(_object(("recordings",), recordings={"type": "array", "items": _ref("Recording")}),
                          "The stored recordings")}, errors=_CONTROL_ERRORS)},
        "/recordings/{name}": {
            "parameters": [_RECORDING],
            "get": _operation("getRecording", "recordings", "Get a stored recording's metadata.",
                              {"200": _json(_object(("recording",), recording=_ref("Recording")), "The recording")},
                              errors=_ARI_ERRORS),
            "delete": _operation(
                "deleteRecording", "recordings", "Stop a live recording, or delete a stored one (?stored=true).",
                {"200": _json(_object(("status", "name"), status={"enum": ["stopped", "deleted"]}, name=_STRING),
                              "Stopped or deleted")}, errors=_ARI_ERRORS,
                parameters=[{"name": "stored", "in": "query", "required": False,
                             "schema": {"type": "string", "enum": ["true", "false"]}}]),
        },
        "/recordings/{name}/file": {"parameters": [_RECORDING], "get": _operation(
            "getRecordingFile", "recordings", "Download a stored recording (streamed, with Asterisk's content type).",
            {"200": {"description": "The file", "content": {"audio/*": {"schema": {"type": "string",
                                                                                  "format": "binary"}},
                                                            "application/octet-stream": {"schema": {
                                                                "type": "string", "format": "binary"}}}}},
            errors=_ARI_ERRORS)},
        "/recordings/{name}/copy": {"parameters": [_RECORDING], "post": _operation(
            "copyRecording", "recordings", "Copy a stored recording.",
            {"201": _json(_object(("recording",), recording=_ref("Recording")), "Copied")},
            errors=_ARI_ERRORS, body=rf.COPY_RECORDING)},
    }


def build_document() -> dict[str, Any]:
    """The whole document (a new dict each time)."""
    allowlist = _ref("Allowlist")
    paths: dict[str, Any] = {
        "/": {"get": {
            **_operation("overview", "avr", "API overview (JSON), or the live calls page for a browser.", {
                "200": {"description": "The overview (every route and what it does); Accept: text/html gets the "
                                       "live calls page",
                        "headers": {"Vary": {"schema": _STRING}},
                        "content": {"application/json": {"schema": _object(
                            ("name", "version", "endpoints"), name=_STRING, version=_STRING, description=_STRING,
                            ari=_NULLABLE_STRING, authentication=_STRING,
                            endpoints={"type": "object", "additionalProperties": _STRING})},
                            "text/html": {"schema": _STRING}}}}, public=True)}},
        "/openapi.json": {"get": _operation(
            "openapi", "avr", "This document.", {"200": _json({"type": "object"}, "The OpenAPI 3.1 document")},
            public=True)},
        "/health": {"get": _operation(
            "health", "avr", "Liveness, with the state of each component; always 200.",
            {"200": _json(_HEALTH, "avr is alive")}, public=True)},
        "/ready": {"get": _operation(
            "ready", "avr", "Readiness: 503 while draining, ARI (when configured) is down, the AudioSocket port is "
                            "not open or MAX_CALLS calls are live.",
            {"200": _json(_READY, "avr takes new calls"), "503": _json(_READY, "avr takes no new calls now")},
            public=True)},
        "/metrics": {"get": _operation(
            "metrics", "avr", "Prometheus metrics (OpenMetrics when Accept asks for it).",
            {"200": {"description": "Every metric (also keyless on METRICS_PORT)",
                     "content": {"text/plain": {"schema": _STRING},
                                 "application/openmetrics-text": {"schema": _STRING}}}})},
        "/call": {"post": _operation(
            "registerCall", "avr", "Register a dialplan AudioSocket call before it connects and decide its STS URL.",
            {"200": _json(_object(("sts_url", "override"), sts_url=_NULLABLE_STRING, override=_BOOLEAN),
                          "Registered: the call's STS URL (null: the echo agent), override: the webhook chose it"),
             "503": {**_json(_ref("Error"), "Draining, MAX_CALLS live, or CALL_INIT_MAX registrations waiting "
                                            "(Retry-After: 1)"),
                     "headers": {"Retry-After": {"schema": _STRING}}}},
            body=_CALL_BODY,
            description="Every payload field is appended to STS_URL as a query parameter; the call_initiated "
                        "webhook's sts_url replaces the base.")},
        "/events": {"get": _operation(
            "events", "events", "WebSocket: real-time call event stream (a snapshot, then one JSON message per event).",
            {"101": {"description": "Switched to the WebSocket protocol"},
             "400": {"description": "A WebSocket handshake autobahn refuses",
                     "content": {"text/html": {"schema": _STRING}}},
             "426": {"description": "Not a WebSocket upgrade request (no Upgrade header)"}},
            parameters=[{"name": "audioFrames", "in": "query", "required": False, "schema": _STRING,
                         "description": "1, true or yes (any case): also send call.audio_frame events; anything "
                                        "else: not"}],
            description="The messages are described in the README (\"Calls and events\"). On the "
                        "KEYLESS_EVENTS_PORT listener (127.0.0.1) no key is needed.")},
        **_call_control_paths(),
        "/allowlist": {"get": _operation(
            "showAllowlist", "allowlist", "Show the allowlist in force, and why its file was last refused.",
            {"200": _json({**allowlist, "description": "inbound, outbound, note, file, closed, error"}, "The lists")},
            errors={"503": "Unavailable"})},
        "/allowlist/reload": {"post": _operation(
            "reloadAllowlist", "allowlist", "Read the allowlist file again (422: unusable, the lists in force kept).",
            {"200": _json(allowlist, "Reloaded"), "422": _json(_ref("Error"), "The file cannot be used")},
            errors={"503": "Unavailable", "413": "TooLarge"})},
    }
    return copy.deepcopy({
        "openapi": "3.1.0",
        "info": {"title": "avr", "version": avr.__version__, "description": _DESCRIPTION,
                 "license": {"name": "MIT", "identifier": "MIT"}},
        "tags": [{"name": name} for name in ("avr", "calls", "media", "recordings", "bridges", "agents", "allowlist",
                                             "events")],
        "paths": paths,
        "components": {
            "schemas": _SCHEMAS,
            "responses": _RESPONSES,
            "securitySchemes": {
                "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "apiKeyQuery": {"type": "apiKey", "in": "query", "name": "api_key"},
                "bearer": {"type": "http", "scheme": "bearer", "description": "The API key as a bearer token"},
            },
        },
        "security": [{"apiKeyHeader": []}, {"apiKeyQuery": []}, {"bearer": []}],
    })


@define(eq=False)
class OpenApiRoutes:
    """``GET /openapi.json``, installed on an app built elsewhere; public (see the module)."""

    _body: bytes = field(factory=lambda: json.dumps(build_document(), separators=(",", ":")).encode("ascii"),
                         init=False, repr=False)

    def install(self, app: Klein) -> None:
        """Register ``GET /openapi.json`` (endpoint `OPENAPI_ENDPOINT`)."""
        add_route(app, "/openapi.json", self.document, methods=["GET"], endpoint=OPENAPI_ENDPOINT)

    def policies(self) -> dict[str, RoutePolicy]:
        """Public."""
        return {OPENAPI_ENDPOINT: RoutePolicy(public=True)}

    def document(self, request: IRequest) -> bytes:
        """The OpenAPI 3.1 document of every route (served without the API key)."""
        request.setHeader(b"content-type", b"application/json")
        return self._body
