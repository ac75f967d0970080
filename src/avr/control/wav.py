"""
RIFF/WAVE parsing for uploaded audio (``POST /calls/<id>/play/file``), sans-IO.

`decode_wav` turns the bytes of a PCM WAV file (mono or stereo, 8- or 16-bit, any sample rate) into mono PCM16LE at
an AudioSocket rate, resampling to the nearest one when the file's rate is not one. Anything else is refused with a
`WavError` that says what is wrong and carries the HTTP status to answer: 415 for a body that is not a WAV file or
uses an encoding we do not play (float, μ-law, 24/32-bit, more than two channels), 400 for a damaged file.
"""

from __future__ import annotations

import struct
import sys

from attrs import field, frozen

from avr.audio import audioop, resample
from avr.frames import AUDIO_RATES

#: WAVE_FORMAT_PCM and WAVE_FORMAT_EXTENSIBLE format tags.
_FORMAT_PCM = 0x0001
_FORMAT_EXTENSIBLE = 0xFFFE
#: The tail shared by every KSDATAFORMAT_SUBTYPE_* GUID (the first two bytes hold the format tag).
_SUBTYPE_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
_FORMAT_NAMES = {0x0003: "IEEE float", 0x0006: "A-law", 0x0007: "μ-law", 0x0002: "ADPCM", 0x0011: "IMA ADPCM",
                 0x0055: "MP3"}
#: Maps unsigned 8-bit samples to signed ones (x - 128 is x with its top bit flipped).
_UNSIGNED_TO_SIGNED = bytes(b ^ 0x80 for b in range(256))


class WavError(ValueError):
    """
    The upload cannot be played.

    :ivar status: HTTP status to answer (400 damaged file, 415 not WAV or unsupported encoding).
    :ivar message: readable reason.
    """

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


@frozen
class WavFormat:
    """The ``fmt `` chunk fields that matter for playback."""

    channels: int
    rate: int
    bits: int

    @property
    def block_align(self) -> int:
        """Bytes per sample frame (all channels)."""
        return self.channels * self.bits // 8


@frozen
class WavAudio:
    """Decoded audio, ready for an AudioSocket: mono PCM16LE at ``rate`` (one of `AUDIO_RATES`)."""

    pcm: bytes = field(repr=False)
    rate: int
    #: The file's own format, for logs.
    source: WavFormat | None = None

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.pcm) / 2 / self.rate


def parse_wav(data: bytes) -> tuple[WavFormat, bytes]:
    """
    Find the format and the sample data of a RIFF/WAVE file.

    A ``data`` chunk that claims more bytes than the file holds (files written by a recorder that never patched
    the header) is cut to what is there; a trailing partial sample frame is dropped.

    :return: the format and the raw sample bytes (whole frames, at least one).
    :raises WavError: see the module docstring.
    """
    if len(data) < 12:
        if len(data) >= 4 and data[:4] == b"RIFF":
            raise WavError(400, f"damaged WAV file: only {len(data)} bytes")
        raise WavError(415, f"not a WAV file: only {len(data)} bytes")
    if data[:4] == b"RF64":
        raise WavError(415, "RF64 (64-bit WAV) files are not supported; send a plain RIFF/WAVE file")
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WavError(415, "not a WAV file: the body must start with a RIFF/WAVE header")
    fmt: WavFormat | None = None
    samples: bytes | None = None
    offset = 12
    while offset + 8 <= len(data):
        chunk_id, size = struct.unpack_from("<4sI", data, offset)
        body_start = offset + 8
        body_end = body_start + size
        if chunk_id == b"data":
            if fmt is None:
                raise WavError(400, "damaged WAV file: the data chunk comes before the fmt chunk")
            samples = data[body_start:min(body_end, len(data))]
            break
        if body_end > len(data):
            raise WavError(400, f"damaged WAV file: the {_chunk_name(chunk_id)} chunk is cut short")
        if chunk_id == b"fmt ":
            fmt = _parse_fmt(data[body_start:body_end])
        offset = body_end + (size & 1)  # chunks are padded to an even length
    if fmt is None:
        raise WavError(400, "damaged WAV file: no fmt chunk")
    if samples is None:
        raise WavError(400, "damaged WAV file: no data chunk")
    whole = len(samples) - len(samples) % fmt.block_align
    if whole == 0:
        raise WavError(400, "the WAV file holds no audio")
    return fmt, samples[:whole]


def _chunk_name(chunk_id: bytes) -> str:
    return repr(chunk_id.decode("latin-1"))


def _parse_fmt(body: bytes) -> WavFormat:
    if len(body) < 16:
        raise WavError(400, f"damaged WAV file: fmt chunk of {len(body)} bytes (at least 16 needed)")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", body)
    if tag == _FORMAT_EXTENSIBLE:
        if len(body) < 40:
            raise WavError(400, "damaged WAV file: WAVE_FORMAT_EXTENSIBLE fmt chunk shorter than 40 bytes")
        valid_bits, _mask = struct.unpack_from("<HI", body, 18)
        subformat = body[24:40]
        if subformat[2:] != _SUBTYPE_TAIL:
            raise WavError(415, "unsupported WAV encoding (unknown WAVE_FORMAT_EXTENSIBLE sub-format); send PCM")
        tag = struct.unpack_from("<H", subformat)[0]
        if valid_bits not in (0, bits):
            raise WavError(415, f"unsupported WAV encoding: {valid_bits} valid bits in {bits}-bit samples; "
                                "send 8- or 16-bit PCM")
    if tag != _FORMAT_PCM:
        name = _FORMAT_NAMES.get(tag, f"format tag {tag:#06x}")
        raise WavError(415, f"unsupported WAV encoding: {name}; send 8- or 16-bit PCM")
    if bits not in (8, 16):
        raise WavError(415, f"unsupported WAV encoding: {bits}-bit PCM; send 8- or 16-bit PCM")
    if channels not in (1, 2):
        raise WavError(415, f"unsupported WAV file: {channels} channels; send mono or stereo")
    if not 1000 <= rate <= 384000:
        raise WavError(400, f"damaged WAV file: sample rate {rate} Hz")
    fmt = WavFormat(channels=channels, rate=rate, bits=bits)
    if block_align != fmt.block_align:
        raise WavError(400, f"damaged WAV file: block align {block_align}, expected {fmt.block_align}")
    return fmt


def to_mono16(fmt: WavFormat, samples: bytes) -> bytes:
    """Convert whole sample frames in ``fmt`` to mono PCM16LE (8-bit is unsigned in WAV; stereo is averaged)."""
    if fmt.bits == 8:
        pcm = audioop.lin2lin(samples.translate(_UNSIGNED_TO_SIGNED), 1, 2)
    else:
        pcm = samples if sys.byteorder == "little" else audioop.byteswap(samples, 2)
    if fmt.channels == 2:
        pcm = audioop.tomono(pcm, 2, 0.5, 0.5)
    if sys.byteorder == "big":
        pcm = audioop.byteswap(pcm, 2)
    return pcm


def nearest_rate(rate: int) -> int:
    """The AudioSocket rate closest to ``rate`` (``rate`` itself when it is one)."""
    return min(AUDIO_RATES, key=lambda r: (abs(r - rate), r))


def decode_wav(data: bytes) -> WavAudio:
    """
    Decode an uploaded WAV file for playback.

    :return: mono PCM16LE at the file's rate, or resampled to the nearest AudioSocket rate.
    :raises WavError: the file is damaged (400) or not a playable WAV (415).
    """
    fmt, samples = parse_wav(data)
    pcm = to_mono16(fmt, samples)
    rate = nearest_rate(fmt.rate)
    if rate != fmt.rate:
        pcm = resample(pcm, fmt.rate, rate)
    return WavAudio(pcm=pcm, rate=rate, source=fmt)
