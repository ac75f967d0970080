"""
The OpenClaw voice-call plugin's conversation loop against avr, over loopback: a client that does what the plugin's
``src/client.ts`` does, call for call (the ``Authorization: Bearer`` key, a JSON body parsed from every answer, a
keyless ``/events`` connection -- through ``KEYLESS_EVENTS_PORT`` -- ``result.callId`` from the originate), with the
fake Asterisk, the fake Qwen3-TTS server and the fake Qwen3-ASR server.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.web.server import Site

from avr.control.records import call_id_for
from avr.frames import audio_kind_for_rate
from avr.testing.asr import BUFFER_SIZE, FakeAsrServerFactory
from avr.testing.tts import FakeTtsServer
from tests.control_harness import WAIT, connect_events, of_call
from tests.helpers import until
from tests.test_integration_control import API_KEY, ServiceRig, rig  # noqa: F401 - the fixture

#: A call id as asterisk-api makes them (``crypto.randomUUID()``, a v4 UUID), the strictest a client may check.
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

pytestmark = pytest.mark.integration

SPEECH = b"\x10\x00" * 320  # 20 ms of slin16 that is not silence


class PluginError(Exception):
    """What the plugin's ``request`` throws for a non-2xx answer."""


class PluginClient:
    """The plugin's ``AsteriskApiClient``, method for method (``src/client.ts``)."""

    def __init__(self, http: HTTPClient, base_url: str, api_key: str | None) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        response = await self.http.request(method, self.base_url + path, headers=self._headers(), data=data)
        text = await response.content()
        if not 200 <= response.code < 300:
            raise PluginError(f"asterisk-api {method} {path} failed: {response.code} — {text.decode()}")
        return json.loads(text)  # ``response.json()``: an empty body throws

    async def health(self) -> Any:
        return await self._request("GET", "/health")

    async def originate(self, endpoint: str, caller_id: str, timeout: int | None = None) -> Any:
        return await self._request("POST", "/calls", {"endpoint": endpoint, "callerId": caller_id,
                                                      **({"timeout": timeout} if timeout is not None else {})})

    async def get_call(self, call_id: str) -> Any:
        return await self._request("GET", f"/calls/{call_id}")

    async def list_calls(self) -> Any:
        return await self._request("GET", "/calls")

    async def play_media(self, call_id: str, media: str) -> Any:
        return await self._request("POST", f"/calls/{call_id}/play", {"media": media})

    async def start_recording(self, call_id: str, **opts: Any) -> Any:
        return await self._request("POST", f"/calls/{call_id}/record", opts)

    async def start_audio_capture(self, call_id: str) -> Any:
        return await self._request("POST", f"/calls/{call_id}/audio/start")

    async def stop_audio_capture(self, call_id: str) -> None:
        await self._request("POST", f"/calls/{call_id}/audio/stop")

    async def hangup(self, call_id: str) -> Any:
        return await self._request("DELETE", f"/calls/{call_id}")

    async def speak(self, call_id: str, text: str, **options: Any) -> Any:
        return await self._request("POST", f"/calls/{call_id}/speak", {"text": text, **options})

    async def send_dtmf(self, call_id: str, dtmf: str) -> Any:
        return await self._request("POST", f"/calls/{call_id}/dtmf", {"dtmf": dtmf})


@pytest_twisted.ensureDeferred
async def test_the_plugins_conversation_loop(rig: ServiceRig) -> None:  # noqa: F811 - the fixture
    """
    health, originate, get, list, play, record with maxDuration, speak, audio start/stop with transcriptions, DTMF,
    hang-up, and /events without a key on the keyless port: every answer is 2xx JSON the plugin can read.
    """
    reactor = rig.reactor
    tts = FakeTtsServer(seconds_per_char=0.005)
    tts_port = reactor.listenTCP(0, Site(tts), interface="127.0.0.1")
    asr = FakeAsrServerFactory(reactor)
    asr_port = reactor.listenTCP(0, asr, interface="127.0.0.1")
    try:
        rig.fake.add_endpoint("1001", answer="manual")
        rig.start(keyless_events_port=0, tts_url=f"http://127.0.0.1:{tts_port.getHost().port}",
                  asr_url=f"ws://127.0.0.1:{asr_port.getHost().port}/ws/transcribe")
        await rig.until_ari(lambda ari: ari == "connected")
        await rig.until_synced(1)
        plugin = PluginClient(rig.http, f"http://127.0.0.1:{rig.port_of('keyless-events')}", API_KEY)

        health = await plugin.health()
        assert health["ari"] is True  # `if (health.ari)`
        events = await connect_events(reactor, rig.port_of("keyless-events"), None)  # the plugin sends no key
        rig.clients.append(events)
        await events.wait(lambda m: m["type"] == "snapshot")
        # Another client that asks for the audio frames (the key, then audioFrames=true, in the query).
        frames = await connect_events(reactor, rig.port_of("http"), f"{API_KEY}&audioFrames=true")
        rig.clients.append(frames)

        result = await plugin.originate("PJSIP/1001", "5551234", 30)
        call_id = result["callId"]  # the plugin reads callId
        channel_id = result["call"]["channelId"]
        assert call_id == result["call"]["id"] and UUID4.match(call_id) and call_id != channel_id
        created = await events.wait(of_call(call_id, "call.created"))
        assert created["channelId"] == channel_id  # the plugin reads event.channelId
        rig.fake.answer_remote(channel_id)
        ready = await events.wait(of_call(call_id, "call.ready"))
        assert ready["channelId"] == channel_id
        # A reconnecting plugin rebuilds its active calls from the snapshot's callId fields.
        again = await connect_events(reactor, rig.port_of("keyless-events"), None)
        rig.clients.append(again)
        snapshot = await again.wait(lambda m: m["type"] == "snapshot")
        assert [c["callId"] for c in snapshot["calls"]] == [call_id]
        assert (await plugin.get_call(call_id))["call"]["state"] == "answered"
        assert [c["id"] for c in (await plugin.list_calls())["calls"]] == [call_id]

        await plugin.play_media(call_id, "sound:beep")
        await events.wait(of_call(call_id, "call.playback_finished"))
        recording = await plugin.start_recording(call_id, format="wav", maxDuration=60, beep=False)
        live = rig.fake.live_recordings[recording["recordingName"]]
        assert live.max_duration == 60

        spoken = await plugin.speak(call_id, "Hello from avr")
        assert spoken["status"] == "ok" and spoken["voice"] == "vivian" and spoken["durationSeconds"] > 0
        assert tts.requests[0].body["input"] == "Hello from avr"
        await events.wait(of_call(call_id, "call.speak_finished"))

        started = await plugin.start_audio_capture(call_id)
        leg = started["audioCapture"]["externalMediaChannelId"]
        connection = asr.connections[0]  # opened before the start was answered
        kind = audio_kind_for_rate(16000)
        for _ in range(BUFFER_SIZE // len(SPEECH) + 1):
            rig.fake.audiosocket(leg).send_audio(kind, SPEECH)
        frame = await frames.wait(of_call(call_id, "call.audio_frame"))
        assert frame["channelId"] == channel_id
        assert frame["data"]["sampleCount"] == len(SPEECH) // 2 and frame["data"]["sampleRate"] == 16000
        assert base64.b64decode(frame["data"]["data"]) == SPEECH
        partial = await events.wait(of_call(call_id, "call.transcription"))
        assert partial["data"]["is_partial"] is True and partial["data"]["text"]
        await plugin.stop_audio_capture(call_id)  # parsed as JSON, as the plugin does
        final = await events.wait(lambda m: of_call(call_id, "call.transcription")(m) and m["data"]["is_final"])
        assert final["data"]["is_partial"] is False
        await events.wait(of_call(call_id, "call.audio_capture_stopped"))
        assert connection.actions == [{"action": "config", "language": "English"}, {"action": "flush"}]

        assert (await plugin.send_dtmf(call_id, "12#"))["status"] == "ok"
        hung_up = await plugin.hangup(call_id)
        assert hung_up["status"] == "hungup"
        await events.wait(of_call(call_id, "call.ended"))
        assert not [m for m in events.messages if m["type"] == "call.audio_frame"]  # it did not ask (D22)
        with pytest.raises(PluginError, match="401"):
            await PluginClient(rig.http, rig.base, "wrong-key").list_calls()
    finally:
        await tts_port.stopListening()
        await asr_port.stopListening()
        for connection in list(asr.connections):
            connection.drop()


@pytest_twisted.ensureDeferred
async def test_hang_up_during_capture_and_speech_leaves_nothing(rig: ServiceRig) -> None:  # noqa: F811
    """
    The far end hangs up while its audio is captured and a speech is being synthesised: the speak answers 409, the
    ASR gets its flush (the final result once), and no snoop, media channel or bridge is left in Asterisk.
    """
    reactor = rig.reactor
    tts = FakeTtsServer()
    tts.hold = True
    tts_port = reactor.listenTCP(0, Site(tts), interface="127.0.0.1")
    asr = FakeAsrServerFactory(reactor)
    asr_port = reactor.listenTCP(0, asr, interface="127.0.0.1")
    try:
        rig.fake.add_endpoint("1001", answer="manual")
        rig.start(tts_url=f"http://127.0.0.1:{tts_port.getHost().port}",
                  asr_url=f"ws://127.0.0.1:{asr_port.getHost().port}/ws/transcribe")
        await rig.until_ari(lambda ari: ari == "connected")
        await rig.until_synced(1)
        events = await rig.events()
        plugin = PluginClient(rig.http, rig.base, API_KEY)
        call_id = await rig.answered_call(events)
        await plugin.start_audio_capture(call_id)
        speaking = Deferred.fromCoroutine(plugin.speak(call_id, "never heard"))
        await tts.when_requests(1).addTimeout(WAIT, reactor)
        rig.fake.remote_hangup(rig.channel_ids[call_id])
        with pytest.raises(PluginError, match="409"):
            await speaking.addTimeout(WAIT, reactor)
        await events.wait(of_call(call_id, "call.audio_capture_stopped"))
        finals = [m for m in events.messages if of_call(call_id, "call.transcription")(m) and m["data"]["is_final"]]
        assert len(finals) == 1
        assert asr.gone and asr.gone[0].actions[-1] == {"action": "flush"}
        await rig.fake.settle_leftovers(5.0)
    finally:
        await tts_port.stopListening()
        await asr_port.stopListening()


@pytest.mark.logs_errors("Allowlist .* not JSON")
@pytest_twisted.ensureDeferred
async def test_allowlist_through_the_fake_asterisk(rig: ServiceRig, tmp_path: Any) -> None:  # noqa: F811
    """
    allowlist.json over loopback: a caller not listed is hung up with no trace on /events, a listed one becomes a
    call; an unlisted number is 403 with asterisk-api's body; an edited file is read by POST /allowlist/reload; a
    broken one is 422 and the lists stay.
    """
    path = tmp_path / "allowlist.json"
    path.write_text(json.dumps({"inbound": ["6596542555"], "outbound": ["6596542555"]}))
    rig.start(allowlist_file=str(path), inbound_ring_delay=0)
    await rig.until_ari(lambda ari: ari == "connected")
    await rig.until_synced(1)
    events = await rig.events()
    blocked = rig.fake.inbound_call("6591110000", "6100")
    allowed = rig.fake.inbound_call("+65 9654 2555", "6100")
    await events.wait(of_call(call_id_for(allowed), "call.created"))
    await until(rig.reactor, lambda: blocked not in rig.fake.channels)  # hung up by avr
    assert not [m for m in events.messages if blocked in (m.get("callId"), m.get("channelId"))]
    status, body = await rig.request("POST", "/calls", {"endpoint": "PJSIP/6591110000@trunk"})
    assert status == 403 and body == {"error": "Outbound call blocked by allowlist",
                                      "endpoint": "PJSIP/6591110000@trunk", "extractedNumber": "6591110000",
                                      "hint": "Add the destination number to allowlist.json outbound array"}
    path.write_text(json.dumps({"inbound": [], "outbound": ["6591110000"]}))
    status, body = await rig.request("POST", "/allowlist/reload")
    assert (status, body) == (200, {"status": "reloaded", "inbound": [], "outbound": ["6591110000"]})
    path.write_text("{broken")
    status, body = await rig.request("POST", "/allowlist/reload")
    assert status == 422 and body["outbound"] == ["6591110000"]
    status, body = await rig.request("GET", "/allowlist")
    assert status == 200 and body["error"].startswith("not JSON")
    rig.fake.remote_hangup(allowed)
    await events.wait(of_call(call_id_for(allowed), "call.ended"))
