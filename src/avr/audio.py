"""
Audio conversion, sans-IO: resampling, G.711, and `InboundAudio`, which turns a call's AudioSocket audio frames into
PCM16LE at the call's rate, detecting raw G.711 sent under kind 0x10.

All sample work is done in C, never per sample in Python: ``audioop`` for G.711 and levels, libsoxr (``soxr``) for
rate changes.
"""

from __future__ import annotations

import warnings

import numpy as np
import soxr
from twisted.logger import Logger

from avr.frames import AUDIO_KIND_RATES, Kind

with warnings.catch_warnings():
    # The stdlib module warns on import up to 3.12; on 3.13+ the audioop-lts package provides the same module.
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

__all__ = [
    "ALAW", "CODECS", "InboundAudio", "Resampler", "SLIN", "ULAW",
    "alaw_to_slin", "audioop", "resample", "slin_to_alaw", "slin_to_ulaw", "ulaw_to_slin",
]

SLIN = "SLIN"
ULAW = "ULAW"
ALAW = "ALAW"
#: The codecs `InboundAudio` tells apart on kind 0x10.
CODECS = (SLIN, ULAW, ALAW)


def ulaw_to_slin(data: bytes) -> bytes:
    """Decode G.711 µ-law to PCM16LE (one sample per byte)."""
    return audioop.ulaw2lin(data, 2)


def alaw_to_slin(data: bytes) -> bytes:
    """Decode G.711 A-law to PCM16LE (one sample per byte)."""
    return audioop.alaw2lin(data, 2)


def slin_to_ulaw(pcm: bytes) -> bytes:
    """Encode PCM16LE as G.711 µ-law (e.g. to make test audio; avr always sends slin to Asterisk)."""
    return audioop.lin2ulaw(pcm, 2)


def slin_to_alaw(pcm: bytes) -> bytes:
    """Encode PCM16LE as G.711 A-law (e.g. an A-law version of a slin fixture, for tests)."""
    return audioop.lin2alaw(pcm, 2)


#: Streams use soxr's variable-rate engine, at a fixed ratio: it turns each 20 ms chunk into one 20 ms chunk, while
#: its fixed-rate engine (FFT blocks) holds audio back and lets it out in ~100 ms bursts, which would starve the
#: playback queue and add up to 118 ms of latency. Measured in BENCHMARKS.md ("Resampling"): the voice band stays
#: flat (< 0.01 dB), what would alias is > 100 dB down, 15-30 ms of look-ahead, 10-35 us per 20 ms frame.
#: soxr's quality recipe for whole buffers (uploaded files), where look-ahead costs nothing.
ONESHOT_QUALITY = "HQ"


def _samples(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32)


def _pcm(samples: np.ndarray) -> bytes:
    # Float I/O, rounded here: soxr dithers its 16-bit output, which would turn silence into +-1 noise.
    return np.clip(np.rint(samples, out=samples), -32768, 32767, out=samples).astype("<i2").tobytes()


class Resampler:
    """
    Band-limited PCM16LE mono sample-rate converter for one continuous stream (libsoxr through ``soxr``): what lies
    above the lower rate's Nyquist frequency is filtered out instead of folding back into the audio, and the filter
    state carries over between chunks, so 20 ms chunks join seamlessly and many small chunks convert to the same
    length as one big one (no drift).

    The filter needs a little look-ahead (15-30 ms): the first chunks come out short by that much, and `flush`
    returns the held-back tail at the end of a stream. An odd trailing byte is kept for the next chunk. When the
    rates are equal `convert` returns its input unchanged.

    :param from_rate: input rate (Hz).
    :param to_rate: output rate (Hz).
    """

    def __init__(self, from_rate: int, to_rate: int) -> None:
        if from_rate <= 0 or to_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
        self.from_rate = from_rate
        self.to_rate = to_rate
        self._stream = None if from_rate == to_rate else soxr.ResampleStream(
            from_rate, to_rate, 1, dtype="float32", vr=True)
        #: True when no conversion happens (`convert` returns its input).
        self.identity = self._stream is None
        self._odd = b""
        self._holding = False

    @property
    def holding(self) -> bool:
        """True when audio went in since the last `flush` or `clear`, part of which the filter may still hold."""
        return self._holding

    def convert(self, pcm: bytes) -> bytes:
        """Convert the next chunk of the stream (any length); the result may be empty."""
        if self._stream is None:
            return pcm
        if self._odd:
            pcm = self._odd + pcm
            self._odd = b""
        if len(pcm) & 1:
            self._odd = pcm[-1:]
            pcm = pcm[:-1]
        if not pcm:
            return b""
        self._holding = True
        return _pcm(self._stream.resample_chunk(_samples(pcm)))

    def flush(self) -> bytes:
        """
        End the stream (the speaker paused): the audio the filter still holds, so that the end of an utterance is
        not kept back until the next one. What comes next starts a fresh stream.
        """
        if self._stream is None or not self._holding:
            return b""
        tail = _pcm(self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
        self.clear()
        return tail

    def clear(self) -> None:
        """Drop what the filter holds (barge-in: that audio must not play); what comes next starts a fresh stream."""
        self._odd = b""
        self._holding = False
        if self._stream is not None:
            self._stream.clear()


def resample(pcm: bytes, from_rate: int, to_rate: int) -> bytes:
    """Convert a whole buffer of PCM16LE mono (a file) at once, band-limited; an odd trailing byte is dropped."""
    if from_rate == to_rate:
        return pcm
    if len(pcm) & 1:
        pcm = pcm[:-1]
    if not pcm:
        return b""
    return _pcm(soxr.resample(_samples(pcm), from_rate, to_rate, quality=ONESHOT_QUALITY))


# --- codec detection -------------------------------------------------------------------------------------------------
# Speech is dominated by low frequencies, so the right decoding of a frame is smooth: its first difference carries
# little energy compared with the signal's variance (R = E[dx^2] / var(x) is ~0.03-0.3 for voiced speech, 2 for white
# noise, and anything from 0.5 to 2.5 for a wrong decoding, measured on the real captures). A frame votes for the
# decoding with the lowest R only when the vote is clear; silent or flat frames (where some decoding is quiet or
# constant, e.g. slin zeros, µ-law 0xff, A-law 0xd5) are uninformative. Until enough votes agree, the payload length
# gives the guess: G.711 at 10/20/30 ms (80/160/240 bytes) would be 5/10/15 ms of slin, which Asterisk does not send.

#: Below this standard deviation (≈ -54 dBFS) a decoding counts as quiet: the frame says nothing.
_QUIET_STDDEV = 64.0
#: The winner must be at least this smooth ...
_MAX_WINNER_R = 0.5
#: ... and at least this many times smoother than the runner-up.
_MIN_MARGIN = 2.0
#: Votes needed to lock (8 frames ≈ 160 ms of speech at 20 ms frames) ...
_LOCK_VOTES = 8
#: ... with at most this share of dissenting votes per winning vote.
_MAX_DISSENT = 0.25
#: Fewest samples a frame must have to be judged.
_MIN_SAMPLES = 40
#: After this many loud frames without a clear vote, warn once that the audio is none of the three codecs.
_UNKNOWN_WARN_FRAMES = 250
_G711_LENGTHS = frozenset((80, 160, 240))


def _roughness(pcm: bytes) -> tuple[float, float] | None:
    """
    (R, standard deviation) of PCM16LE ``pcm``: R is the first-difference energy over the variance (0 for a constant).
    ``None`` when too short.
    """
    if len(pcm) < 2 * _MIN_SAMPLES:
        return None
    rms = audioop.rms(pcm, 2)
    mean = audioop.avg(pcm, 2)
    var = float(rms) * rms - float(mean) * mean
    if var <= 1.0:
        return 0.0, 0.0
    # Halve first so the difference cannot clip at 16 bits.
    half = audioop.mul(pcm, 2, 0.5)
    diff = audioop.add(half[2:], audioop.mul(half[:-2], 2, -1.0), 2)
    drms = 2.0 * audioop.rms(diff, 2)
    return drms * drms / var, var ** 0.5


_QUIET = "quiet"
_UNCLEAR = "unclear"


def _judge(payload: bytes) -> str:
    """
    What one 8 kHz kind-0x10 frame says: the codec it clearly votes for, ``_QUIET`` (too short, or some decoding is
    quiet or flat: silence of that codec) or ``_UNCLEAR`` (loud but no decoding is clearly smoother).
    """
    even = payload if not len(payload) & 1 else payload[:-1]
    scores: list[tuple[float, str]] = []
    # Decoded lazily, slin first: silence (the commonest frame before the lock) is settled without any G.711 decode.
    for codec, decode in ((SLIN, None), (ULAW, audioop.ulaw2lin), (ALAW, audioop.alaw2lin)):
        pcm = even if decode is None else decode(payload, 2)
        measured = _roughness(pcm)
        if measured is None:
            return _QUIET
        r, stddev = measured
        if stddev < _QUIET_STDDEV:
            return _QUIET
        scores.append((r, codec))
    scores.sort()
    (best_r, best), (second_r, _) = scores[0], scores[1]
    if best_r < _MAX_WINNER_R and second_r >= _MIN_MARGIN * best_r:
        return best
    return _UNCLEAR


class InboundAudio:
    """
    One call's inbound audio path: AudioSocket payloads in, PCM16LE at the call's rate (`rate`) out; the call
    converts it to the rate its STS session takes.

    Kinds 0x11-0x18 carry slin at their rate. Kind 0x10 carries slin 8 kHz, or raw G.711 (µ-law or A-law) when
    Asterisk used ``Dial(AudioSocket/…)`` without ``c()``; the codec is detected from the signal itself (see the
    module comments), logged once as ``Audio codec detected: …`` and then locked. Until then each frame is decoded
    with the current best guess.

    :param uuid: the call's UUID, for log lines.
    """

    log = Logger()

    def __init__(self, uuid: str | None = None) -> None:
        self.uuid = uuid
        #: The detected codec (`SLIN`, `ULAW`, `ALAW`) once locked, else ``None``.
        self.codec: str | None = None
        #: The call's sample rate, from the audio kind (``None`` before the first audio frame).
        self.rate: int | None = None
        self._odd = b""
        self._votes = {SLIN: 0, ULAW: 0, ALAW: 0}
        self._prior = SLIN
        self._unclear_frames = 0
        self._warned_unknown = False
        # The kind whose frames are passed through as they are: slin at `rate`, codec locked (the fast path).
        self._slin_kind: int | None = None

    @property
    def guess(self) -> str:
        """The codec used for decoding now: the locked one, else the vote leader, else the payload-length prior."""
        if self.codec is not None:
            return self.codec
        leader = max(self._votes, key=self._votes.__getitem__)
        return leader if self._votes[leader] else self._prior

    def feed(self, kind: int, payload: bytes) -> bytes:
        """
        Convert one audio frame.

        :param kind: the frame's kind (0x10-0x18).
        :return: PCM16LE at `rate` (the kind's); possibly empty.
        :raises ValueError: ``kind`` is not an audio kind.
        """
        if kind == self._slin_kind and not self._odd and not len(payload) & 1:
            return payload  # the common case: slin at the call's rate, locked, whole samples
        rate = AUDIO_KIND_RATES.get(kind)
        if rate is None:
            raise ValueError(f"not an audio kind: 0x{kind:02x}")
        if rate != self.rate:
            self._rate_changed(rate)
        if kind != Kind.SLIN8:
            if self.codec is None:
                self._lock(SLIN)
            self._slin_kind = kind
            return self._slin(payload)
        if self.codec is None and payload:
            self._detect(payload)
        codec = self.guess
        if codec == SLIN:
            if self.codec == SLIN:
                self._slin_kind = kind
            return self._slin(payload)
        self._odd = b""
        return audioop.ulaw2lin(payload, 2) if codec == ULAW else audioop.alaw2lin(payload, 2)

    def passes_through(self, kind: int) -> bool:
        """True when `feed` returns frames of ``kind`` with an even length as they are (slin, codec locked)."""
        return kind == self._slin_kind and not self._odd

    def _slin(self, payload: bytes) -> bytes:
        if self._odd:
            payload = self._odd + payload
            self._odd = b""
        if len(payload) & 1:
            self._odd = payload[-1:]
            payload = payload[:-1]
        return payload

    def _rate_changed(self, rate: int) -> None:
        if self.rate is not None:
            self.log.warn("Call {call_id}: inbound audio rate changed from {old} Hz to {new} Hz",
                          call_id=self.uuid, old=self.rate, new=rate)
        self.rate = rate
        self._odd = b""
        self._slin_kind = None

    def _detect(self, payload: bytes) -> None:
        if len(payload) >= _MIN_SAMPLES * 2:
            self._prior = ULAW if len(payload) in _G711_LENGTHS else SLIN
        vote = _judge(payload)
        if vote is _QUIET:
            return
        if vote is _UNCLEAR:
            self._unclear_frames += 1
        else:
            self._votes[vote] += 1
            count = self._votes[vote]
            dissent = sum(self._votes.values()) - count
            if count >= _LOCK_VOTES and dissent <= _MAX_DISSENT * count:
                self._lock(vote)
                return
        if self._unclear_frames == _UNKNOWN_WARN_FRAMES and not self._warned_unknown:
            self._warned_unknown = True
            self.log.warn(
                "Call {call_id}: audio on kind 0x10 is not recognisable as slin, u-law or A-law after {frames} frames "
                "(an unsupported codec from Dial(AudioSocket/...) without c()?); decoding as {guess}",
                call_id=self.uuid, frames=self._unclear_frames, guess=self.guess)

    def _lock(self, codec: str) -> None:
        self.codec = codec
        if self.uuid is None:
            self.log.info("Audio codec detected: {codec}", codec=codec)
        else:
            self.log.info("Audio codec detected: {codec} (call {call_id})", codec=codec, call_id=self.uuid)
