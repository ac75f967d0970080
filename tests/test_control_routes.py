"""
Tests for avr.control.routes: the call-control REST API over StubTreq, against a fake ICallControl.

Every route: success, authentication, "ARI not configured", strict validation, and the mapping of model and
Asterisk failures to JSON errors.
"""

from __future__ import annotations

import json
import struct
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from klein import Klein
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from zope.interface import implementer
from zope.interface.verify import verifyObject

from avr.ari.errors import AriError, AriUnavailable
from avr.control import errors
from avr.control.call_registry import CallRegistry
from avr.control.hub import EventsHub
from avr.control.records import OUTBOUND, CallRecord, call_id_for
from avr.control.routes import NOT_CONFIGURED, ControlRoutes
from avr.control.tasks import TaskGroup
from avr.http.json import add_route, install_error_handlers
from avr.control.agents import AgentSpec
from avr.interfaces import ICallControl
from tests.helpers import fired, wav_file

API_KEY = "k3y-for-tests"
BASE = "http://avr.test"

CHANNEL = "1700000000.1"
CALL = {"id": call_id_for(CHANNEL), "channelId": CHANNEL, "state": "answered", "direction": "outbound"}
BRIDGE = {"id": "b-1", "name": "conf", "type": "mixing", "calls": []}
AGENT = {"uuid": "0f6b2d9e-1111-4c1c-9d3e-5a2f7b9c0d11", "state": "active", "stsUrl": None, "createdAt": None}
RECORDING = {"name": "rec-1", "format": "wav"}
PLAYBACK = {"playbackId": "pb-1", "callId": CALL["id"], "kind": "media", "state": "queued"}


class FileResource(Resource):
    """Serves a recording body the way ARI's ``/recordings/stored/{name}/file`` does."""

    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes = b"audio/x-wav", cut: bool = False) -> None:
        super().__init__()
        self.body, self.content_type, self.cut = body, content_type, cut

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", self.content_type)
        request.setHeader(b"content-length", str(len(self.body)).encode())
        if self.cut:  # the connection dies halfway through the body
            request.write(self.body[: len(self.body) // 2])
            request.channel.transport.abortConnection()
            return b""
        return self.body


#: An option the route did not pass (see `FakeControl.record`).
_UNSET: Any = object()


@implementer(ICallControl)
class FakeControl:
    """
    A call-control model that records every call and answers with fixed records, or raises the failure set in
    ``failures[method name]``.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []
        self.failures: dict[str, BaseException] = {}
        self.file = FileResource(b"RIFF....WAVEdata" + bytes(range(256)) * 64)
        self.file_client: StubTreq | None = None

    def _called(self, method: str, /, *args: Any, **kwargs: Any) -> None:
        self.calls.append((method, args, kwargs))
        if method in self.failures:
            raise self.failures[method]

    def status(self) -> dict:
        return {"ari": "connected", "activeCalls": 1}

    def snapshot(self) -> dict:
        return {"calls": [CALL], "bridges": [BRIDGE]}

    async def list_endpoints(self) -> list:
        self._called("list_endpoints")
        return [{"technology": "PJSIP", "resource": "1001", "state": "online", "channelIds": []}]

    async def list_calls(self) -> list:
        self._called("list_calls")
        return [CALL]

    async def get_call(self, call_id: str) -> dict:
        self._called("get_call", call_id)
        return CALL

    async def originate(self, endpoint: str, caller_id: str | None = None, timeout: int = 30,
                        variables: dict | None = None, context: str | None = None, extension: str | None = None,
                        priority: int | None = None, agent: Any = None) -> dict:
        self._called("originate", endpoint, caller_id=caller_id, timeout=timeout, variables=variables,
                     context=context, extension=extension, priority=priority, agent=agent)
        return {**CALL, "state": "dialing", "endpoint": endpoint}

    async def attach_agent(self, call_id: str, sts_url: str | None = None, route: str | None = None,
                           payload: dict | None = None) -> dict:
        self._called("attach_agent", call_id, sts_url=sts_url, route=route, payload=payload)
        return {"callId": call_id, "agent": AGENT}

    async def detach_agent(self, call_id: str) -> dict:
        self._called("detach_agent", call_id)
        return {"callId": call_id, "agent": AGENT}

    async def answer(self, call_id: str) -> dict:
        self._called("answer", call_id)
        return CALL

    async def hangup(self, call_id: str, reason: str = "normal") -> dict:
        self._called("hangup", call_id, reason=reason)
        return CALL

    async def play(self, call_id: str, media: list[str]) -> dict:
        self._called("play", call_id, media)
        return {**PLAYBACK, "media": media}

    async def stop_playback(self, call_id: str, playback_id: str) -> dict:
        self._called("stop_playback", call_id, playback_id)
        return {**PLAYBACK, "playbackId": playback_id, "callId": call_id}

    async def play_pcm(self, call_id: str, pcm: bytes, rate: int) -> dict:
        self._called("play_pcm", call_id, pcm, rate)
        return {**PLAYBACK, "kind": "pcm", "rate": rate}

    async def speak(self, call_id: str, text: str, voice: str | None = None, language: str | None = None,
                    speed: float | None = None) -> dict:
        self._called("speak", call_id, text, voice=voice, language=language, speed=speed)
        return {"status": "ok", "text": text, "voice": voice or "vivian", "language": language or "English",
                "durationSeconds": 1.0, "playbackId": "pb-2"}

    async def start_audio_capture(self, call_id: str) -> dict:
        self._called("start_audio_capture", call_id)
        return {"status": "started", "audioCapture": {"enabled": True, "format": "slin16", "sampleRate": 16000}}

    async def stop_audio_capture(self, call_id: str) -> dict:
        self._called("stop_audio_capture", call_id)
        return {"status": "stopped", "audioCapture": None}

    async def record(self, call_id: str, name: Any = _UNSET, format: Any = _UNSET, max_duration: Any = _UNSET,
                     beep: Any = _UNSET, if_exists: Any = _UNSET) -> dict:
        # Only the options the route passed are recorded: the others keep the model's defaults.
        given = {"name": name, "format": format, "max_duration": max_duration, "beep": beep, "if_exists": if_exists}
        self._called("record", call_id, **{k: v for k, v in given.items() if v is not _UNSET})
        return {"name": "call-1" if name is _UNSET else name, "callId": call_id,
                "format": "wav" if format is _UNSET else format, "state": "queued"}

    async def stop_recording(self, name: str) -> dict:
        self._called("stop_recording", name)
        return {"name": name, "status": "stopped"}

    async def cancel_recording(self, name: str) -> dict:
        self._called("cancel_recording", name)
        return {"name": name, "status": "cancelled"}

    async def send_dtmf(self, call_id: str, dtmf: str, between: int | None = None,
                        duration: int | None = None) -> dict:
        self._called("send_dtmf", call_id, dtmf, between=between, duration=duration)
        return {"callId": call_id, "dtmf": dtmf}

    async def transfer(self, call_id: str, endpoint: str, caller_id: str | None = None, timeout: int = 30) -> dict:
        self._called("transfer", call_id, endpoint, caller_id=caller_id, timeout=timeout)
        return {"callId": call_id, "newCallId": "1700000000.2", "bridgeId": "b-t",
                "bridge": {**BRIDGE, "id": "b-t", "kind": "transfer", "calls": [call_id, "1700000000.2"]}}

    async def create_bridge(self, name: str | None = None) -> dict:
        self._called("create_bridge", name=name)
        return {**BRIDGE, "name": name}

    async def list_bridges(self) -> list:
        self._called("list_bridges")
        return [BRIDGE]

    async def get_bridge(self, bridge_id: str) -> dict:
        self._called("get_bridge", bridge_id)
        return BRIDGE

    async def destroy_bridge(self, bridge_id: str) -> dict:
        self._called("destroy_bridge", bridge_id)
        return {"id": bridge_id, "status": "destroyed"}

    async def add_to_bridge(self, bridge_id: str, call_id: str) -> dict:
        self._called("add_to_bridge", bridge_id, call_id)
        return {**BRIDGE, "calls": [call_id]}

    async def remove_from_bridge(self, bridge_id: str, call_id: str) -> dict:
        self._called("remove_from_bridge", bridge_id, call_id)
        return BRIDGE

    async def list_recordings(self) -> list:
        self._called("list_recordings")
        return [RECORDING]

    async def get_recording(self, name: str) -> dict:
        self._called("get_recording", name)
        return RECORDING

    async def recording_file(self, name: str) -> Any:
        self._called("recording_file", name)
        self.file_client = StubTreq(self.file)
        return await self.file_client.get("http://ari.test/ari/recordings/stored/rec-1/file")

    async def copy_recording(self, name: str, destination: str) -> dict:
        self._called("copy_recording", name, destination)
        return {"name": destination, "format": "wav"}

    async def delete_recording(self, name: str) -> dict:
        self._called("delete_recording", name)
        return {"name": name, "status": "deleted"}


class Api:
    """The routes on a Klein app, driven in memory."""

    def __init__(self, control: FakeControl | None, api_key: str | None = API_KEY, max_body: int = 4096,
                 max_upload: int = 1024 * 1024) -> None:
        self.control = control
        self.clock = Clock()
        self.hub = EventsHub(self.clock, ping_interval=0)
        self.registry = CallRegistry(self.clock, self.hub, TaskGroup(self.clock))
        self.record = CallRecord(CALL["id"], CHANNEL, OUTBOUND, 1700000000.0, state="answered",
                                 answered_at=1700000001.0)
        self.registry.add(self.record)
        self.app = Klein()
        install_error_handlers(self.app)
        ControlRoutes(control, self.hub, self.registry, max_body=max_body, api_key=api_key, clock=self.clock,
                      max_upload=max_upload).install(self.app)
        self.stub = StubTreq(self.app.resource())

    def request(self, method: str, path: str, body: Any = None, *, key: str | None = API_KEY,
                raw: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
        """One request; returns (status, parsed JSON or raw bytes, response)."""
        all_headers = dict(headers or {})
        if key is not None:
            all_headers["X-API-Key"] = key
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            all_headers.setdefault("Content-Type", "application/json")
        d = self.stub.request(method, BASE + path, data=data, headers=all_headers)
        self.settle()
        response = self.result(d)
        content = self.stub.content(response)
        self.settle()
        payload = self.result(content)
        media_type = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        if media_type == b"application/json":
            payload = json.loads(payload)
        return response.code, payload, response

    def settle(self) -> None:
        for _ in range(10):
            self.stub.flush()
            if self.control is not None and self.control.file_client is not None:
                self.control.file_client.flush()

    @staticmethod
    def result(d: Any) -> Any:
        return fired(d, "no response")


#: (method, path, valid body) of every route that needs the key; bodies are valid so only auth can fail.
PROTECTED = [
    ("GET", "/endpoints", None),
    ("GET", "/calls", None),
    ("POST", "/calls", {"endpoint": "PJSIP/1001"}),
    ("GET", "/calls/c1", None),
    ("DELETE", "/calls/c1", None),
    ("POST", "/calls/c1/answer", None),
    ("POST", "/calls/c1/play", {"media": "sound:hello-world"}),
    ("DELETE", "/calls/c1/play/pb-1", None),
    ("POST", "/calls/c1/play/file", None),
    ("POST", "/calls/c1/record", {}),
    ("POST", "/calls/c1/dtmf", {"dtmf": "1"}),
    ("POST", "/calls/c1/transfer", {"endpoint": "PJSIP/1002"}),
    ("POST", "/bridges", None),
    ("GET", "/bridges", None),
    ("GET", "/bridges/b1", None),
    ("DELETE", "/bridges/b1", None),
    ("POST", "/bridges/b1/addChannel", {"callId": "c1"}),
    ("POST", "/bridges/b1/removeChannel", {"callId": "c1"}),
    ("GET", "/recordings", None),
    ("GET", "/recordings/r1", None),
    ("GET", "/recordings/r1/file", None),
    ("POST", "/recordings/r1/copy", {"destinationName": "r2"}),
    ("DELETE", "/recordings/r1", None),
]
#: The routes that need ARI (reading the call registry does not).
CONTROL_ROUTES = [route for route in PROTECTED if route[:2] not in (("GET", "/calls"), ("GET", "/calls/c1"))]
ALL_PROTECTED = PROTECTED + [("GET", "/events", None)]


def test_fake_provides_icallcontrol() -> None:
    """The fake model provides ICallControl (as the real one must)."""
    assert verifyObject(ICallControl, FakeControl())


# --- authentication ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), ALL_PROTECTED)
@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_every_route_but_the_index_needs_the_key(method: str, path: str, body: Any, key: str | None) -> None:
    """Without the key, or with a wrong one, every route answers 401 JSON and the model is not touched."""
    api = Api(FakeControl())
    status, payload, _ = api.request(method, path, body, key=key)
    assert status == 401
    assert "API key" in payload["error"]
    assert api.control is not None and api.control.calls == []


def test_key_in_the_query_works() -> None:
    """?api_key= is accepted as well as the header."""
    api = Api(FakeControl())
    status, payload, _ = api.request("GET", f"/calls?api_key={API_KEY}", key=None)
    assert (status, payload) == (200, {"calls": [api.record.to_dict()]})


def test_the_key_never_appears_in_errors() -> None:
    """A wrong key is not echoed back."""
    status, payload, _ = Api(FakeControl()).request("GET", "/calls", key="guess-1234")
    assert status == 401 and "guess-1234" not in json.dumps(payload) and API_KEY not in json.dumps(payload)


def test_without_a_configured_key_everything_is_open() -> None:
    """API_KEY unset: no key needed."""
    status, _, _ = Api(FakeControl(), api_key=None).request("GET", "/calls", key=None)
    assert status == 200


# --- GET / ------------------------------------------------------------------------------------------------------


def test_index_is_open_and_lists_every_registered_route() -> None:
    """
    GET / needs no key and lists the routes actually registered (including other modules' routes, with their
    docstrings), in asterisk-api's "METHOD /path/:param" form.
    """
    api = Api(FakeControl())

    def health(request: Any) -> bytes:
        """Health check."""
        return b"ok"

    add_route(api.app, "/health", health, methods=["GET"], endpoint="core.health")
    status, payload, _ = api.request("GET", "/", key=None)
    assert status == 200
    endpoints = payload["endpoints"]
    for method, path, _ in ALL_PROTECTED:
        generic = path.replace("/c1", "/:id").replace("/b1", "/:id").replace("/r1", "/:name")
        generic = generic.replace("/pb-1", "/:playbackId")
        assert f"{method} {generic}" in endpoints
    assert endpoints["GET /"].startswith("API overview")
    assert endpoints["POST /calls"] == "Originate an outbound call."
    assert "GET /health" in endpoints
    assert payload["ari"] == "connected"  # the model's live status
    assert "X-API-Key" in payload["authentication"]
    assert API_KEY not in json.dumps(payload)


def test_unknown_route_and_method_are_json() -> None:
    """Routing errors are JSON too (404, 405)."""
    api = Api(FakeControl())
    status, payload, _ = api.request("GET", "/nope")
    assert status == 404 and "no such route" in payload["error"]
    status, payload, _ = api.request("PUT", "/calls")
    assert status == 405 and "not allowed" in payload["error"]


# --- ARI not configured -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), CONTROL_ROUTES)
def test_call_control_routes_answer_503_when_ari_is_not_configured(method: str, path: str, body: Any) -> None:
    """control=None: every call-control route says how to configure ARI; nothing else breaks."""
    status, payload, _ = Api(None).request(method, path, body)
    assert (status, payload) == (503, {"error": NOT_CONFIGURED})


def test_the_call_registry_is_read_without_ari() -> None:
    """control=None: GET /calls and GET /calls/:id still answer from the call registry."""
    api = Api(None)
    assert api.request("GET", "/calls")[:2] == (200, {"calls": [api.record.to_dict()]})
    assert api.request("GET", f"/calls/{CALL['id']}")[:2] == (200, {"call": api.record.to_dict()})
    assert api.request("GET", "/calls/c1")[0] == 404


def test_index_and_events_work_without_ari() -> None:
    """GET / and /events still work when ARI is not configured (events: 426 to a plain GET, not 503)."""
    api = Api(None)
    status, payload, _ = api.request("GET", "/", key=None)
    assert status == 200 and payload["ari"] == "not configured"
    status, _, _ = api.request("GET", "/events")
    assert status == 426


def test_auth_is_checked_before_configuration() -> None:
    """Without the key the answer is 401 even when ARI is not configured (no information before auth)."""
    status, _, _ = Api(None).request("GET", "/calls", key=None)
    assert status == 401


# --- success of each route --------------------------------------------------------------------------------------


def test_list_endpoints_calls_bridges_recordings() -> None:
    """The list routes wrap the model's lists; GET /calls lists the call registry."""
    api = Api(FakeControl())
    assert api.request("GET", "/endpoints")[1]["endpoints"][0]["resource"] == "1001"
    assert api.request("GET", "/calls")[:2] == (200, {"calls": [api.record.to_dict()]})
    assert api.request("GET", "/bridges")[:2] == (200, {"bridges": [BRIDGE]})
    assert api.request("GET", "/recordings")[:2] == (200, {"recordings": [RECORDING]})


def test_get_one_call_bridge_recording() -> None:
    """The get routes pass the id and wrap the record; GET /calls/:id reads the call registry."""
    api = Api(FakeControl())
    assert api.request("GET", "/calls/1700000000.1")[:2] == (200, {"call": api.record.to_dict()})
    assert api.request("GET", "/calls/1700000000.9")[:2] == (404, {"error": "Call 1700000000.9 not found"})
    assert api.request("GET", "/bridges/b-1")[:2] == (200, {"bridge": BRIDGE})
    assert api.request("GET", "/recordings/rec-1")[:2] == (200, {"recording": RECORDING})
    assert [c[:2] for c in api.control.calls] == [  # type: ignore[union-attr]
        ("get_bridge", ("b-1",)), ("get_recording", ("rec-1",))]


def test_originate_passes_every_option() -> None:
    """POST /calls: 201 {"call"}; camelCase fields become the model's keyword arguments; timeout defaults to 30."""
    api = Api(FakeControl())
    status, payload, _ = api.request("POST", "/calls", {"endpoint": "PJSIP/1001", "callerId": "5551234",
                                                        "timeout": 45, "variables": {"FOO": "bar"}})
    assert status == 201 and payload["call"]["endpoint"] == "PJSIP/1001"
    assert api.control.calls[-1] == ("originate", ("PJSIP/1001",), {  # type: ignore[union-attr]
        "caller_id": "5551234", "timeout": 45, "variables": {"FOO": "bar"}, "context": None, "extension": None,
        "priority": None, "agent": None})
    api.request("POST", "/calls", {"endpoint": "PJSIP/5551234@trunk", "context": "from-avr", "extension": "100",
                                   "priority": 1})
    assert api.control.calls[-1][2]["timeout"] == 30  # type: ignore[union-attr]
    assert api.control.calls[-1][2]["context"] == "from-avr"  # type: ignore[union-attr]


def test_agent_routes() -> None:
    """POST /calls with agent, POST and DELETE /calls/:id/agent pass the agent's fields to the model."""
    api = Api(FakeControl())
    status, _, _ = api.request("POST", "/calls", {"endpoint": "PJSIP/1001", "agent": {
        "sts_url": "ws://sts:6030/x", "payload": {"lang": "en"}}})
    assert status == 201
    assert api.control.calls[-1][2]["agent"] == AgentSpec("ws://sts:6030/x", None, {"lang": "en"})  # type: ignore[union-attr]
    status, body, _ = api.request("POST", "/calls/c1/agent", {"route": "sales"})
    assert (status, body) == (201, {"status": "ok", "callId": "c1", "agent": AGENT})
    assert api.control.calls[-1] == ("attach_agent", ("c1",), {  # type: ignore[union-attr]
        "sts_url": None, "route": "sales", "payload": {}})
    assert api.request("POST", "/calls/c1/agent")[0] == 201  # no body: STS_URL
    status, body, _ = api.request("DELETE", "/calls/c1/agent")
    assert (status, body) == (200, {"status": "detached", "callId": "c1", "agent": AGENT})


@pytest.mark.parametrize("path, body, problem", [
    ("/calls", {"endpoint": "PJSIP/1", "agent": {"sts_url": "ftp://x"}}, "sts_url: must be a ws://"),
    ("/calls", {"endpoint": "PJSIP/1", "agent": "yes"}, "agent: must be an object"),
    ("/calls", {"endpoint": "PJSIP/1", "agent": {"sts_url": "ws://a", "route": "b"}}, "not both"),
    ("/calls/c1/agent", {"payload": [1]}, "payload: must be an object"),
    ("/calls/c1/agent", {"sts_url": "ws://a", "route": "b"}, "not both"),
])
def test_agent_fields_are_validated(path: str, body: dict, problem: str) -> None:
    """A bad agent is a 400 naming the problem, and the model is not called."""
    api = Api(FakeControl())
    status, payload, _ = api.request("POST", path, body)
    assert status == 400 and problem in payload["error"], payload
    assert not api.control.calls  # type: ignore[union-attr]


def test_hangup_with_default_body_and_query_reasons() -> None:
    """DELETE /calls/:id: reason from the body or the query, default normal; ``callId`` is the call's, also when the
    URL names its channel."""
    api = Api(FakeControl())
    assert api.request("DELETE", f"/calls/{CHANNEL}")[:2] == (200, {"status": "hungup", "callId": CALL["id"],
                                                                   "reason": "normal", "call": CALL})
    api.request("DELETE", "/calls/c1", {"reason": "busy"})
    api.request("DELETE", "/calls/c1?reason=rejected")
    api.request("DELETE", "/calls/c1?reason=busy", {"reason": "busy"})
    reasons = [c[2]["reason"] for c in api.control.calls]  # type: ignore[union-attr]
    assert reasons == ["normal", "busy", "rejected", "busy"]


def test_answer() -> None:
    """POST /calls/:id/answer answers the call."""
    api = Api(FakeControl())
    status, payload, _ = api.request("POST", "/calls/c1/answer")
    assert status == 200 and payload["status"] == "answered" and payload["call"] == CALL
    assert api.control.calls == [("answer", ("c1",), {})]  # type: ignore[union-attr]


@pytest.mark.parametrize(("media", "expected"), [
    ("sound:hello-world", ["sound:hello-world"]),
    (["sound:hello-world", "sound:goodbye"], ["sound:hello-world", "sound:goodbye"]),
    (["recording:rec-1", "digits:123", "tone:ring;tonezone=fr", "number:42", "characters:abc"], None),
])
def test_play_single_media_or_a_playlist(media: Any, expected: list[str] | None) -> None:
    """POST /calls/:id/play: a string or a list; the model gets a list; 201 with the playback."""
    api = Api(FakeControl())
    status, payload, _ = api.request("POST", "/calls/c1/play", {"media": media})
    assert status == 201
    assert payload["playback"]["media"] == (expected or media)
    assert api.control.calls == [("play", ("c1", expected or media), {})]  # type: ignore[union-attr]


def test_stop_playback() -> None:
    """DELETE /calls/:id/play/:playbackId stops it."""
    api = Api(FakeControl())
    status, payload, _ = api.request("DELETE", "/calls/c1/play/pb-1")
    assert status == 200 and payload["status"] == "stopped"
    assert api.control.calls == [("stop_playback", ("c1", "pb-1"), {})]  # type: ignore[union-attr]


@pytest.mark.parametrize("content_type", ["audio/wav", "audio/x-wav", "audio/wave", "application/octet-stream",
                                          "Audio/WAV; charset=binary"])
def test_play_file_decodes_the_wav_and_plays_pcm(content_type: str) -> None:
    """A stereo 22.05 kHz WAV upload reaches the model as mono PCM16 at 24 kHz."""
    api = Api(FakeControl())
    frames = struct.pack("<4h", 1000, 3000, -1000, -3000) * 2205
    status, payload, _ = api.request("POST", "/calls/c1/play/file",
                                     raw=wav_file(frames, rate=22050, channels=2),
                                     headers={"Content-Type": content_type})
    assert status == 201, payload
    assert payload["status"] == "ok" and payload["sampleRate"] == 24000
    assert payload["durationSeconds"] == pytest.approx(0.2, abs=0.002)
    name, (call_id, pcm, rate), _ = api.control.calls[-1]  # type: ignore[union-attr]
    assert (name, call_id, rate) == ("play_pcm", "c1", 24000)
    assert abs(len(pcm) - 2 * 4800) <= 4


def test_record_with_options_and_defaults() -> None:
    """POST /calls/:id/record: 201 with the name; only given options reach the model (its defaults apply)."""
    api = Api(FakeControl())
    status, payload, _ = api.request("POST", "/calls/c1/record", {"format": "wav", "maxDurationSeconds": 300})
    assert status == 201 and payload["recordingName"] == "call-1"
    assert api.control.calls[-1] == ("record", ("c1",), {"format": "wav", "max_duration": 300})  # type: ignore[union-attr]
    api.request("POST", "/calls/c1/record", {"name": "greeting.v2", "beep": True, "ifExists": "overwrite",
                                             "format": "sln16"})
    assert api.control.calls[-1][2] == {  # type: ignore[union-attr]
        "name": "greeting.v2", "beep": True, "if_exists": "overwrite", "format": "sln16"}


def test_dtmf_normalises_letters() -> None:
    """POST /calls/:id/dtmf: a-d become A-D; pauses and timing pass through."""
    api = Api(FakeControl())
    status, payload, _ = api.request("POST", "/calls/c1/dtmf", {"dtmf": "12w#*abcdW", "between": 200,
                                                                "duration": 120})
    assert (status, payload) == (200, {"status": "ok", "dtmf": "12w#*ABCDW"})
    assert api.control.calls[-1] == ("send_dtmf", ("c1", "12w#*ABCDW"), {  # type: ignore[union-attr]
        "between": 200, "duration": 120})


def test_transfer() -> None:
    """POST /calls/:id/transfer: 201 with the model's answer."""
    api = Api(FakeControl())
    status, payload, _ = api.request("POST", "/calls/c1/transfer", {"endpoint": "PJSIP/1002", "timeout": 20})
    assert status == 201
    assert payload == {"callId": "c1", "newCallId": "1700000000.2", "bridgeId": "b-t", "bridge": {
        **BRIDGE, "id": "b-t", "kind": "transfer", "calls": ["c1", "1700000000.2"]}}
    assert api.control.calls[-1] == ("transfer", ("c1", "PJSIP/1002"), {  # type: ignore[union-attr]
        "caller_id": None, "timeout": 20})


def test_bridge_lifecycle() -> None:
    """Create (with and without a body), add, remove, destroy."""
    api = Api(FakeControl())
    assert api.request("POST", "/bridges")[:2] == (201, {"bridge": {**BRIDGE, "name": None}})
    assert api.request("POST", "/bridges", {"name": "conf"})[1]["bridge"]["name"] == "conf"
    status, payload, _ = api.request("POST", "/bridges/b-1/addChannel", {"callId": "c1"})
    assert status == 200 and payload["bridge"]["calls"] == ["c1"]
    assert api.request("POST", "/bridges/b-1/removeChannel", {"callId": "c1"})[0] == 200
    assert api.request("DELETE", "/bridges/b-1")[:2] == (200, {"status": "destroyed", "bridgeId": "b-1"})
    assert [c[0] for c in api.control.calls] == [  # type: ignore[union-attr]
        "create_bridge", "create_bridge", "add_to_bridge", "remove_from_bridge", "destroy_bridge"]


def test_recording_copy_and_delete() -> None:
    """Copy (201), delete stored (?stored=true), stop live (no query, or ?stored=false)."""
    api = Api(FakeControl())
    assert api.request("POST", "/recordings/rec-1/copy", {"destinationName": "rec-2"})[:2] == (
        201, {"recording": {"name": "rec-2", "format": "wav"}})
    assert api.request("DELETE", "/recordings/rec-1?stored=true")[1]["status"] == "deleted"
    assert api.request("DELETE", "/recordings/rec-1")[1]["status"] == "stopped"
    assert api.request("DELETE", "/recordings/rec-1?stored=false")[1]["status"] == "stopped"
    assert [c[:2] for c in api.control.calls] == [  # type: ignore[union-attr]
        ("copy_recording", ("rec-1", "rec-2")), ("delete_recording", ("rec-1",)), ("stop_recording", ("rec-1",)),
        ("stop_recording", ("rec-1",))]


def test_recording_file_is_streamed_with_asterisks_content_type() -> None:
    """GET /recordings/:name/file relays the bytes, Content-Type and Content-Length of Asterisk's answer."""
    control = FakeControl()
    api = Api(control)
    status, body, response = api.request("GET", "/recordings/rec-1/file")
    assert status == 200
    assert body == control.file.body
    assert response.headers.getRawHeaders(b"content-type") == [b"audio/x-wav"]
    assert response.length == len(control.file.body)  # sent with Content-Length, not chunked


@pytest.mark.logs_errors(r"Recording download broke off after 5000 bytes")
def test_recording_download_cut_by_asterisk_is_cut_for_the_client() -> None:
    """If Asterisk's body breaks off, the client's download fails too instead of looking complete."""
    control = FakeControl()
    control.file = FileResource(bytes(10000), cut=True)
    api = Api(control)
    d = api.stub.get(BASE + "/recordings/rec-1/file", headers={"X-API-Key": API_KEY})
    api.settle()
    response = api.result(d)
    assert response.code == 200
    body = api.stub.content(response)
    api.settle()
    failures: list[Any] = []
    body.addErrback(failures.append)
    assert failures, "the truncated download must not end as a complete body"


# --- validation -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body", "detail"), [
    ("POST", "/calls", {}, "endpoint: required"),
    ("POST", "/calls", {"endpoint": 1001}, "endpoint: must be a string, not a number"),
    ("POST", "/calls", {"endpoint": "1001"}, "endpoint: must be a dial string"),
    ("POST", "/calls", {"endpoint": "PJSIP/10 01"}, "endpoint: must be a dial string"),
    ("POST", "/calls", {"endpoint": "PJSIP/1001,PJSIP/1002"}, "endpoint: must be a dial string"),
    ("POST", "/calls", {"endpoint": ""}, "endpoint: must not be empty"),
    ("POST", "/calls", {"endpoint": "PJSIP/1001", "timeout": 0}, "timeout: must be between 1 and 120"),
    ("POST", "/calls", {"endpoint": "PJSIP/1001", "timeout": 121}, "timeout: must be between 1 and 120"),
    ("POST", "/calls", {"endpoint": "PJSIP/1001", "timeout": "30"}, "timeout: must be a whole number"),
    ("POST", "/calls", {"endpoint": "PJSIP/1001", "timeout": True}, "timeout: must be a whole number"),
    ("POST", "/calls", {"endpoint": "PJSIP/1001", "timeout": 30.5}, "timeout: must be a whole number"),
    ("POST", "/calls", {"endpoint": "PJSIP/1001", "callerId": "a\nb"}, "callerId: must not contain control"),
    ("POST", "/calls", {"endpoint": "PJSIP/1001", "variables": {"A": 1}}, "variables: A: value must be a string"),
    ("POST", "/calls", {"endpoint": "PJSIP/1001", "variables": ["A"]}, "variables: must be an object"),
    ("POST", "/calls", {"endpoint": "PJSIP/1001", "variables": {"bad name": "x"}}, "not a channel variable"),
    ("POST", "/calls", {"endpoint": "PJSIP/1001", "priority": 0}, "priority: must be between"),
    ("POST", "/calls/c1/play", {}, "media: required"),
    ("POST", "/calls/c1/play", {"media": ""}, "media: must not be empty"),
    ("POST", "/calls/c1/play", {"media": []}, "media: must list 1 to 20"),
    ("POST", "/calls/c1/play", {"media": ["sound:a"] * 21}, "media: must list 1 to 20"),
    ("POST", "/calls/c1/play", {"media": [1]}, "media: item 0: must be a string"),
    ("POST", "/calls/c1/play", {"media": "http://evil/x.wav"}, "is not a media URI"),
    ("POST", "/calls/c1/play", {"media": "hello-world"}, "is not a media URI"),
    ("POST", "/calls/c1/play", {"media": {"uri": "sound:x"}}, "media: must be a media URI or a list"),
    ("POST", "/calls/c1/record", {"format": "mp3"}, "format: must be one of"),
    ("POST", "/calls/c1/record", {"maxDurationSeconds": 0}, "maxDurationSeconds: must be between 1 and 7200"),
    ("POST", "/calls/c1/record", {"maxDurationSeconds": 7201}, "maxDurationSeconds: must be between 1 and 7200"),
    ("POST", "/calls/c1/record", {"beep": "yes"}, "beep: must be true or false"),
    ("POST", "/calls/c1/record", {"name": "../etc/passwd"}, "name: must be 1-200 letters"),
    ("POST", "/calls/c1/record", {"name": ".hidden"}, "name: must be 1-200 letters"),
    ("POST", "/calls/c1/record", {"name": "a..b"}, "name: must be 1-200 letters"),
    ("POST", "/calls/c1/play", {"media": "sound:a,sound:b"}, "must not contain commas"),
    ("POST", "/calls/c1/play", {"media": [" sound:a"]}, "surrounding spaces"),
    ("POST", "/calls/c1/record", {"ifExists": "replace"}, "ifExists: must be one of fail, overwrite, append"),
    ("POST", "/calls/c1/dtmf", {}, "dtmf: required"),
    ("POST", "/calls/c1/dtmf", {"dtmf": "12x"}, "dtmf: must contain only DTMF characters"),
    ("POST", "/calls/c1/dtmf", {"dtmf": "1" * 101}, "dtmf: must be at most 100"),
    ("POST", "/calls/c1/dtmf", {"dtmf": "1", "between": -1}, "between: must be between 0 and 10000"),
    ("POST", "/calls/c1/dtmf", {"dtmf": "1", "duration": 10}, "duration: must be between 40 and 10000"),
    ("POST", "/calls/c1/transfer", {}, "endpoint: required"),
    ("POST", "/calls/c1/transfer", {"endpoint": "PJSIP/1002", "timeout": 500}, "timeout: must be between"),
    ("POST", "/calls/c1/transfer", {"endpoint": "nope"}, "endpoint: must be a dial string"),
    ("POST", "/bridges", {"name": 5}, "name: must be a string"),
    ("POST", "/bridges", {"name": "x" * 81}, "name: must be at most 80 characters"),
    ("POST", "/bridges/b1/addChannel", {}, "callId: required"),
    ("POST", "/bridges/b1/addChannel", {"callId": "bad id!"}, "callId: must be a call id"),
    ("POST", "/recordings/r1/copy", {}, "destinationName: required"),
    ("POST", "/recordings/r1/copy", {"destinationName": "a/b"}, "destinationName: must be 1-200"),
    ("DELETE", "/calls/c1", {"reason": "bogus"}, "reason: must be one of normal, busy"),
])
def test_bad_bodies_are_400_with_details(method: str, path: str, body: Any, detail: str) -> None:
    """Every invalid body is a 400 naming the field and the problem; the model is not called."""
    api = Api(FakeControl())
    status, payload, _ = api.request(method, path, body)
    assert status == 400, payload
    assert payload["error"].startswith("Validation failed: ")
    assert any(detail in d for d in payload["details"]), payload
    assert api.control.calls == []  # type: ignore[union-attr]


def test_every_problem_is_listed() -> None:
    """Several problems in one body are all reported."""
    status, payload, _ = Api(FakeControl()).request("POST", "/calls", {"timeout": 0, "extra": 1, "callerId": 5})
    assert status == 400
    assert len(payload["details"]) == 3  # endpoint required, callerId type, timeout range ("extra" is ignored)


def test_null_counts_as_not_given() -> None:
    """An optional field sent as null is treated as absent."""
    api = Api(FakeControl())
    status, _, _ = api.request("POST", "/calls", {"endpoint": "PJSIP/1001", "callerId": None, "timeout": None})
    assert status == 201
    assert api.control.calls[-1][2]["timeout"] == 30  # type: ignore[union-attr]


@pytest.mark.parametrize(("raw", "error"), [
    (b"{not json", "not valid JSON"),
    (b"", "empty"),
    (b"[1, 2]", "must be a JSON object"),
    (b'"PJSIP/1001"', "must be a JSON object"),
    (b'{"endpoint": NaN}', "not valid JSON"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_malformed_bodies_are_400(raw: bytes, error: str) -> None:
    """Bodies that are not a JSON object are a 400 JSON error (after auth)."""
    status, payload, _ = Api(FakeControl()).request("POST", "/calls", raw=raw,
                                                    headers={"Content-Type": "application/json"})
    assert status == 400 and error in payload["error"]


def test_body_too_large_is_413() -> None:
    """A JSON body over HTTP_MAX_BODY is refused with 413."""
    big = {"endpoint": "PJSIP/1001", "callerId": "x" * 5000}
    status, payload, _ = Api(FakeControl(), max_body=4096).request("POST", "/calls", big)
    assert status == 413 and "4096" in payload["error"]


@pytest.mark.parametrize(("method", "path", "error"), [
    ("GET", "/calls/" + quote("bad id", safe=""), "invalid call id"),
    ("GET", "/calls/" + "x" * 129, "invalid call id"),
    ("POST", "/calls/" + quote("a;b", safe="") + "/answer", "invalid call id"),
    ("GET", "/bridges/" + quote("<b>", safe=""), "invalid bridge id"),
    ("DELETE", "/calls/c1/play/" + quote("p b", safe=""), "invalid playback id"),
    ("GET", "/recordings/.secret", "invalid recording name"),
    ("GET", "/recordings/" + quote("a b", safe="") + "/file", "invalid recording name"),
])
def test_bad_ids_are_400_before_the_model_is_asked(method: str, path: str, error: str) -> None:
    """Ids with characters outside the allowed set (or too long) never reach the model."""
    api = Api(FakeControl())
    status, payload, _ = api.request(method, path)
    assert status == 400 and error in payload["error"]
    assert api.control.calls == []  # type: ignore[union-attr]


@pytest.mark.parametrize(("path", "body", "error"), [
    ("/calls/c1?reason=bogus", None, "reason: must be one of"),
    ("/calls/c1?reason=busy", {"reason": "normal"}, "reason given twice"),
    ("/calls/c1?reason=busy&reason=normal", None, "more than once"),
])
def test_bad_hangup_reasons(path: str, body: Any, error: str) -> None:
    """The hang-up reason must be one of ARI's, given once."""
    api = Api(FakeControl())
    status, payload, _ = api.request("DELETE", path, body)
    assert status == 400 and error in payload["error"]
    assert api.control.calls == []  # type: ignore[union-attr]


def test_stored_must_be_true_or_false() -> None:
    """DELETE /recordings/:name?stored=maybe is a 400."""
    status, payload, _ = Api(FakeControl()).request("DELETE", "/recordings/r1?stored=maybe")
    assert status == 400 and "stored must be true or false" in payload["error"]


# --- uploads ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "content_type", "status", "error"), [
    (wav_file(b"\x00\x00" * 10), "text/plain", 415, "Content-Type audio/wav"),
    (wav_file(b"\x00\x00" * 10), None, 415, "got none"),
    (b"", "audio/wav", 400, "empty"),
    (b"this is not a wav file at all", "audio/wav", 415, "not a WAV file"),
    (wav_file(b"\x00\x00\x00" * 10, width=3), "audio/wav", 415, "24-bit"),
    (wav_file(b"\x00\x00" * 10)[:30], "audio/wav", 400, "damaged WAV file"),
    (b"RIFF\x10\x00\x00\x00WAVEdata\x04\x00\x00\x00\x00\x00\x00\x00", "audio/wav", 400, "before the fmt chunk"),
])
def test_bad_uploads_are_4xx_never_500(raw: bytes, content_type: str | None, status: int, error: str) -> None:
    """Wrong content type, empty, not WAV, unsupported or damaged WAV: a clear 4xx (asterisk-api answered 500)."""
    api = Api(FakeControl())
    headers = {"Content-Type": content_type} if content_type else {}
    got, payload, _ = api.request("POST", "/calls/c1/play/file", raw=raw, headers=headers)
    assert got == status and error in payload["error"], payload
    assert api.control.calls == []  # type: ignore[union-attr]


def test_upload_too_large_is_413() -> None:
    """An upload over the upload limit is refused with 413 before decoding."""
    api = Api(FakeControl(), max_upload=1000)
    status, payload, _ = api.request("POST", "/calls/c1/play/file", raw=wav_file(b"\x00\x00" * 1000),
                                     headers={"Content-Type": "audio/wav"})
    assert status == 413 and "1000" in payload["error"]


def test_upload_may_exceed_the_json_limit() -> None:
    """Uploads have their own, larger limit than JSON bodies."""
    api = Api(FakeControl(), max_body=4096)
    status, _, _ = api.request("POST", "/calls/c1/play/file", raw=wav_file(b"\x00\x00" * 8000),
                               headers={"Content-Type": "audio/wav"})
    assert status == 201


# --- failures from the model and from Asterisk ------------------------------------------------------------------


@pytest.mark.parametrize(("failure", "status", "error"), [
    (errors.NotFound("Call c1 not found"), 404, "Call c1 not found"),
    (errors.Conflict("Call c1 has ended"), 409, "Call c1 has ended"),
    (errors.Invalid("cannot answer an outbound call"), 422, "cannot answer an outbound call"),
    (errors.Unavailable("ARI is connecting"), 503, "ARI is connecting"),
    (errors.Timeout("target did not answer"), 504, "target did not answer"),
    (AriError(404, "Channel not found"), 404, "Asterisk: Channel not found"),
    (AriError(409, "Channel not in Stasis application"), 409, "Channel not in Stasis application"),
    (AriError(412, "Channel in invalid state"), 409, "Channel in invalid state"),
    (AriError(422, "Recording format not supported"), 422, "Recording format not supported"),
    (AriError(400, "Invalid parameters"), 400, "Invalid parameters"),
    (AriError(500, "An internal error prevented this request from being handled"), 502, "internal error"),
    (AriError(501, "Not implemented"), 502, "Not implemented"),
    (AriUnavailable("connection refused"), 503, "ARI is not reachable: connection refused"),
    pytest.param(RuntimeError("bug with a secret inside"), 500, "internal error",
                 marks=pytest.mark.logs_errors(r"Unhandled error serving .*bug with a secret inside")),
])
@pytest.mark.parametrize(("method", "path", "body", "model_method"), [
    ("DELETE", "/calls/c1", None, "hangup"),
    ("POST", "/calls", {"endpoint": "PJSIP/1001"}, "originate"),
    ("POST", "/calls/c1/dtmf", {"dtmf": "1"}, "send_dtmf"),
    ("GET", "/recordings/r1/file", None, "recording_file"),
    ("DELETE", "/recordings/r1", None, "stop_recording"),
])
def test_failures_map_to_json_errors(failure: BaseException, status: int, error: str, method: str, path: str,
                                     body: Any, model_method: str) -> None:
    """ControlError keeps its status; Asterisk's 4xx map through (412 → 409), other ARI failures are 502."""
    control = FakeControl()
    control.failures[model_method] = failure
    got, payload, response = Api(control).request(method, path, body)
    assert got == status
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert error in payload["error"]
    assert "secret" not in payload["error"]
    if isinstance(failure, AriError):
        assert payload["ariStatus"] == failure.status


def test_control_error_extra_fields_are_kept() -> None:
    """Extra fields of a ControlError become fields of the JSON error."""
    control = FakeControl()
    control.failures["originate"] = errors.NotFound("Endpoint not found", endpoint="PJSIP/9")
    status, payload, _ = Api(control).request("POST", "/calls", {"endpoint": "PJSIP/9"})
    assert (status, payload) == (404, {"error": "Endpoint not found", "endpoint": "PJSIP/9"})


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
FIELD_NAMES = st.sampled_from(["endpoint", "callerId", "timeout", "variables", "media", "dtmf", "between",
                               "duration", "name", "format", "maxDurationSeconds", "beep", "ifExists", "callId",
                               "destinationName", "reason", "context", "extension", "priority", "other"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([("POST", "/calls"), ("POST", "/calls/c1/play"), ("POST", "/calls/c1/record"),
                        ("POST", "/calls/c1/dtmf"), ("POST", "/calls/c1/transfer"), ("POST", "/bridges"),
                        ("POST", "/bridges/b1/addChannel"), ("POST", "/recordings/r1/copy"),
                        ("DELETE", "/calls/c1")]),
       st.dictionaries(FIELD_NAMES, JSON_VALUES, max_size=5) | JSON_VALUES)
def test_arbitrary_json_bodies_never_cause_a_500(route: tuple[str, str], body: Any) -> None:
    """Whatever JSON a client sends, the answer is a success or a 400 JSON error, never a 500."""
    method, path = route
    api = Api(FakeControl(), max_body=1 << 20)
    status, payload, _ = api.request(method, path, raw=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    assert status in (200, 201, 400), payload
    if status == 400:
        assert isinstance(payload["error"], str) and payload["error"]
