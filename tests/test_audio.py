"""Tests for avr.audio: resampling, G.711 and inbound codec detection."""

from __future__ import annotations

import math
import random
import struct
import pytest
from twisted.logger import LogEvent, formatEvent

from avr.audio import (
    ALAW,
    SLIN,
    ULAW,
    InboundAudio,
    Resampler,
    alaw_to_slin,
    audioop,
    resample,
    slin_to_alaw,
    slin_to_ulaw,
    ulaw_to_slin,
)
from avr.frames import Kind
from avr.testing.asterisk import Capture, chunk_payloads, load_capture
from tests.helpers import pcm16, tone


def texts(events: list[LogEvent]) -> list[str]:
    """The formatted log lines."""
    return [formatEvent(e) for e in events]


def audio_payloads(capture: Capture) -> list[tuple[int, bytes]]:
    """(kind, payload) of a capture's audio frames."""
    return [(f.kind, f.payload) for _, f in capture.frames if f.kind >= Kind.SLIN8 and f.kind <= Kind.SLIN192]


def run(inbound: InboundAudio, frames: list[tuple[int, bytes]]) -> bytes:
    """Feed every frame, return the concatenated output."""
    return b"".join(inbound.feed(kind, payload) for kind, payload in frames)


# --- detection on the real captures ----------------------------------------------------------------------------------

def test_ulaw_capture_is_detected_and_decodes_to_the_same_prompt(log_events: list[LogEvent]) -> None:
    """The c_ capture (µ-law under kind 0x10) is ULAW, and its decoding matches the slin capture of the same prompt."""
    inbound = InboundAudio(uuid="43bd824e-4838-4b39-8b7c-b0b7484576fa")
    decoded = run(inbound, audio_payloads(load_capture("c_dial_chan_native_ulaw_caller")))
    assert inbound.codec == ULAW and inbound.rate == 8000
    assert texts(log_events).count("Audio codec detected: ULAW (call 43bd824e-4838-4b39-8b7c-b0b7484576fa)") == 1

    reference = load_capture("a_app_slin8_hello_dtmf_caller_hangup").audio()
    # Align the slin prompt inside the decoded µ-law stream (they start one frame apart), then compare.
    middle = reference[4000:16000]
    offset, factor = audioop.findfit(decoded, middle)
    assert 0.9 < factor < 1.1
    aligned = decoded[2 * offset:2 * offset + len(middle)]
    error = audioop.add(aligned, audioop.mul(middle, 2, -1.0), 2)
    assert audioop.rms(error, 2) < 0.05 * audioop.rms(middle, 2)  # µ-law quantisation noise only


def test_ulaw_detection_does_not_depend_on_frame_size() -> None:
    """The same µ-law bytes in 320-byte frames (40 ms, the size of 20 ms slin) are still ULAW."""
    ulaw = load_capture("c_dial_chan_native_ulaw_caller").audio()
    inbound = InboundAudio()
    run(inbound, [(Kind.SLIN8, p) for p in chunk_payloads(ulaw, 320, pad=None)])
    assert inbound.codec == ULAW


def test_alaw_transcoding_of_the_slin_capture_is_detected(log_events: list[LogEvent]) -> None:
    """An A-law version of the slin 8 kHz capture is ALAW and decodes back close to the original."""
    slin = load_capture("a_app_slin8_hello_dtmf_caller_hangup").audio()
    alaw = slin_to_alaw(slin)
    inbound = InboundAudio()
    outputs = []
    locked_at = None
    for i, payload in enumerate(chunk_payloads(alaw, 160, pad=None)):
        outputs.append(inbound.feed(Kind.SLIN8, payload))
        if locked_at is None and inbound.codec is not None:
            locked_at = i
    assert inbound.codec == ALAW
    assert "Audio codec detected: ALAW" in texts(log_events)
    assert all(len(out) == 320 for out in outputs)
    # Frames before the decision were decoded with the length prior (µ-law); from the decision on, exact A-law.
    assert locked_at is not None and locked_at < 20
    after = b"".join(outputs[locked_at:])
    original = slin[320 * locked_at:320 * locked_at + len(after)]
    error = audioop.add(after, audioop.mul(original, 2, -1.0), 2)
    assert audioop.rms(error, 2) < 0.05 * audioop.rms(original, 2)


@pytest.mark.parametrize("name", ["a_app_slin8_hello_dtmf_caller_hangup", "e_app_server_sends_hangup"])
def test_slin8_captures_are_slin(name: str) -> None:
    """The AudioSocket() app captures (slin 8 kHz, 320-byte frames) are SLIN; output is the input unchanged."""
    frames = audio_payloads(load_capture(name))
    inbound = InboundAudio()
    out = run(inbound, frames)
    assert inbound.codec == SLIN
    assert out == b"".join(p for _, p in frames)


def test_slin_in_g711_sized_frames_is_still_slin() -> None:
    """Slin cut into 160-byte frames (10 ms, where the length prior says G.711) is still SLIN once speech arrives."""
    slin = load_capture("a_app_slin8_hello_dtmf_caller_hangup").audio()
    inbound = InboundAudio()
    frames = [(Kind.SLIN8, p) for p in chunk_payloads(slin, 160, pad=None)]
    inbound.feed(*frames[0])
    assert inbound.codec is None and inbound.guess == ULAW  # the prior, while the frames say nothing
    run(inbound, frames[1:])
    assert inbound.codec == SLIN


def test_slin16_capture_is_slin_at_16k(log_events: list[LogEvent]) -> None:
    """Kind 0x12 is slin at 16 kHz by definition: passed on as it is, at the call's rate (the call converts it to
    its STS session's rate)."""
    frames = audio_payloads(load_capture("b_dial_chan_c_slin16"))
    inbound = InboundAudio(uuid="u")
    out = run(inbound, frames)
    assert (inbound.codec, inbound.rate) == (SLIN, 16000)
    assert texts(log_events).count("Audio codec detected: SLIN (call u)") == 1
    assert out == b"".join(p for _, p in frames)


def test_slin16_content_is_recognised_as_slin_by_the_signal() -> None:
    """The 16 kHz capture's payloads labelled 0x10 are judged SLIN by the signal test alone."""
    inbound = InboundAudio()
    run(inbound, [(Kind.SLIN8, p) for _, p in audio_payloads(load_capture("b_dial_chan_c_slin16"))])
    assert inbound.codec == SLIN


# --- silence and noise ---------------------------------------------------------------------------------------------

rng = random.Random(20261121)
SILENCES = {
    "slin zeros": [bytes(320)] * 300,
    "slin dither": [pcm16([rng.choice((0, 0, 0, 1, -1)) for _ in range(160)]) for _ in range(300)],
    "slin 50 Hz hum at 2 LSB": [
        pcm16([round(2 * math.sin(2 * math.pi * 50 * (i * 160 + n) / 8000)) for n in range(160)]) for i in range(300)
    ],
    "slin slow 0/-1 square": [pcm16([-1 if (i * 160 + n) // 37 % 2 else 0 for n in range(160)]) for i in range(300)],
    "ulaw 0xff": [b"\xff" * 160] * 300,
    "ulaw idle noise": [bytes(rng.choice((0xFF, 0x7F, 0xFE, 0x7E)) for _ in range(160)) for _ in range(300)],
    "alaw 0xd5": [b"\xd5" * 160] * 300,
    "alaw idle noise": [bytes(rng.choice((0xD5, 0x55, 0xD4, 0x54)) for _ in range(160)) for _ in range(300)],
}


@pytest.mark.parametrize("name", sorted(SILENCES))
def test_silence_locks_nothing(name: str, log_events: list[LogEvent]) -> None:
    """Six seconds of silence of any codec leave the codec undecided (the guess follows the frame-size prior)."""
    inbound = InboundAudio()
    for payload in SILENCES[name]:
        inbound.feed(Kind.SLIN8, payload)
    assert inbound.codec is None
    assert inbound.guess == (ULAW if len(SILENCES[name][0]) == 160 else SLIN)
    assert not [t for t in texts(log_events) if "Audio codec detected" in t]


def test_silence_then_speech_locks_the_right_codec() -> None:
    """µ-law silence in 320-byte frames (prior: slin) followed by µ-law speech ends as ULAW, not SLIN."""
    inbound = InboundAudio()
    for _ in range(100):
        inbound.feed(Kind.SLIN8, b"\xff" * 320)
    assert inbound.codec is None and inbound.guess == SLIN
    ulaw = load_capture("c_dial_chan_native_ulaw_caller").audio()
    run(inbound, [(Kind.SLIN8, p) for p in chunk_payloads(ulaw, 320, pad=None)])
    assert inbound.codec == ULAW


def test_unknown_codec_warns_once_and_never_locks(log_events: list[LogEvent]) -> None:
    """Loud noise-like payloads (e.g. Opus from Dial without c()) never lock and produce one warning."""
    noise = random.Random(7)
    inbound = InboundAudio(uuid="u1")
    for _ in range(600):
        inbound.feed(Kind.SLIN8, bytes(noise.getrandbits(8) for _ in range(160)))
    assert inbound.codec is None
    warnings = [t for t in texts(log_events) if "not recognisable" in t]
    assert len(warnings) == 1 and "u1" in warnings[0]


def test_undecided_frames_are_decoded_with_the_guess() -> None:
    """Before a decision, a 160-byte frame is decoded as µ-law (320 bytes out), a 320-byte one passed as slin."""
    inbound = InboundAudio()
    assert inbound.feed(Kind.SLIN8, b"\xff" * 160) == bytes(320)  # µ-law 0xff = 0
    inbound = InboundAudio()
    assert inbound.feed(Kind.SLIN8, bytes(320)) == bytes(320)


def test_tone_locks_by_signal() -> None:
    """A loud 300 Hz tone is detected in each of the three codecs."""
    tone = pcm16([round(8000 * math.sin(2 * math.pi * 300 * n / 8000)) for n in range(8000)])
    for codec, data, size in ((SLIN, tone, 320), (ULAW, slin_to_ulaw(tone), 160), (ALAW, slin_to_alaw(tone), 160)):
        inbound = InboundAudio()
        run(inbound, [(Kind.SLIN8, p) for p in chunk_payloads(data, size)])
        assert inbound.codec == codec


# --- conversion -------------------------------------------------------------------------------------------------------

def test_g711_helpers_round_trip() -> None:
    """µ-law/A-law encode then decode stays close to the original."""
    tone = pcm16([round(10000 * math.sin(n / 5)) for n in range(800)])
    for encode, decode in ((slin_to_ulaw, ulaw_to_slin), (slin_to_alaw, alaw_to_slin)):
        coded = encode(tone)
        assert len(coded) == 800
        back = decode(coded)
        error = audioop.add(back, audioop.mul(tone, 2, -1.0), 2)
        assert audioop.rms(error, 2) < 0.03 * audioop.rms(tone, 2)


def test_odd_slin_byte_is_kept_for_the_next_frame() -> None:
    """An odd-length slin payload's last byte is joined to the next payload (no sample is split or lost)."""
    inbound = InboundAudio()
    assert inbound.feed(Kind.SLIN16, b"abc") == b"ab"
    assert inbound.feed(Kind.SLIN16, b"d") == b"cd"
    assert inbound.feed(Kind.SLIN16, b"") == b""
    assert inbound.feed(Kind.SLIN16, b"efgh") == b"efgh"


def test_non_audio_kind_is_refused() -> None:
    """Only audio kinds can be fed."""
    with pytest.raises(ValueError, match="0x03"):
        InboundAudio().feed(Kind.DTMF, b"1")


def test_resampler_identity_returns_the_input_object() -> None:
    """Equal rates: no conversion, no copy."""
    data = bytes(range(200))
    resampler = Resampler(8000, 8000)
    assert resampler.identity and resampler.convert(data) is data


@pytest.mark.parametrize("from_rate,to_rate,chunk", [(8000, 16000, 320), (16000, 8000, 640), (8000, 24000, 320),
                                                     (48000, 8000, 1920), (8000, 44100, 320)])
def test_resampler_keeps_duration_over_many_chunks(from_rate: int, to_rate: int, chunk: int) -> None:
    """Output length tracks input duration: after 3000 chunks the shortfall is the same few milliseconds (the
    filter's look-ahead) as after 100, and `flush` returns exactly what was held back."""
    resampler = Resampler(from_rate, to_rate)
    noise = random.Random(3)
    data = bytes(noise.getrandbits(8) for _ in range(chunk))
    total_in = total_out = 0
    shortfall = {}
    for i in range(1, 3001):
        total_out += len(resampler.convert(data))
        total_in += chunk
        if i in (100, 3000):
            expected = total_in // 2 * to_rate / from_rate
            shortfall[i] = expected - total_out // 2
    assert 0 < shortfall[100] <= 0.040 * to_rate  # at most 40 ms held back
    assert abs(shortfall[3000] - shortfall[100]) <= 1
    tail = resampler.flush()
    assert abs(len(tail) // 2 - shortfall[3000]) <= 1
    assert not resampler.holding and resampler.flush() == b""


def test_resampler_is_stateful_across_chunks() -> None:
    """Converting in odd-sized pieces gives the samples of converting at once (within float rounding: 2 LSB)."""
    tone = pcm16([round(10000 * math.sin(n / 7)) for n in range(1600)])
    one = Resampler(8000, 16000)
    whole = one.convert(tone) + one.flush()
    pieces = Resampler(8000, 16000)
    split = b"".join(pieces.convert(tone[i:i + 321]) for i in range(0, len(tone), 321)) + pieces.flush()
    assert len(split) == len(whole) == 2 * len(tone)
    assert audioop.maxpp(audioop.add(split, audioop.mul(whole, 2, -1.0), 2), 2) <= 4


def level_db(pcm: bytes, reference: bytes) -> float:
    """Level of ``pcm`` relative to ``reference``, in dB (RMS)."""
    return 20 * math.log10(max(audioop.rms(pcm, 2), 0.1) / audioop.rms(reference, 2))


def stream(resampler: Resampler, pcm: bytes, frame: int) -> bytes:
    """``pcm`` through ``resampler`` in 20 ms frames of ``frame`` bytes, as a call feeds it."""
    return b"".join(resampler.convert(pcm[i:i + frame]) for i in range(0, len(pcm), frame))


@pytest.mark.parametrize("from_rate,to_rate,freq", [(16000, 8000, 6000), (16000, 8000, 4400), (24000, 8000, 9000),
                                                   (48000, 16000, 12000), (44100, 8000, 5000)])
def test_resampler_removes_what_would_alias(from_rate: int, to_rate: int, freq: int) -> None:
    """A tone above the target's Nyquist frequency (a 6 kHz tone on a 16 kHz call sent to an 8 kHz STS) does not
    fold back into the audio: at least 40 dB down (audioop.ratecv passed it at full level as a 2 kHz tone)."""
    loud = tone(from_rate, 1000, freq, amplitude=16000)
    out = stream(Resampler(from_rate, to_rate), loud, from_rate // 50 * 2)
    steady = out[len(out) // 4 & ~1:]
    assert level_db(steady, loud) <= -40


@pytest.mark.parametrize("from_rate,to_rate", [(16000, 8000), (8000, 16000), (24000, 8000), (8000, 48000),
                                               (44100, 8000), (12000, 16000)])
@pytest.mark.parametrize("freq", [300, 1000, 3000])
def test_resampler_passes_the_voice_band(from_rate: int, to_rate: int, freq: int) -> None:
    """An in-band tone keeps its level within 1 dB, and its frequency."""
    loud = tone(from_rate, 1000, freq, amplitude=16000)
    out = stream(Resampler(from_rate, to_rate), loud, from_rate // 50 * 2)
    steady = out[len(out) // 4 & ~1:len(out) // 4 * 3 & ~1]
    assert abs(level_db(steady, loud)) <= 1
    samples = struct.unpack(f"<{len(steady) // 2}h", steady)
    crossings = sum(1 for x, y in zip(samples, samples[1:], strict=False) if (x < 0) != (y < 0))
    assert abs(crossings / 2 / (len(samples) / to_rate) - freq) <= 0.02 * freq  # still the same tone


def test_resampler_clear_drops_what_it_holds() -> None:
    """After `clear` (barge-in) nothing of the old stream comes out."""
    resampler = Resampler(8000, 16000)
    resampler.convert(tone(8000, 100))
    assert resampler.holding
    resampler.clear()
    assert not resampler.holding and resampler.flush() == b""
    out = resampler.convert(bytes(3200)) + resampler.flush()
    assert out == bytes(len(out)) and len(out) == 6400


def test_resample_converts_a_whole_buffer_exactly() -> None:
    """`resample` (files) gives the whole duration at once, band-limited too."""
    loud = tone(16000, 500, 6000, amplitude=16000)
    out = resample(loud, 16000, 8000)
    assert len(out) == len(loud) // 2
    assert level_db(out, loud) <= -40
    assert resample(loud, 16000, 16000) is loud
    assert resample(b"\x01", 16000, 8000) == b""


def test_resampler_rejects_bad_rates() -> None:
    """Rates must be positive."""
    with pytest.raises(ValueError):
        Resampler(0, 8000)
