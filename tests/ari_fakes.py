"""
Fakes and builders for the call-control tests: a recording `IAriClient`, an `IEventSink`, an `IAudioInjector`, ARI
event builders shaped like the real Asterisk 22 events, and access to the real ARI captures (`avr.testing.captures`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from avr.ari.errors import AriError
from avr.control.model import CallControl
from avr.interfaces import IAriClient, IAudioInjector, IEventSink
from avr.testing.captures import captures_dir
from tests.helpers import fired

TIMESTAMP = "2026-11-21T11:59:50.255+0000"


@define
class Req:
    """One request the fake ARI received."""

    method: str
    path: str
    params: dict
    body: dict | None


@define
class _Route:
    method: str
    pattern: re.Pattern[str]
    result: Any
    hold: bool
    once: bool


@implementer(IAriClient)
@define(eq=False)
class FakeAri:
    """
    An `IAriClient` that records every request and answers from routes (latest first): a value (or a callable of
    the `Req`), an exception, or a held Deferred the test fires. Unrouted requests get ARI-like defaults.
    """

    requests: list[Req] = field(factory=list)
    routes: list[_Route] = field(factory=list)
    held: list[tuple[Req, Deferred]] = field(factory=list)

    def on(self, method: str, path: str, result: Any = None, hold: bool = False, once: bool = False) -> None:
        """Answer ``method`` requests whose path fully matches the regex ``path``."""
        self.routes.append(_Route(method, re.compile(path), result, hold, once))

    def request(self, method: str, path: str, params: dict | None = None, body: dict | None = None) -> Deferred:
        req = Req(method, path, dict(params or {}), body)
        self.requests.append(req)
        for route in reversed(self.routes):
            if route.method == method and route.pattern.fullmatch(path):
                if route.once:
                    self.routes.remove(route)
                if route.hold:
                    d: Deferred = Deferred()
                    self.held.append((req, d))
                    return d
                result = route.result(req) if callable(route.result) else route.result
                if isinstance(result, BaseException):
                    return fail(result)
                return succeed(result)
        return succeed(_default(req))

    def stream(self, path: str) -> Deferred:
        return self.request("STREAM", path)

    def find(self, method: str, path: str | None = None) -> list[Req]:
        """The requests with ``method`` (and a path matching the regex ``path``), in order."""
        return [r for r in self.requests if r.method == method and (path is None or re.fullmatch(path, r.path))]

    def release(self, index: int = 0, result: Any = None) -> Req:
        """Answer the ``index``-th held request (an exception fails it)."""
        req, d = self.held.pop(index)
        if isinstance(result, BaseException):
            d.errback(result)
        else:
            d.callback(result if result is not None else _default(req))
        return req


def _default(req: Req) -> Any:
    if req.method == "GET" and req.path in ("/channels", "/bridges", "/endpoints", "/recordings/stored"):
        return []
    if req.method == "POST" and req.path in ("/channels", "/channels/externalMedia"):
        channel_id = req.params.get("channelId", "1795262390.999")
        return channel(channel_id, state="Down", name=f"Local/{req.params.get('endpoint', '?')}-00000001;1")
    if req.method == "POST" and req.path.startswith("/bridges/") and req.path.count("/") == 2:
        return {"id": req.path.split("/")[2], "technology": "simple_bridge", "bridge_type": "mixing",
                "bridge_class": "stasis", "creator": "Stasis", "name": req.params.get("name") or "", "channels": [],
                "creationtime": TIMESTAMP, "video_mode": "talker"}
    if req.method == "POST" and re.fullmatch(r"/channels/[^/]+/play/[^/]+", req.path):
        return {"id": req.path.split("/")[4], "media_uri": str(req.params.get("media")),
                "target_uri": f"channel:{req.path.split('/')[2]}", "language": "en", "state": "queued"}
    if req.method == "POST" and re.fullmatch(r"/channels/[^/]+/record", req.path):
        return {"name": req.params["name"], "format": req.params["format"], "state": "queued",
                "target_uri": f"channel:{req.path.split('/')[2]}"}
    return None


def ari_404(message: str = "Channel not found") -> AriError:
    """Asterisk's 404."""
    return AriError(404, message)


@implementer(IEventSink)
@define(eq=False)
class FakeSink:
    """Collects published events."""

    events: list[dict] = field(factory=list)

    def publish(self, event: dict) -> None:
        assert set(event) >= {"type", "timestamp", "data"} and ("callId" in event or "bridgeId" in event)
        assert event.get("callId") != event.get("channelId", object())  # an ARI call's id is never its channel's
        json.dumps(event)  # must be JSON-ready
        self.events.append(event)

    def types(self, call_id: str | None = None) -> list[str]:
        """Event types, optionally of one call."""
        return [e["type"] for e in self.events if call_id is None or e.get("callId") == call_id]

    def of(self, type_: str) -> list[dict]:
        """The events of one type."""
        return [e for e in self.events if e["type"] == type_]

    def clear(self) -> None:
        self.events.clear()


@implementer(IAudioInjector)
@define(eq=False)
class FakeInjector:
    """Records `expect` calls; the test fires or fails each returned Deferred."""

    expected: dict[str, tuple[bytes, int, Deferred]] = field(factory=dict)
    cancelled: list[str] = field(factory=list)

    def expect(self, uuid: str, pcm: bytes, rate: int) -> Deferred:
        d: Deferred = Deferred(lambda _: self.cancelled.append(uuid))
        self.expected[uuid] = (pcm, rate, d)
        return d


# -- ARI objects and events (shapes as captured from Asterisk 22.10) --------------------------------------------------

def channel(channel_id: str, state: str = "Up", number: str = "", name: str | None = None, exten: str = "s",
            app_name: str = "Stasis", app_data: str = "avr") -> dict:
    """An ARI Channel."""
    return {"id": channel_id, "name": name or f"Local/{exten}@ctx-00000001;1", "state": state, "protocol_id": "",
            "caller": {"name": "", "number": number}, "connected": {"name": "", "number": ""}, "accountcode": "",
            "dialplan": {"context": "ctx", "exten": exten, "priority": 1, "app_name": app_name,
                         "app_data": app_data},
            "creationtime": TIMESTAMP, "language": "en"}


def _event(type_: str, **fields: Any) -> dict:
    return {"type": type_, "timestamp": TIMESTAMP, **fields, "asterisk_id": "02:fc:00:00:00:01",
            "application": "avr"}


def stasis_start(channel_id: str, state: str = "Up", args: list[str] | None = None, **kw: Any) -> dict:
    return _event("StasisStart", args=args or [], channel=channel(channel_id, state, **kw))


def stasis_end(channel_id: str) -> dict:
    return _event("StasisEnd", channel=channel(channel_id))


def state_change(channel_id: str, state: str) -> dict:
    return _event("ChannelStateChange", channel=channel(channel_id, state))


def hangup_request(channel_id: str, cause: int, soft: bool = False) -> dict:
    fields: dict[str, Any] = {"cause": cause}
    if soft:
        fields["soft"] = True
    return _event("ChannelHangupRequest", **fields, channel=channel(channel_id))


def destroyed(channel_id: str, cause: int = 16, text: str = "Normal Clearing") -> dict:
    return _event("ChannelDestroyed", cause=cause, cause_txt=text, channel=channel(channel_id))


def dial(peer_id: str, status: str) -> dict:
    return _event("Dial", dialstatus=status, forward="", dialstring="6100@ctx", peer=channel(peer_id, "Down"))


def dtmf(channel_id: str, digit: str, duration: int = 100) -> dict:
    return _event("ChannelDtmfReceived", digit=digit, duration_ms=duration, channel=channel(channel_id))


def playback_event(type_: str, playback_id: str, channel_id: str, state: str, media: str = "sound:beep") -> dict:
    return _event(type_, playback={"id": playback_id, "media_uri": media, "target_uri": f"channel:{channel_id}",
                                   "language": "en", "state": state})


def recording_event(type_: str, name: str, channel_id: str, state: str, duration: int | None = None) -> dict:
    recording: dict[str, Any] = {"name": name, "format": "wav", "state": state, "target_uri": f"channel:{channel_id}"}
    if duration is not None:
        recording["duration"] = duration
    return _event(type_, recording=recording)


def ari_bridge(bridge_id: str, channels: list[str], name: str = "") -> dict:
    """An ARI Bridge."""
    return {"id": bridge_id, "technology": "simple_bridge", "bridge_type": "mixing", "bridge_class": "stasis",
            "creator": "Stasis", "name": name, "channels": list(channels), "creationtime": TIMESTAMP,
            "video_mode": "talker"}


def entered_bridge(bridge_id: str, channel_id: str, channels: list[str]) -> dict:
    return _event("ChannelEnteredBridge", bridge=ari_bridge(bridge_id, channels), channel=channel(channel_id))


def left_bridge(bridge_id: str, channel_id: str, channels: list[str]) -> dict:
    return _event("ChannelLeftBridge", bridge=ari_bridge(bridge_id, channels), channel=channel(channel_id))


def bridge_destroyed(bridge_id: str) -> dict:
    return _event("BridgeDestroyed", bridge=ari_bridge(bridge_id, []))


# -- the model under test -------------------------------------------------------------------------------------------

@define(eq=False)
class Harness:
    """A `CallControl` wired to fakes, connected."""

    clock: Clock
    ari: FakeAri
    sink: FakeSink
    injector: FakeInjector
    control: CallControl

    def feed(self, *events: dict) -> None:
        for event in events:
            self.control.ari_event(event)

    def run(self, coroutine: Any) -> Any:
        """Run an operation whose ARI answers are all immediate; return its result or raise its error."""
        return fired(Deferred.fromCoroutine(coroutine), "the operation is still waiting")

    def start(self, coroutine: Any) -> tuple[Deferred, list[Any]]:
        """Start an operation that will wait; the list receives its outcome."""
        d = Deferred.fromCoroutine(coroutine)
        outcome: list[Any] = []
        d.addBoth(outcome.append)
        return d, outcome


def make(policy: str = "answer", ids: list[str] | None = None, connected: bool = True, **kwargs: Any) -> Harness:
    """A connected `CallControl` with fakes; ``ids`` are handed out by ``new_id`` in order (then UUIDs)."""
    clock, ari, sink, injector = Clock(), FakeAri(), FakeSink(), FakeInjector()
    pending = list(ids or [])
    counter = iter(range(1, 10_000))

    def new_id() -> str:
        return pending.pop(0) if pending else f"id-{next(counter)}"

    kwargs.setdefault("audiosocket_address", "127.0.0.1:5001")
    control = CallControl(ari, clock, sink, "avr", policy, injector, new_id=new_id, **kwargs)
    harness = Harness(clock, ari, sink, injector, control)
    if connected:
        control.ari_connected()
        ari.requests.clear()
    return harness


def answered_inbound(h: Harness, channel_id: str = "1795262000.1", number: str = "3000") -> str:
    """An answered inbound call in the model (events cleared)."""
    h.feed(stasis_start(channel_id, "Up", ["inbound"], number=number, exten="6102"))
    h.sink.clear()
    h.ari.requests.clear()
    return channel_id


# -- real captures ----------------------------------------------------------------------------------------------------

def ari_fixture(name: str) -> dict:
    """One capture from the ARI captures (`avr.testing.captures`)."""
    return json.loads((captures_dir("ari") / f"{name}.json").read_text())


def fixture_events(name: str, *channel_ids: str, ws: str | None = None) -> list[dict]:
    """The events of a capture, in order, that concern one of ``channel_ids`` (as channel, peer or playback target)."""
    chosen = []
    for entry in ari_fixture(name)["entries"]:
        if entry.get("kind") != "event" or (ws is not None and entry.get("ws") != ws):
            continue
        event = entry["event"]
        ids = {(event.get("channel") or {}).get("id"), (event.get("peer") or {}).get("id")}
        for key in ("playback", "recording"):
            target = (event.get(key) or {}).get("target_uri", "")
            ids.add(target.partition(":")[2])
        if not channel_ids or ids & set(channel_ids):
            chosen.append(event)
    return chosen


def fixture_response(name: str, method: str, url_start: str) -> dict:
    """The first REST entry of a capture with ``method`` whose URL starts with ``url_start``."""
    for entry in ari_fixture(name)["entries"]:
        if entry.get("kind") == "rest" and entry["method"] == method and entry["url"].startswith(url_start):
            return entry
    raise AssertionError(f"no {method} {url_start} in {name}")
