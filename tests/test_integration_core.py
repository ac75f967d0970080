"""
Whole AVR Core calls over loopback: a simulated Asterisk, avr as built by `avr.service.build`, a fake STS server and
a webhook sink, all on real sockets bound to 127.0.0.1.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from avr.audio import Resampler, ulaw_to_slin
from avr.config import Config
from avr.frames import Kind
from avr.service import Avr, build, sts_connectors
from avr.sts.connector import StsConnector
from avr.testing.asterisk import Continuous, Replay, SimulatedAsterisk, connect_simulated_asterisk, load_capture
from avr.testing.sts import FakeStsServerFactory, FakeStsServerProtocol
from avr.testing.webhooks import WebhookReply, WebhookSink
from tests.control_harness import close_events, connect_events, of_call
from tests.helpers import tone, until

pytestmark = pytest.mark.integration

U1 = "935652e3-7c59-4edc-b17f-9646a9c2a265"


class Rig:
    """avr plus its peers on loopback."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.sts = FakeStsServerFactory(reactor)
        self.sink = WebhookSink(reactor, secret="hush")
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=self.pool))
        self.ports: list[Any] = []
        self.avr: Avr | None = None
        self.calls: list[SimulatedAsterisk] = []

    def listen(self, factory: Any) -> int:
        port = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.ports.append(port)
        return port.getHost().port

    def start(self, **settings: Any) -> None:
        sts_port = self.listen(self.sts)
        hook_port = self.listen(Site(self.sink, reactor=self.reactor))
        options = {
            "port": 0,
            "http_port": 0,
            "sts_url": f"ws://127.0.0.1:{sts_port}",
            "webhook_url": f"http://127.0.0.1:{hook_port}/hooks",
            "webhook_secret": "hush",
            "webhook_timeout": 1000,
            "sts_connect_timeout": 2000,
            **settings,
        }
        config = Config(**options)
        self.avr = build(
            self.reactor, config, http_client=self.http,
            sts_connector=StsConnector(sts_connectors(self.reactor, config)),
        )
        self.avr.service.startService()

    def port_of(self, name: str) -> int:
        assert self.avr is not None
        return self.avr.service.getServiceNamed(name).port.getHost().port

    async def post_call(self, uuid: str, payload: dict) -> tuple[int, Any]:
        response = await self.http.post(
            f"http://127.0.0.1:{self.port_of('http')}/call",
            json={"uuid": uuid, "payload": payload},
        )
        return response.code, await response.json()

    async def dial(self, plan: Any = None, **kwargs: Any) -> SimulatedAsterisk:
        asterisk, _ = await connect_simulated_asterisk(
            self.reactor, "127.0.0.1", self.port_of("audiosocket"), plan, **kwargs
        )
        self.calls.append(asterisk)
        return asterisk

    async def session(self, uuid: str) -> FakeStsServerProtocol:
        d = self.sts.session_opened(uuid)
        d.addTimeout(5, self.reactor)
        return await d

    async def stop(self) -> None:
        for call in self.calls:
            if call.connected:
                call.hang_up()
        if self.avr is not None:
            await self.avr.service.stopService()
        for connection in self.sts.connections:
            if connection.is_connected:
                connection.drop()
        for port in self.ports:
            await port.stopListening()
        self.sink.close()
        await self.pool.closeCachedConnections()


@pytest_twisted.async_yield_fixture
async def rig() -> AsyncIterator[Rig]:
    from twisted.internet import reactor

    r = Rig(reactor)
    try:
        yield r
    finally:
        await r.stop()


def audio_frames(asterisk: SimulatedAsterisk) -> list[tuple[float, Any]]:
    return [(t, f) for t, f in asterisk.received if f.kind != Kind.HANGUP]


@pytest_twisted.ensureDeferred
async def test_dialplan_flow_audio_dtmf_interruption_hangup(rig: Rig) -> None:
    """
    POST /call (as the dialplan's CURL), then the AudioSocket call: the STS gets the per-call URL, init first, the
    caller's audio and digits; agent audio comes back paced; an interruption stops it; the caller's hang-up closes
    the STS session; webhooks arrive in order with the secret.
    """
    rig.start()
    payload = {"from": "2000", "to": "5001", "uniqueid": "1770758888.32", "channel": "PJSIP/2000-00000013"}
    status, body = await rig.post_call(U1, payload)
    assert status == 200 and body["override"] is False
    assert body["sts_url"].endswith("/?from=2000&to=5001&uniqueid=1770758888.32&channel=PJSIP%2F2000-00000013")

    capture = load_capture("a_app_slin8_hello_dtmf_caller_hangup")
    caller_audio = capture.audio()[: 320 * 50]
    asterisk = await rig.dial(Continuous.from_pcm(caller_audio, duration=None), uuid=U1)
    sts = await rig.session(U1)
    assert sts.params == {"from": ["2000"], "to": ["5001"], "uniqueid": ["1770758888.32"],
                          "channel": ["PJSIP/2000-00000013"]}
    assert type(sts.messages[0]).__name__ == "Init" and sts.messages[0].uuid == U1
    await until(rig.reactor, lambda: len(sts.received_audio) >= len(caller_audio))
    assert sts.received_audio[: len(caller_audio)] == caller_audio

    asterisk.send_dtmf("5")
    await until(rig.reactor, lambda: sts.dtmf == ["5"])

    sts.send_audio(tone(8000, 1000, 440), chunk_size=1000)
    await until(rig.reactor, lambda: len(audio_frames(asterisk)) >= 50)
    frames = audio_frames(asterisk)[:50]
    assert all(f.kind == Kind.SLIN8 and len(f.payload) == 320 for _, f in frames)
    assert b"".join(f.payload for _, f in frames) == tone(8000, 1000, 440)
    span = frames[-1][0] - frames[0][0]
    assert 0.9 < span < 1.1  # paced over a second, not a burst

    sts.send_audio(tone(8000, 5000, 300))
    await until(rig.reactor, lambda: len(audio_frames(asterisk)) >= 60)
    sts.send_interruption()
    await deferLater(rig.reactor, 0.1, lambda: None)
    count = len(audio_frames(asterisk))
    await deferLater(rig.reactor, 0.3, lambda: None)
    assert len(audio_frames(asterisk)) == count < 60 + 20
    sts.send_transcript("user", "hi")

    asterisk.hang_up()
    await sts.when_closed().addTimeout(5, rig.reactor)
    hooks = await rig.sink.when_received(6).addTimeout(5, rig.reactor)
    assert [h.envelope["type"] for h in hooks] == [
        "call_initiated", "call_started", "dtmf_digit", "interruption", "transcription", "call_ended"]
    assert all(h.violations == () for h in hooks)
    assert hooks[0].envelope["payload"] == payload
    assert hooks[2].envelope["payload"] == {"digit": "5"}
    assert hooks[4].envelope["payload"] == {"role": "user", "text": "hi"}
    assert asterisk.violations == []
    await deferLater(rig.reactor, 0.1, lambda: None)
    assert len(rig.sink.of_type("call_ended")) == 1


@pytest_twisted.ensureDeferred
async def test_webhook_override_routes_the_call(rig: Rig) -> None:
    """A call_initiated reply with sts_url routes the call there, with the payload parameters appended."""
    rig.start()
    other = FakeStsServerFactory(rig.reactor)
    other_port = rig.listen(other)
    rig.sink.script("call_initiated", WebhookReply.json({"sts_url": f"ws://127.0.0.1:{other_port}/agent?uuid={U1}"}))
    status, body = await rig.post_call(U1, {"from": "2000"})
    assert body == {"sts_url": f"ws://127.0.0.1:{other_port}/agent?uuid={U1}&from=2000", "override": True}
    await rig.dial(uuid=U1)
    session = await other.session_opened(U1).addTimeout(5, rig.reactor)
    assert session.path == "/agent" and session.params == {"uuid": [U1], "from": ["2000"]}
    session.drop()


@pytest.mark.logs_errors(
    r"\[CALL_INITIATED\].* not delivered after 2 attempt\(s\): HTTP 500",
    r"\[CALL_STARTED\].* not delivered after",
    r"\[CALL_ENDED\].* not delivered after",
)
@pytest_twisted.ensureDeferred
async def test_webhook_down_falls_back_and_the_call_works(rig: Rig) -> None:
    """A failing webhook receiver changes nothing for the call: /call falls back, audio flows."""
    rig.start(webhook_retry=1)
    rig.sink.script(None, WebhookReply(status=500))
    status, body = await rig.post_call(U1, {"to": "5001"})
    assert status == 200 and body["override"] is False
    asterisk = await rig.dial(Continuous.from_pcm(tone(8000, 200, 500)), uuid=U1)
    sts = await rig.session(U1)
    await until(rig.reactor, lambda: len(sts.received_audio) >= 1600)
    asterisk.hang_up()


@pytest.mark.logs_errors(r"STS connection failed for call .*: connection refused")
@pytest_twisted.ensureDeferred
async def test_unreachable_sts_hangs_up_cleanly(rig: Rig) -> None:
    """With the STS refusing connections, the call gets a 0x00 frame and FIN, and call_ended is sent once."""
    rig.start()
    closed_port = rig.listen(FakeStsServerFactory(rig.reactor))
    await rig.ports.pop().stopListening()
    rig.avr.calls.sts_url = f"ws://127.0.0.1:{closed_port}"  # type: ignore[union-attr]
    asterisk = await rig.dial(Continuous.from_pcm(tone(8000, 200, 500)))
    await asterisk.done.addTimeout(5, rig.reactor)
    assert asterisk.received and asterisk.received[-1][1].kind == Kind.HANGUP
    assert asterisk.violations == []
    hooks = await rig.sink.when_received(2).addTimeout(5, rig.reactor)
    assert [h.envelope["type"] for h in hooks] == ["call_started", "call_ended"]


@pytest_twisted.ensureDeferred
async def test_sts_closing_hangs_up_the_caller(rig: Rig) -> None:
    """The STS ending the session mid-call ends the Asterisk leg with 0x00; other calls go on."""
    rig.start()
    a = await rig.dial(Continuous.from_pcm(tone(8000, 200, 500)))
    b = await rig.dial(Continuous.from_pcm(tone(8000, 200, 700)))
    sts_a = await rig.session(a.uuid)
    sts_b = await rig.session(b.uuid)
    sts_a.close(1011, "provider failed")
    await a.done.addTimeout(5, rig.reactor)
    assert a.received[-1][1].kind == Kind.HANGUP
    sts_b.send_audio(tone(8000, 200, 900))
    await until(rig.reactor, lambda: len(audio_frames(b)) >= 10)
    assert b.connected


@pytest_twisted.ensureDeferred
async def test_wideband_leg_round_trip(rig: Rig) -> None:
    """A Dial(AudioSocket/…/c(slin16)) leg (kind 0x12): the STS gets 8 kHz, the caller gets 640-byte 0x12 frames."""
    rig.start()
    capture = load_capture("b_dial_chan_c_slin16")
    asterisk = await rig.dial(Replay(capture, hang_up_at_end=False))
    sts = await rig.session(capture.uuid)
    await until(rig.reactor, lambda: len(sts.received_audio) >= 68 * 320)  # less the resampler look-ahead
    sts.send_audio(tone(8000, 400, 440))
    await until(rig.reactor, lambda: len(audio_frames(asterisk)) >= 20)
    assert {(f.kind, len(f.payload)) for _, f in audio_frames(asterisk)} == {(Kind.SLIN16, 640)}
    await until(rig.reactor, lambda: sts.dtmf == ["1", "2", "3", "#"])


@pytest_twisted.ensureDeferred
async def test_sts_sample_rate_is_the_rate_of_the_session_both_ways(rig: Rig) -> None:
    """STS_SAMPLE_RATE=16000 on an 8 kHz leg: the STS gets 16 kHz audio, and its 16 kHz audio reaches the caller as
    320-byte 0x10 frames at the right speed."""
    rig.start(sts_sample_rate=16000)
    caller_audio = tone(8000, 1000, 300)
    asterisk = await rig.dial(Continuous.from_pcm(caller_audio, duration=None), uuid=U1)
    sts = await rig.session(U1)
    await until(rig.reactor, lambda: len(sts.received_audio) >= 2 * len(caller_audio))
    up = Resampler(8000, 16000)
    expected = b"".join(up.convert(caller_audio[i:i + 320]) for i in range(0, len(caller_audio), 320))
    assert len(expected) >= 2 * len(caller_audio) - 2 * 480 and sts.received_audio[: len(expected)] == expected
    sts.send_audio(tone(16000, 400, 440))
    await until(rig.reactor, lambda: len(audio_frames(asterisk)) >= 20)
    frames = audio_frames(asterisk)[:20]
    assert {(f.kind, len(f.payload)) for _, f in frames} == {(Kind.SLIN8, 320)}
    down = Resampler(16000, 8000)
    played = down.convert(tone(16000, 400, 440)) + down.flush()
    assert b"".join(f.payload for _, f in frames) == played


@pytest_twisted.ensureDeferred
async def test_g711_leg_is_decoded_and_answered_in_slin(rig: Rig) -> None:
    """Raw µ-law under kind 0x10 (Dial without c()) reaches the STS as PCM; the caller gets PCM16 0x10 frames."""
    rig.start()
    capture = load_capture("c_dial_chan_native_ulaw_caller")
    asterisk = await rig.dial(Replay(capture, hang_up_at_end=False))
    sts = await rig.session(capture.uuid)
    ulaw = capture.audio()
    await until(rig.reactor, lambda: len(sts.received_audio) >= 2 * (len(ulaw) - 12))
    decoded = ulaw_to_slin(ulaw[: 160 * 60])
    assert sts.received_audio[: len(decoded)] == decoded
    sts.send_audio(tone(8000, 200, 440))
    await until(rig.reactor, lambda: len(audio_frames(asterisk)) >= 10)
    assert {(f.kind, len(f.payload)) for _, f in audio_frames(asterisk)} == {(Kind.SLIN8, 320)}


@pytest_twisted.ensureDeferred
async def test_twenty_concurrent_calls_are_isolated(rig: Rig) -> None:
    """20 simultaneous echo calls: each caller hears exactly its own audio back, and all end cleanly."""
    rig.sts.echo = True
    rig.start()
    tones = {i: tone(8000, 400, 300 + 37 * i) for i in range(20)}
    callers = [await rig.dial(Continuous.from_pcm(tones[i], duration=0.4, hang_up_at_end=False)) for i in range(20)]
    await until(rig.reactor, lambda: all(len(audio_frames(c)) >= 20 for c in callers), timeout=10)
    for i, caller in enumerate(callers):
        heard = b"".join(f.payload for _, f in audio_frames(caller)[:20])
        assert heard == tones[i]
        assert caller.violations == []
    for caller in callers:
        caller.hang_up()
    await until(rig.reactor, lambda: len(rig.sink.of_type("call_ended")) == 20, timeout=10)
    assert len(rig.avr.calls) == 0  # type: ignore[union-attr]
    assert json.loads(rig.sink.received[0].body)["type"] == "call_started"


def _webhook(uuid: str, type_: str, timestamp: str, payload: bytes) -> bytes:
    """avr-core's webhook body, byte for byte."""
    return b'{"uuid":"%s","type":"%s","timestamp":"%s","payload":%s}' % (
        uuid.encode(), type_.encode(), timestamp.encode(), payload)


@pytest_twisted.ensureDeferred
async def test_an_audiosocket_call_is_in_get_calls_and_on_events_without_ari(rig: Rig) -> None:
    """
    A dialplan call (POST /call, then AudioSocket) appears in GET /calls and GET /calls/:id and on /events
    (created, dtmf, transcript, interruption, ended) with ARI not configured, while the AVR webhooks stay
    byte for byte what avr-core sends. The events webhook gets the same events.
    """
    events_sink = WebhookSink(rig.reactor, strict=False)
    rig.start(events_webhook_url=f"http://127.0.0.1:{rig.listen(Site(events_sink, reactor=rig.reactor))}/events")
    http = f"http://127.0.0.1:{rig.port_of('http')}"
    events = await connect_events(rig.reactor, rig.port_of("http"), None)
    try:
        snapshot = await events.wait(lambda m: m["type"] == "snapshot")
        assert snapshot["calls"] == [] and snapshot["bridges"] == []
        payload = {"from": "2000", "uniqueid": "1770758888.32", "channel": "PJSIP/2000-00000013"}
        status, body = await rig.post_call(U1, payload)
        assert status == 200
        asterisk = await rig.dial(Continuous.from_pcm(tone(8000, 400, 440), duration=None), uuid=U1)
        sts = await rig.session(U1)
        created = await events.wait(of_call(U1, "call.created"))
        assert created["data"]["kind"] == "audiosocket" and created["data"]["channelId"] == "1770758888.32"
        await until(rig.reactor, lambda: len(sts.received_audio) >= 3200)

        response = await rig.http.get(f"{http}/calls")
        [listed] = (await response.json())["calls"]
        assert response.code == 200
        assert listed | {
            "id": U1, "kind": "audiosocket", "uuid": U1, "state": "answered", "stsUrl": body["sts_url"],
            "sampleRate": 8000, "codec": "slin", "channelId": "1770758888.32", "channelName": "PJSIP/2000-00000013",
            "callerNumber": "2000", "calleeNumber": None, "linkedCallId": None, "endedAt": None,
        } == listed

        asterisk.send_dtmf("5")
        await events.wait(of_call(U1, "call.dtmf", digit="5"))
        sts.send_transcript("user", "hello")
        await events.wait(of_call(U1, "call.transcript", role="user", text="hello"))
        sts.send_interruption()
        await events.wait(of_call(U1, "call.interruption"))
        asterisk.hang_up()
        ended = await events.wait(of_call(U1, "call.ended", previousState="answered"))
        assert ended["data"]["reason"].startswith("Asterisk:")
        assert [m["type"] for m in events.messages if m.get("callId") == U1] == [
            "call.created", "call.dtmf", "call.transcript", "call.interruption", "call.ended"]

        response = await rig.http.get(f"{http}/calls/{U1}")
        call = (await response.json())["call"]
        assert response.code == 200 and call["state"] == "ended" and call["endedAt"] is not None
        response = await rig.http.get(f"{http}/calls")
        assert (await response.json()) == {"calls": []}
        response = await rig.http.post(f"{http}/calls", json={"endpoint": "PJSIP/1001"})
        assert response.code == 503  # call control needs ARI
        await response.content()
    finally:
        await close_events(events)

    posted = await events_sink.when_received(5).addTimeout(5, rig.reactor)
    assert [(p.envelope["type"], p.envelope["callId"]) for p in posted] == [
        ("call.created", U1), ("call.dtmf", U1), ("call.transcript", U1), ("call.interruption", U1),
        ("call.ended", U1)]
    events_sink.close()
    hooks = await rig.sink.when_received(6).addTimeout(5, rig.reactor)
    stamps = [h.envelope["timestamp"] for h in hooks]
    assert [h.body for h in hooks] == [
        _webhook(U1, "call_initiated", stamps[0], json.dumps(payload, separators=(",", ":")).encode()),
        _webhook(U1, "call_started", stamps[1], b"{}"),
        _webhook(U1, "dtmf_digit", stamps[2], b'{"digit":"5"}'),
        _webhook(U1, "transcription", stamps[3], b'{"role":"user","text":"hello"}'),
        _webhook(U1, "interruption", stamps[4], b"{}"),
        _webhook(U1, "call_ended", stamps[5], b"{}"),
    ]
