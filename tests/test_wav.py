"""Tests for avr.control.wav: uploaded WAV files to mono PCM16 at an AudioSocket rate, clear errors otherwise."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avr.frames import AUDIO_RATES
from avr.control.wav import WavError, decode_wav, nearest_rate, parse_wav
from tests.helpers import pcm16, wav_file

PCM_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"


def fmt_chunk(tag: int = 1, channels: int = 1, rate: int = 8000, bits: int = 16, block_align: int | None = None,
              extra: bytes = b"") -> bytes:
    """A ``fmt `` chunk (header included)."""
    align = channels * bits // 8 if block_align is None else block_align
    body = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits) + extra
    return b"fmt " + struct.pack("<I", len(body)) + body


def chunk(chunk_id: bytes, body: bytes, declared: int | None = None) -> bytes:
    """Any chunk, padded to an even length; ``declared`` overrides the size field."""
    size = len(body) if declared is None else declared
    return chunk_id + struct.pack("<I", size) + body + (b"\x00" if len(body) & 1 else b"")


def riff(*chunks: bytes, form: bytes = b"WAVE") -> bytes:
    """A RIFF container around ``chunks``."""
    body = form + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_mono_16_bit_at_an_audiosocket_rate_is_passed_through() -> None:
    """A mono 16-bit file at 16 kHz comes back byte for byte, at 16 kHz."""
    pcm = pcm16([0, 1000, -1000, 32767, -32768])
    audio = decode_wav(wav_file(pcm, rate=16000))
    assert (audio.pcm, audio.rate) == (pcm, 16000)
    assert audio.source is not None and (audio.source.channels, audio.source.bits) == (1, 16)


def test_stereo_16_bit_is_averaged_to_mono() -> None:
    """Each stereo frame becomes the mean of its left and right samples."""
    audio = decode_wav(wav_file(pcm16([1000, 3000, -2000, -4000, 100, 100]), channels=2))
    assert audio.pcm == pcm16([2000, -3000, 100])


def test_8_bit_unsigned_becomes_signed_16_bit() -> None:
    """WAV 8-bit samples are unsigned: 128 is silence, 0 the most negative, 255 the most positive."""
    audio = decode_wav(wav_file(bytes([128, 0, 255, 129]), width=1))
    assert audio.pcm == pcm16([0, -32768, 32512, 256])


def test_stereo_8_bit_is_converted_and_averaged() -> None:
    """Stereo 8-bit combines both conversions."""
    audio = decode_wav(wav_file(bytes([128, 128, 0, 255, 192, 192]), width=1, channels=2))
    assert audio.pcm == pcm16([0, -128, 16384])


@pytest.mark.parametrize(("rate", "expected"), [(22050, 24000), (11025, 12000), (44100, 44100), (7000, 8000),
                                                (100000, 96000), (20000, 16000)])
def test_nearest_rate(rate: int, expected: int) -> None:
    """A file's rate maps to the closest AudioSocket rate (itself when it is one)."""
    assert nearest_rate(rate) == expected


def test_other_rates_are_resampled_to_the_nearest_audiosocket_rate() -> None:
    """One second at 22050 Hz becomes about one second at 24000 Hz."""
    audio = decode_wav(wav_file(pcm16([1000, -1000] * 11025), rate=22050))
    assert audio.rate == 24000
    assert abs(len(audio.pcm) // 2 - 24000) <= 2
    assert audio.duration == pytest.approx(1.0, abs=0.001)


def test_odd_sized_chunks_are_padded_and_skipped() -> None:
    """A LIST chunk of odd length before the data is skipped with its pad byte."""
    data = riff(fmt_chunk(), chunk(b"LIST", b"INFOx"), chunk(b"data", pcm16([5, 6])))
    assert decode_wav(data).pcm == pcm16([5, 6])


def test_data_chunk_longer_than_the_file_is_cut_to_what_is_there() -> None:
    """A recorder that never patched the header (size 0xFFFFFFFF) still plays what it wrote."""
    data = riff(fmt_chunk(), chunk(b"data", pcm16([1, 2, 3]), declared=0xFFFFFFFF))
    assert decode_wav(data).pcm == pcm16([1, 2, 3])


def test_a_trailing_partial_frame_is_dropped() -> None:
    """An odd byte at the end of 16-bit data is not a sample."""
    data = riff(fmt_chunk(), chunk(b"data", pcm16([7, 8]) + b"\x01"))
    fmt, raw = parse_wav(data)
    assert raw == pcm16([7, 8])


def test_wave_format_extensible_pcm_is_accepted() -> None:
    """WAVE_FORMAT_EXTENSIBLE with the PCM sub-format is plain PCM."""
    extra = struct.pack("<HHI", 22, 16, 4) + b"\x01\x00" + PCM_GUID_TAIL
    data = riff(fmt_chunk(tag=0xFFFE, extra=extra), chunk(b"data", pcm16([9])))
    assert decode_wav(data).pcm == pcm16([9])


@pytest.mark.parametrize(("data", "status", "words"), [
    (b"", 415, "not a WAV file"),
    (b"hello world, not audio", 415, "not a WAV file"),
    (b"RIFF\x00\x00", 400, "damaged"),
    (riff(form=b"AVI "), 415, "RIFF/WAVE"),
    (b"RF64" + b"\x00" * 40, 415, "RF64"),
    (riff(fmt_chunk(tag=3, bits=32), chunk(b"data", b"\x00" * 8)), 415, "IEEE float"),
    (riff(fmt_chunk(tag=7, bits=8), chunk(b"data", b"\xff" * 8)), 415, "μ-law"),
    (riff(fmt_chunk(bits=24), chunk(b"data", b"\x00" * 6)), 415, "24-bit"),
    (riff(fmt_chunk(channels=3), chunk(b"data", b"\x00" * 6)), 415, "3 channels"),
    (riff(fmt_chunk(tag=0xFFFE, extra=struct.pack("<HHI", 22, 16, 4) + b"\x03\x00" + PCM_GUID_TAIL),
          chunk(b"data", b"\x00" * 4)), 415, "IEEE float"),
    (riff(chunk(b"data", pcm16([1]))), 400, "before the fmt chunk"),
    (riff(fmt_chunk()), 400, "no data chunk"),
    (riff(chunk(b"LIST", b"abcd")), 400, "no fmt chunk"),
    (riff(chunk(b"fmt ", b"\x01\x00\x01\x00")), 400, "at least 16"),
    (riff(fmt_chunk(block_align=3), chunk(b"data", b"\x00" * 6)), 400, "block align"),
    (riff(fmt_chunk(rate=0), chunk(b"data", b"\x00" * 6)), 400, "sample rate"),
    (riff(fmt_chunk(), chunk(b"data", b"")), 400, "no audio"),
    (riff(fmt_chunk(), chunk(b"LIST", b"ab", declared=1000)), 400, "cut short"),
])
def test_bad_files_are_refused_with_a_clear_reason(data: bytes, status: int, words: str) -> None:
    """Each kind of unusable upload gets its own status (415 not WAV/unsupported, 400 damaged) and message."""
    with pytest.raises(WavError) as caught:
        decode_wav(data)
    assert caught.value.status == status
    assert words in caught.value.message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_any_bytes_give_audio_or_a_wav_error(noise: bytes, with_header: bool) -> None:
    """Whatever the body, decoding returns playable audio or raises WavError: never another exception (no 500)."""
    data = riff(fmt_chunk()) [:20] + noise if with_header else noise
    try:
        audio = decode_wav(data)
    except WavError as e:
        assert e.status in (400, 415) and e.message
    else:
        assert audio.rate in AUDIO_RATES and audio.pcm and len(audio.pcm) % 2 == 0


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=80), st.integers(min_value=0, max_value=255), st.integers(0, 90))
def test_damaged_copies_of_a_good_file_give_audio_or_a_wav_error(position: int, value: int, cut: int) -> None:
    """A valid file with one byte changed and its tail cut anywhere still never raises anything but WavError."""
    good = bytearray(riff(fmt_chunk(channels=2), chunk(b"LIST", b"abc"), chunk(b"data", pcm16(range(12)))))
    good[position % len(good)] = value
    data = bytes(good[: len(good) - cut])
    try:
        audio = decode_wav(data)
    except WavError as e:
        assert e.status in (400, 415) and e.message
    else:
        assert audio.rate in AUDIO_RATES and len(audio.pcm) % 2 == 0
