"""
Whole pipeline calls over loopback: a simulated Asterisk, avr as built by `avr.service.build` in pipeline mode, the
fake ASR, LLM and TTS services and a webhook sink, all on real sockets bound to 127.0.0.1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from avr.config import Config
from avr.frames import Kind, encode_frame
from avr.service import Avr, build, sts_connectors
from avr.sts.connector import StsConnector
from avr.testing.asterisk import (
    Continuous,
    SimulatedAsterisk,
    chunk_payloads,
    connect_simulated_asterisk,
)
from avr.testing.pipeline import (
    FakeAsrResource,
    FakeLlmResource,
    FakeTtsResource,
    fake_asr_site,
    pcm_for,
    value_of,
)
from avr.testing.webhooks import WebhookSink
from tests.helpers import until

pytestmark = pytest.mark.integration

SPEECH = Path(__file__).parent / "fixtures" / "speech"
GREETING = "Hello, how can I help you today?"


class PipelineRig:
    """avr in pipeline mode plus its services on loopback."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.asr = FakeAsrResource()
        self.llm = FakeLlmResource(answer=lambda message: ["Sure. ", "When would you like to come?"])
        self.tts = FakeTtsResource(clock=reactor)
        self.sink = WebhookSink(reactor)
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
        asr = self.listen(fake_asr_site(self.asr, self.reactor))
        llm = self.listen(Site(self.llm, reactor=self.reactor))
        tts = self.listen(Site(self.tts, reactor=self.reactor))
        hooks = self.listen(Site(self.sink, reactor=self.reactor))
        config = Config(**{
            "port": 0,
            "asr_url": f"http://127.0.0.1:{asr}/speech-to-text-stream",
            "llm_url": f"http://127.0.0.1:{llm}/prompt-stream",
            "tts_url": f"http://127.0.0.1:{tts}/text-to-speech-stream",
            "system_message": GREETING,
            "webhook_url": f"http://127.0.0.1:{hooks}/hooks",
            **settings,
        })
        self.avr = build(self.reactor, config, http_client=self.http,
                         sts_connector=StsConnector(sts_connectors(self.reactor, config)))
        self.avr.service.startService()

    async def dial(self, plan: Any = None, **kwargs: Any) -> SimulatedAsterisk:
        port = self.avr.service.getServiceNamed("audiosocket").port.getHost().port  # type: ignore[union-attr]
        asterisk, _ = await connect_simulated_asterisk(self.reactor, "127.0.0.1", port, plan, **kwargs)
        self.calls.append(asterisk)
        return asterisk

    async def stop(self) -> None:
        for call in self.calls:
            if call.connected:
                call.hang_up()
        if self.avr is not None:
            await self.avr.service.stopService()
        for port in self.ports:
            await port.stopListening()
        self.sink.close()
        await self.pool.closeCachedConnections()


@pytest_twisted.async_yield_fixture
async def rig() -> AsyncIterator[PipelineRig]:
    from twisted.internet import reactor

    r = PipelineRig(reactor)
    try:
        yield r
    finally:
        await r.stop()


def values(asterisk: SimulatedAsterisk) -> list[int]:
    """The distinct sample values of the audio Asterisk received, in order."""
    out: list[int] = []
    for _, frame in asterisk.received:
        if frame.kind != Kind.SLIN8:
            continue
        for i in range(0, len(frame.payload), 2):
            value = int.from_bytes(frame.payload[i:i + 2], "little", signed=True)
            if value and (not out or out[-1] != value):
                out.append(value)
    return out


def silence(seconds: float) -> Continuous:
    return Continuous.from_pcm(bytes(320), duration=seconds, hang_up_at_end=False)


@pytest_twisted.ensureDeferred
async def test_greeting_then_a_turn_sentence_by_sentence_paced(rig: PipelineRig) -> None:
    """Scenario 13 end to end: the greeting plays first, the caller's turn is answered sentence by sentence in
    order, paced at 20 ms per 320-byte frame; transcription webhooks for both sides."""
    rig.start()
    asterisk = await rig.dial(silence(20))
    asr = await rig.asr.call_opened(asterisk.uuid)
    await until(rig.reactor, lambda: values(asterisk)[:1] == [value_of(GREETING)])
    await until(rig.reactor, lambda: len(asr.received) >= 3200)
    asr.say("book a table")
    answer = ["Sure.", "When would you like to come?"]
    await until(rig.reactor, lambda: values(asterisk) == [value_of(GREETING)] + [value_of(t) for t in answer],
                timeout=8)
    frames = [(t, f) for t, f in asterisk.received if f.kind == Kind.SLIN8]
    assert {len(f.payload) for _, f in frames} == {320}
    assert rig.tts.texts[0] == GREETING and sorted(rig.tts.texts[1:]) == sorted(answer)  # in parallel: any order
    await until(rig.reactor, lambda: len(rig.sink.of_type("transcription")) >= 3)
    assert [w.payload for w in rig.sink.of_type("transcription")] == [
        {"role": "agent", "text": GREETING}, {"role": "user", "text": "book a table"},
        {"role": "agent", "text": "Sure. When would you like to come?"}]


@pytest_twisted.ensureDeferred
async def test_barge_in_with_real_speech_stops_the_agent(rig: PipelineRig) -> None:
    """Scenario 14: while a long answer plays, the caller speaks (espeak-ng speech): the agent's frames stop within
    a frame of the detection, the interruption webhook is sent, the LLM request of that turn is gone."""
    rig.llm.answer = None
    rig.start(system_message=None)
    asterisk = await rig.dial(silence(30))
    asr = await rig.asr.call_opened(asterisk.uuid)
    asr.say("tell me everything")
    llm = await rig.llm.request_arrived()
    llm.text("This is a very long answer that goes on and on for quite some time indeed. ")
    await until(rig.reactor, lambda: len(values(asterisk)) == 1)
    speech = (SPEECH / "stop.raw").read_bytes()
    for i, payload in enumerate(chunk_payloads(speech, 320)):
        rig.reactor.callLater(0.02 * i, asterisk.send_frame, encode_frame(Kind.SLIN8, payload))
    await until(rig.reactor, lambda: rig.sink.of_type("interruption"), timeout=5)
    interrupted_at = rig.reactor.seconds()
    agent = value_of("This is a very long answer that goes on and on for quite some time indeed.")
    await until(rig.reactor, lambda: llm.cancelled)

    def agent_frames_after(t: float) -> int:
        return sum(1 for ts, f in asterisk.received
                   if ts > t and f.kind == Kind.SLIN8 and f.payload[:2] == agent.to_bytes(2, "little", signed=True))

    await deferLater(rig.reactor, 0.5, lambda: None)
    assert agent_frames_after(interrupted_at + 0.025) == 0


@pytest_twisted.ensureDeferred
async def test_interrupt_listening_true_sends_no_audio_to_the_asr_while_speaking(rig: PipelineRig) -> None:
    """Scenario 14, INTERRUPT_LISTENING=true: the ASR hears nothing while the greeting plays, then the caller."""
    rig.tts.speak = lambda text: pcm_for(text, seconds_per_char=0.05)  # 1.6 s of greeting
    rig.start(interrupt_listening=True)
    asterisk = await rig.dial(Continuous.from_pcm(b"\x07\x00" * 160, duration=None, hang_up_at_end=False))
    asr = await rig.asr.call_opened(asterisk.uuid)
    await until(rig.reactor, lambda: values(asterisk)[:1] == [value_of(GREETING)])
    await deferLater(rig.reactor, 0.8, lambda: None)
    heard_during = len(asr.received)
    await until(rig.reactor, lambda: len(asr.received) > 3200, timeout=5)
    assert heard_during <= 2 * 320  # at most what arrived before the greeting's audio did


@pytest_twisted.ensureDeferred
async def test_hanging_up_mid_llm_cancels_the_requests(rig: PipelineRig) -> None:
    """The caller hangs up while the LLM is still answering: the LLM request's connection is closed, the ASR
    stream ends, call_ended is sent."""
    rig.llm.answer = None
    rig.start(system_message=None)
    asterisk = await rig.dial(silence(10))
    asr = await rig.asr.call_opened(asterisk.uuid)
    asr.say("hello?")
    llm = await rig.llm.request_arrived()
    asterisk.hang_up()
    await until(rig.reactor, lambda: llm.cancelled and asr.finished)
    await until(rig.reactor, lambda: rig.sink.of_type("call_ended"))


@pytest_twisted.ensureDeferred
async def test_twenty_concurrent_pipeline_calls(rig: PipelineRig) -> None:
    """20 calls at once: each hears its greeting and its own answer; nothing is mixed up between calls."""
    rig.llm.answer = lambda message: [f"You said {message}."]
    rig.start()
    calls = [await rig.dial(silence(20)) for _ in range(20)]
    streams = [await rig.asr.call_opened(c.uuid) for c in calls]
    await until(rig.reactor, lambda: all(values(c)[:1] == [value_of(GREETING)] for c in calls), timeout=10)
    for i, stream in enumerate(streams):
        stream.say(f"number {i}")
    await until(rig.reactor, lambda: all(len(values(c)) >= 2 for c in calls), timeout=15)
    for i, call in enumerate(calls):
        assert values(call)[:2] == [value_of(GREETING), value_of(f"You said number {i}.")]
