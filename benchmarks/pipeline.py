"""
Pipeline mode (ASR → LLM → TTS) measurements, in one process on loopback: avr as `avr.service.build` makes it, the
fake adapters of `avr.testing.pipeline` answering at once, and simulated Asterisk callers.

- **turn latency**: from the moment the fake ASR writes a transcript (the end of the caller's speech, as the ASR
  reports it) to the first frame of the answer's TTS audio that Asterisk receives;
- **VAD CPU per call-second**: CPU time of the Silero detector (`avr.pipeline.vad.SileroModel`, 512-sample frames)
  per second of caller audio;
- **VAD isolation**: ``--calls`` calls play agent audio while their callers speak (real speech, looped) with the VAD
  on its thread, with the VAD on the reactor (`InlineVadRunner`, for comparison) and with no VAD
  (``INTERRUPT_LISTENING=true``): the spacing of the frames each caller receives shows whether detectors delay
  other calls' frames.

    .venv/bin/python -m benchmarks.pipeline              # prints Markdown
    .venv/bin/python -m benchmarks.pipeline --turns 50 --calls 40 --seconds 10
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, task
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import Site

from avr.config import Config
from avr.frames import Kind
from avr.service import build, sts_connectors
from avr.sts.connector import StsConnector
from avr.testing.asterisk import Continuous, connect_simulated_asterisk
from avr.testing.pipeline import (
    FakeAsrResource,
    FakeLlmResource,
    FakeTtsResource,
    fake_asr_site,
    pcm_for,
    value_of,
)

SPEECH = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "speech" / "stop.raw"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


class Bench:
    """avr in pipeline mode with its fakes, on the running reactor."""

    def __init__(self, reactor: Any, **settings: Any) -> None:
        from treq.client import HTTPClient

        self.reactor = reactor
        self.asr = FakeAsrResource()
        self.llm = FakeLlmResource(answer=lambda message: ["Certainly. ", "Here is the answer."])
        self.tts = FakeTtsResource()
        self.ports = [reactor.listenTCP(0, site, interface="127.0.0.1") for site in (
            fake_asr_site(self.asr, reactor), Site(self.llm, reactor=reactor), Site(self.tts, reactor=reactor))]
        asr, llm, tts = (p.getHost().port for p in self.ports)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        config = Config(**{
            "port": 0,
            "asr_url": f"http://127.0.0.1:{asr}/speech-to-text-stream",
            "llm_url": f"http://127.0.0.1:{llm}/prompt-stream",
            "tts_url": f"http://127.0.0.1:{tts}/text-to-speech-stream",
            **settings,
        })
        self.avr = build(reactor, config, http_client=HTTPClient(Agent(reactor, pool=self.pool)),
                         sts_connector=StsConnector(sts_connectors(reactor, config)))
        self.avr.service.startService()
        self.calls: list[Any] = []

    async def dial(self, plan: Any, on_frame: Any = None) -> Any:
        port = self.avr.service.getServiceNamed("audiosocket").port.getHost().port
        asterisk, _ = await connect_simulated_asterisk(self.reactor, "127.0.0.1", port, plan, record=False,
                                                       on_frame=on_frame)
        self.calls.append(asterisk)
        return asterisk

    async def stop(self) -> None:
        for call in self.calls:
            if call.connected:
                call.hang_up()
        await self.avr.service.stopService()
        for port in self.ports:
            await port.stopListening()
        await self.pool.closeCachedConnections()


async def sleep(reactor: Any, seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def turn_latency(reactor: Any, turns: int) -> list[float]:
    """Seconds from each transcript to the first frame of its answer at Asterisk."""
    bench = Bench(reactor, interrupt_listening=True)
    first = value_of("Certainly.").to_bytes(2, "little", signed=True)
    pending: dict[str, float] = {}
    latencies: list[float] = []

    def on_frame(at: float, frame: Any) -> None:
        if frame.kind == Kind.SLIN8 and frame.payload[:2] == first and "t" in pending:
            latencies.append(time.perf_counter() - pending.pop("t"))

    try:
        asterisk = await bench.dial(Continuous.from_pcm(bytes(320), duration=None, hang_up_at_end=False), on_frame)
        asr = await bench.asr.call_opened(asterisk.uuid)
        await sleep(reactor, 0.5)
        for i in range(turns):
            pending["t"] = time.perf_counter()
            asr.say(f"question {i}")
            await sleep(reactor, 1.0)  # the answer (0.7 s of audio) has played
    finally:
        await bench.stop()
    return latencies


def vad_cpu_per_call_second(seconds: float, streams: int = 1) -> float:
    """
    CPU seconds the detector spends per second of caller audio (speech and silence alternating), with ``streams``
    models scored in turn (each call has its own: their weights compete for the CPU caches).
    """
    from avr.pipeline.vad import SileroModel

    models = [SileroModel() for _ in range(streams)]
    audio = SPEECH.read_bytes() + bytes(len(SPEECH.read_bytes()))
    frames = [audio[i:i + 1024] for i in range(0, len(audio) - 1023, 1024)]
    count = int(seconds * 8000 / 512)
    start = time.process_time()
    for i in range(count):
        for model in models:
            model.probability(frames[i % len(frames)])
    return (time.process_time() - start) / (count * streams * 512 / 8000)


class TimedModel:
    """A Silero model that adds the CPU time of its thread spent scoring to ``spent`` (a one-item list)."""

    spent = [0.0]

    def __init__(self) -> None:
        from avr.pipeline.vad import SileroModel

        self.model = SileroModel()

    def probability(self, pcm: bytes) -> float:
        start = time.thread_time()
        try:
            return self.model.probability(pcm)
        finally:
            TimedModel.spent[0] += time.thread_time() - start

    def reset(self) -> None:
        self.model.reset()


async def frame_spacing(reactor: Any, calls: int, seconds: float, vad: str) -> dict[str, float]:
    """Deviation of the agent-audio frame spacing from 20 ms, over ``calls`` calls whose callers speak throughout."""
    settings: dict[str, Any] = {"interrupt_listening": vad == "off", "system_message": None}
    # Detectors that never confirm speech: they run on every frame, but never interrupt the agent.
    settings["vad_positive_speech_threshold"] = 1.0
    settings["vad_negative_speech_threshold"] = 1.0
    bench = Bench(reactor, **settings)
    connector: Any = bench.avr.calls.connector.by_scheme[None]  # type: ignore[attr-defined]
    if vad == "reactor":
        from avr.pipeline.vad import InlineVadRunner

        connector.vad_runner = InlineVadRunner(TimedModel)
    elif vad == "thread":
        connector.vad_runner.make_model = TimedModel
    bench.llm.answer = lambda message: ["This answer is long enough to be spoken for the whole measurement."]
    bench.tts.speak = lambda text: pcm_for(text, seconds_per_char=(seconds + 5) / len(text))
    gaps: list[float] = []
    last: dict[int, float] = {}

    def watcher(index: int) -> Any:
        def on_frame(at: float, frame: Any) -> None:
            if frame.kind != Kind.SLIN8:
                return
            now = time.perf_counter()
            if index in last:
                gaps.append(now - last[index])
            last[index] = now
        return on_frame

    speech = SPEECH.read_bytes()
    try:
        streams = []
        for i in range(calls):
            asterisk = await bench.dial(Continuous.from_pcm(speech, duration=None, hang_up_at_end=False), watcher(i))
            streams.append(await bench.asr.call_opened(asterisk.uuid))
        for stream in streams:
            stream.say("talk to me")
        await sleep(reactor, 3.0)  # the detectors' models are built (~0.1 s each, on the VAD thread)
        gaps.clear()
        last.clear()
        cpu = time.process_time()
        scored = TimedModel.spent[0]
        await sleep(reactor, seconds)
        cpu = time.process_time() - cpu
        scored = TimedModel.spent[0] - scored
    finally:
        await bench.stop()
    deviations = [abs(g - 0.020) * 1000 for g in gaps]
    return {"frames": len(gaps), "p50": percentile(deviations, 50), "p99": percentile(deviations, 99),
            "max": max(deviations), "cpu_ms_per_call_second": cpu * 1000 / (calls * seconds),
            "vad_ms_per_call_second": scored * 1000 / (calls * seconds)}


async def main(reactor: Any, args: argparse.Namespace) -> None:
    latencies = await turn_latency(reactor, args.turns)
    ms = [x * 1000 for x in latencies]
    print(f"Turn latency (end of caller speech as the ASR reports it → first answer frame at Asterisk), "
          f"{len(ms)} turns: p50 {statistics.median(ms):.1f} ms, p99 {percentile(ms, 99):.1f} ms, "
          f"max {max(ms):.1f} ms")
    for streams in (1, args.calls):
        cpu = vad_cpu_per_call_second(args.vad_seconds / streams, streams)
        print(f"VAD CPU per call-second, {streams} stream(s) in turn: {cpu * 1000:.2f} ms "
              f"({cpu * 100:.2f} % of a core per call)")
    print()
    print(f"| VAD ({args.calls} calls, callers speaking, agent playing, {args.seconds:g} s) | frames | "
          "interval deviation p50 / p99 / max (ms) | process CPU ms per call-second | of which scoring |")
    print("|---|---|---|---|---|")
    for mode in ("off", "thread", "reactor"):
        r = await frame_spacing(reactor, args.calls, args.seconds, mode)
        label = {"off": "none (INTERRUPT_LISTENING=true)", "thread": "Silero on its thread (avr's)",
                 "reactor": "Silero on the reactor (for comparison)"}[mode]
        print(f"| {label} | {r['frames']:.0f} | {r['p50']:.2f} / {r['p99']:.2f} / {r['max']:.2f} "
              f"| {r['cpu_ms_per_call_second']:.2f} | {r['vad_ms_per_call_second']:.2f} |")


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--vad-seconds", type=float, default=60.0, help="caller audio scored for the CPU figure")
    args = parser.parse_args()
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, args)))


if __name__ == "__main__":
    run()
