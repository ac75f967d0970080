"""Tests for avr.pipeline.vad: avr-vad's state machine, Silero on real speech, one call's detector."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest
import pytest_twisted

from avr.pipeline.vad import (
    MISFIRE,
    SPEECH_END,
    SPEECH_REAL_START,
    SPEECH_START,
    CallVad,
    InlineVadRunner,
    SileroModel,
    SpeechDetector,
    ThreadedVadRunner,
    VadSettings,
)

SPEECH = Path(__file__).parent / "fixtures" / "speech"


def speech(name: str) -> bytes:
    """An espeak-ng utterance (PCM16LE 8 kHz), with 0.5 s of silence either side."""
    return bytes(8000) + (SPEECH / f"{name}.raw").read_bytes() + bytes(8000)


def run(detector: SpeechDetector, probabilities: list[float]) -> list[tuple[int, str]]:
    return [(i, e) for i, p in enumerate(probabilities) for e in detector.process(p)]


def test_speech_start_real_start_and_end_as_avr_vad():
    """Defaults (0.08/0.03, 3 min frames, 8 redemption): start at the first speech frame, real start at the
    third, end after 8 frames below the negative threshold."""
    events = run(SpeechDetector(VadSettings()), [0.01, 0.5, 0.5, 0.5, 0.05] + [0.01] * 8)
    assert events == [(1, SPEECH_START), (3, SPEECH_REAL_START), (12, SPEECH_END)]


def test_short_blip_is_a_misfire_and_redemption_forgives_a_dip():
    """Two speech frames then silence is a misfire; a dip shorter than the redemption keeps the segment going."""
    assert run(SpeechDetector(VadSettings()), [0.9, 0.9] + [0.0] * 8) == [(0, SPEECH_START), (9, MISFIRE)]
    detector = SpeechDetector(VadSettings(redemption_frames=3))
    events = run(detector, [0.9, 0.9, 0.0, 0.0, 0.9, 0.9] + [0.0] * 3)
    assert events == [(0, SPEECH_START), (4, SPEECH_REAL_START), (8, SPEECH_END)]


def test_between_the_thresholds_counts_neither_way():
    """A probability between negative and positive neither counts as speech nor runs down the redemption."""
    detector = SpeechDetector(VadSettings(min_speech_frames=1, redemption_frames=2))
    assert run(detector, [0.9, 0.05, 0.05, 0.05, 0.01]) == [(0, SPEECH_START), (0, SPEECH_REAL_START)]
    assert detector.speaking
    assert detector.process(0.01) == [SPEECH_END]


def silero_events(pcm: bytes, settings: VadSettings = VadSettings()) -> list[tuple[float, str]]:
    model = SileroModel()
    detector = SpeechDetector(settings)
    size = settings.frame_samples * 2
    frame_s = settings.frame_samples / 8000
    return [(i * frame_s, e) for i in range(len(pcm) // size)
            for e in detector.process(model.probability(pcm[i * size:(i + 1) * size]))]


def test_silero_finds_real_speech_and_ignores_tones_and_noise():
    """The espeak utterances are confirmed speech within ~0.25 s of their onset (0.5 s) and end after it; a loud
    440 Hz tone and room-level noise never start a segment."""
    for name in ("book_a_table", "stop"):
        events = {e: t for t, e in silero_events(speech(name))}
        assert 0.5 <= events[SPEECH_REAL_START] <= 0.75
        assert SPEECH_END in events
    tone = b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * 440 * i / 8000))) for i in range(16000))
    noise = bytes(b % 7 for b in range(32000))  # a low, busy hiss
    assert silero_events(tone) == [] and silero_events(noise) == []


def test_a_frame_of_two_windows_scores_the_louder_one():
    """512 samples are two 256-sample model windows; the frame scores the higher probability."""
    model = SileroModel()
    pcm = speech("stop")
    frame = pcm[8000 + 4000:8000 + 4000 + 1024]
    both = model.probability(frame)
    model.reset()
    first = model.probability(frame[:512])
    second = model.probability(frame[512:])
    assert both == pytest.approx(max(first, second), abs=0.05)


class Scripted:
    """A model whose probabilities are scripted, recording the frames it scored."""

    def __init__(self, probabilities: list[float]) -> None:
        self.probabilities = list(probabilities)
        self.frames: list[bytes] = []
        self.resets = 0

    def probability(self, pcm: bytes) -> float:
        self.frames.append(pcm)
        return self.probabilities.pop(0) if self.probabilities else 0.0

    def reset(self) -> None:
        self.resets += 1


def test_call_vad_frames_the_audio_and_reports_events():
    """Audio in any chunk sizes is cut into VAD_FRAME_SAMPLES frames; events reach the callback; close gives the
    model back, reset, for the next call."""
    model = Scripted([0.9, 0.9, 0.9])
    runner = InlineVadRunner(lambda: model)
    events: list[str] = []
    vad = CallVad(runner, VadSettings(), events.append, "u")
    vad.feed(b"\x01\x00" * 300)
    vad.feed(b"\x01\x00" * 800)
    assert [len(f) for f in model.frames] == [1024, 1024]
    assert events == [SPEECH_START]
    vad.feed(b"\x01\x00" * 512)
    assert events == [SPEECH_START, SPEECH_REAL_START]
    vad.close()
    vad.feed(b"\x01\x00" * 512)
    assert len(model.frames) == 3 and model.resets == 1
    assert runner.open().result is model  # reused


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_threaded_runner_scores_off_the_reactor_thread_in_order():
    """The real runner builds and runs Silero on its own thread and delivers results in frame order."""
    import threading

    from twisted.internet import reactor

    threads: set[str] = set()

    class Probe(SileroModel):
        def probability(self, pcm: bytes) -> float:
            threads.add(threading.current_thread().name)
            return super().probability(pcm)

    runner = ThreadedVadRunner.create(reactor)
    runner.make_model = Probe
    model = await runner.open()
    pcm = speech("book_a_table")
    results = []
    for i in range(0, 16 * 1024, 1024):
        results.append(await runner.score(model, pcm[i:i + 1024]))
    assert threading.current_thread().name not in threads and len(threads) == 1
    assert results[:6] == pytest.approx([0.0] * 6, abs=0.1) and max(results[8:]) > 0.5
    runner.close(model)
    runner.stop()
    runner.stop()
