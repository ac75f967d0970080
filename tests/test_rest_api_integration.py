"""
The REST API and /events over real loopback HTTP: ControlRoutes on a Klein Site, the real CallControl, AriClient and
AriEventStream, against the fake Asterisk (`avr.testing.ari.FakeAsterisk`) listening on 127.0.0.1.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator, Callable

import pytest
import pytest_twisted
from klein import Klein
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site
from zope.interface import implementer
from zope.interface.verify import verifyObject

from avr.ari.client import AriClient
from avr.ari.events import AriEventStream, endpoint_connector
from avr.control.hub import EventsHub, FanOut
from avr.control.model import CallControl
from avr.control.routes import ControlRoutes
from avr.http.json import install_error_handlers
from avr.interfaces import IAriEventListener, ICallControl, IEventSink
from avr.testing.ari import FakeAsterisk
from tests.control_harness import WAIT, EventsClient, close_events, connect_events, matcher, of_call, offer
from tests.helpers import assert_no_new_timers

pytestmark = pytest.mark.integration

API_KEY = "integration-key"


@implementer(IAriEventListener)
class Tap:
    """Passes ARI traffic to the model and lets the test wait for it (no polling)."""

    def __init__(self, control: CallControl, reactor: Any) -> None:
        self.control = control
        self.reactor = reactor
        self.connected: Deferred = Deferred()
        self.events: list[dict] = []
        self._waiters: list[tuple[Callable[[dict], bool], Deferred]] = []

    def ari_connected(self) -> None:
        self.control.ari_connected()
        if not self.connected.called:
            self.connected.callback(None)

    def ari_event(self, event: dict) -> None:
        self.control.ari_event(event)
        self.events.append(event)
        offer(event, self._waiters)

    def ari_disconnected(self, reason: str) -> None:
        self.control.ari_disconnected(reason)

    def wait(self, predicate: Callable[[dict], bool]) -> Deferred:
        return matcher(predicate, WAIT, self.reactor, self.events, self._waiters)


class Rig:
    """Fake Asterisk, the model and the API, all on loopback."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.fake = FakeAsterisk(reactor, app="avr")
        self.fake.listen(reactor)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=self.pool))
        ari_url = f"http://127.0.0.1:{self.fake.port}"
        self.ari = AriClient(self.http, reactor, ari_url, "avr", "avrpass")
        self.hub = EventsHub(reactor, ping_interval=0)
        self.published: list[dict] = []
        self.control = CallControl(self.ari, reactor, FanOut(self.hub, _Collect(self.published)), "avr")
        self.tap = Tap(self.control, reactor)
        self.stream = AriEventStream(reactor, endpoint_connector(reactor), ari_url, "avr", "avr", "avrpass",
                                     self.tap, ping_interval=None)
        app = Klein()
        install_error_handlers(app)
        ControlRoutes(self.control, self.hub, self.control.registry, max_body=65536, api_key=API_KEY,
                      clock=reactor).install(app)
        self.port = reactor.listenTCP(0, Site(app.resource(), reactor=reactor), interface="127.0.0.1")
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.clients: list[EventsClient] = []

    async def start(self) -> None:
        self.stream.start()
        await self.tap.connected.addTimeout(WAIT, self.reactor)

    async def call_api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        kwargs: dict[str, Any] = {"headers": {"X-API-Key": API_KEY}}
        if body is not None:
            kwargs["json"] = body
        response = await self.http.request(method, self.base + path, **kwargs)
        content = await response.content()
        return response.code, (json.loads(content) if content else None)

    async def events_client(self, key: str | None = API_KEY) -> EventsClient:
        client = await connect_events(self.reactor, self.port.getHost().port, key)
        self.clients.append(client)
        return client

    async def stop(self) -> None:
        await self.hub.stop()
        for client in self.clients:
            await close_events(client)
        await self.stream.stop()
        await self.control.stop()
        await self.port.stopListening()
        await self.fake.close()
        await self.pool.closeCachedConnections()


@implementer(IEventSink)
class _Collect:
    def __init__(self, into: list[dict]) -> None:
        self.into = into

    def publish(self, event: dict) -> None:
        self.into.append(event)


@pytest_twisted.async_yield_fixture
async def rig() -> AsyncIterator[Rig]:
    from twisted.internet import reactor

    before = set(reactor.getDelayedCalls())
    r = Rig(reactor)
    try:
        await r.start()
        yield r
        await r.fake.settle_leftovers(WAIT)
    finally:
        await r.stop()
    # Connections close a reactor turn after stopListening/abort: give them a few turns, then nothing may be left.
    await assert_no_new_timers(reactor, before, turns=20, step=0)


@pytest_twisted.ensureDeferred
async def test_originate_answer_play_dtmf_hangup_with_events(rig: Rig) -> None:
    """
    POST /calls → the far end answers → play (and stop it) → DTMF both ways → DELETE /calls/:id, checked through the
    REST answers, the fake Asterisk's state, and the /events stream (snapshot first, events in order, one end).
    """
    assert verifyObject(ICallControl, rig.control)
    rig.fake.add_endpoint("1001", answer="manual")
    client = await rig.events_client()
    snapshot = await client.wait(lambda m: m["type"] == "snapshot")
    assert client.messages[0] is snapshot
    assert (snapshot["calls"], snapshot["bridges"]) == ([], [])

    status, body = await rig.call_api("POST", "/calls", {"endpoint": "PJSIP/1001", "callerId": "Bob <5551234>",
                                                         "timeout": 30})
    assert status == 201, body
    call_id, channel_id = body["call"]["id"], body["call"]["channelId"]
    assert channel_id in rig.fake.channels and call_id != channel_id
    await client.wait(of_call(call_id, "call.created"))
    status, body = await rig.call_api("GET", "/calls")
    assert [c["id"] for c in body["calls"]] == [call_id]

    rig.fake.answer_remote(channel_id)
    await rig.tap.wait(lambda e: e["type"] == "StasisStart" and e["channel"]["id"] == channel_id)
    await client.wait(of_call(call_id, "call.state_changed", state="answered"))

    status, body = await rig.call_api("POST", f"/calls/{call_id}/play", {"media": ["sound:hello-world",
                                                                                   "sound:beep"]})
    assert status == 201, body
    playback_id = body["playback"]["playbackId"]
    await client.wait(of_call(call_id, "playback.started", playbackId=playback_id))
    status, body = await rig.call_api("DELETE", f"/calls/{call_id}/play/{playback_id}")
    assert status == 200, body
    await client.wait(of_call(call_id, "playback.finished", playbackId=playback_id, status="stopped"))

    status, body = await rig.call_api("POST", f"/calls/{call_id}/dtmf", {"dtmf": "12#", "duration": 40,
                                                                         "between": 0})
    assert (status, body) == (200, {"status": "ok", "dtmf": "12#"})
    rig.fake.remote_dtmf(channel_id, "5", duration_ms=300)
    await client.wait(of_call(call_id, "call.dtmf", digit="5"))
    assert rig.fake.sent_dtmf[channel_id] == ["1", "2", "#"]

    status, body = await rig.call_api("DELETE", f"/calls/{call_id}", {"reason": "normal"})
    assert status == 200 and body["status"] == "hungup"
    ended = await client.wait(of_call(call_id, "call.ended"))
    assert ended["data"]["cause"] == 16
    assert channel_id not in rig.fake.channels
    status, body = await rig.call_api("GET", "/calls")
    assert body == {"calls": []}

    mine = [m for m in client.messages[1:] if m.get("callId") == call_id]
    assert mine[0]["type"] == "call.created" and mine[-1]["type"] == "call.ended"
    assert [m["type"] for m in mine].count("call.ended") == 1
    assert client.messages[1:] == rig.published  # the stream is exactly what the model published, in order


@pytest_twisted.ensureDeferred
async def test_errors_from_the_real_model_and_asterisk(rig: Rig) -> None:
    """Real failures map to JSON: unknown call 404, Asterisk's refusal 502, a non-answered call 409."""
    status, body = await rig.call_api("GET", "/calls/1700000000.99")
    assert status == 404 and "not found" in body["error"]
    status, body = await rig.call_api("POST", "/calls", {"endpoint": "PJSIP/nobody"})
    assert status == 502 and body["error"].startswith("Asterisk: ") and body["ariStatus"] == 500
    rig.fake.add_endpoint("1002", answer="manual")
    status, body = await rig.call_api("POST", "/calls", {"endpoint": "PJSIP/1002"})
    call_id = body["call"]["id"]
    status, body = await rig.call_api("POST", f"/calls/{call_id}/play", {"media": "sound:beep"})
    assert status == 409 and "answered" in body["error"]
    status, body = await rig.call_api("DELETE", f"/calls/{call_id}")
    assert status == 200


@pytest_twisted.ensureDeferred
async def test_recording_file_is_streamed_from_asterisk(rig: Rig) -> None:
    """GET /recordings/:name/file streams the stored file with Asterisk's content type."""
    rig.fake.add_stored_recording("greeting", "wav", seconds=2.0)
    expected = rig.fake.stored_recordings["greeting"].data
    response = await rig.http.get(rig.base + "/recordings/greeting/file", headers={"X-API-Key": API_KEY})
    body = await response.content()
    assert response.code == 200
    assert body == expected and len(body) > 30000
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"audio/")
    status, listing = await rig.call_api("GET", "/recordings")
    assert {"name": "greeting", "format": "wav"} in listing["recordings"]
    status, body = await rig.call_api("GET", "/recordings/missing/file")
    assert status == 404


@pytest_twisted.ensureDeferred
async def test_events_needs_the_key_over_loopback(rig: Rig) -> None:
    """/events refuses a client without the API key (401 before the upgrade)."""
    with pytest.raises(RuntimeError, match="refused"):
        await rig.events_client(key=None)
    response = await rig.http.get(rig.base + "/events")
    assert response.code == 401
    assert "API key" in (await response.json())["error"]
