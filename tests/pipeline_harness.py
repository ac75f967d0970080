"""A pipeline session against the fake ASR, LLM and TTS, all in memory (MemoryReactorClock + iosim)."""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.web.server import Site

from avr.httpstream import StreamingHttpClient
from avr.pipeline.connector import PipelineConnector
from avr.pipeline.turns import PipelineSettings
from avr.pipeline.vad import InlineVadRunner, VadSettings
from avr.testing.pipeline import (
    FakeAsrResource,
    FakeLlmResource,
    FakeTtsResource,
    fake_asr_site,
)
from avr.testing.sts import RecordingStsHandler

U1 = "935652e3-7c59-4edc-b17f-9646a9c2a265"
ASR_URL = "http://asr.example:6010/speech-to-text-stream"
LLM_URL = "http://llm.example:6002/prompt-stream"
TTS_URL = "http://tts.example:6012/text-to-speech-stream"


class Model:
    """A VAD model whose speech probability the test sets (``speech``)."""

    def __init__(self) -> None:
        self.speech = 0.0
        self.resets = 0

    def probability(self, pcm: bytes) -> float:
        return self.speech

    def reset(self) -> None:
        self.resets += 1


class PipelineWorld:
    """The fakes listening in memory, a connector for them, and the session's handler."""

    def __init__(self, asr: FakeAsrResource | None = None, llm: FakeLlmResource | None = None,
                 tts: FakeTtsResource | None = None, model: Any = None, **settings: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.asr = asr or FakeAsrResource()
        self.llm = llm or FakeLlmResource(answer=lambda message: ["Sure. ", "When?"])
        self.tts = tts or FakeTtsResource(clock=self.reactor)
        self.reactor.listenTCP(6010, fake_asr_site(self.asr, self.reactor))
        self.reactor.listenTCP(6002, Site(self.llm, reactor=self.reactor))
        self.reactor.listenTCP(6012, Site(self.tts, reactor=self.reactor))
        self.model = model or Model()
        self.settings = PipelineSettings(ASR_URL, LLM_URL, TTS_URL, **settings)
        self.connector = PipelineConnector(StreamingHttpClient(self.reactor), self.reactor, self.settings,
                                           VadSettings(), InlineVadRunner(lambda: self.model))
        self.handler = RecordingStsHandler()
        self.pumps: list[iosim.IOPump] = []
        self.session: Any = None
        self.outcome: list[Any] = []

    def open(self, uuid: str = U1) -> Any:
        """Connect, let the greeting start; :return: the session (or the failure)."""
        self.connector.connect(None, uuid, self.handler).addBoth(self.outcome.append)
        self.settle()
        self.advance(0)
        self.session = self.outcome[0]
        return self.session

    def settle(self) -> None:
        """Complete every pending connection and move every byte, until nothing moves."""
        completer = iosim.ConnectionCompleter(self.reactor)
        for _ in range(100):
            moved = False
            # Attempts the endpoint abandoned (it raced addresses and one won) must not complete.
            for i in reversed(range(len(self.reactor.connectors))):
                if self.reactor.connectors[i].stoppedConnecting:
                    del self.reactor.connectors[i], self.reactor.tcpClients[i]
            while True:
                pump = completer.succeedOnce()
                if pump is None:
                    break
                self.pumps.append(pump)
                moved = True
            for pump in self.pumps:
                moved = pump.flush() or moved
            if not moved:
                return

    def advance(self, seconds: float, step: float = 0.01) -> None:
        """Let ``seconds`` pass on the clock, settling the connections at every step."""
        target = self.reactor.seconds() + seconds
        while True:
            self.reactor.advance(max(0.0, min(step, target - self.reactor.seconds())))
            self.settle()
            if self.reactor.seconds() >= target - 1e-9:
                break

    @property
    def asr_call(self) -> Any:
        return self.asr.calls[-1]

    def say(self, text: str) -> None:
        """The caller said ``text``: the ASR reports it (one chunk)."""
        self.asr_call.say(text)
        self.settle()

    def caller_audio(self, pcm: bytes) -> None:
        self.session.send_audio(pcm)
        self.settle()

    def agent_values(self) -> list[int]:
        """The distinct sample values of the agent audio, in order (see `avr.testing.pipeline.pcm_for`)."""
        values: list[int] = []
        audio = self.handler.audio
        for i in range(0, len(audio) - 1, 2):
            value = int.from_bytes(audio[i:i + 2], "little", signed=True)
            if not values or values[-1] != value:
                values.append(value)
        return values
