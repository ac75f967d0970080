"""
AudioSocket framing, sans-IO: `FrameParser` turns received bytes into `Frame` values, `encode_frame` builds the bytes
of one message.

Wire format (``res/res_audiosocket.c``): ``kind:u8 | length:u16 big-endian | payload[length]``. Audio payloads are
PCM16 little-endian at the rate of their kind (but see `avr.audio.InboundAudio` for raw G.711 under kind 0x10).
"""

from __future__ import annotations

import uuid as _uuid
from enum import IntEnum

from attrs import frozen


class Kind(IntEnum):
    """AudioSocket message kinds (``enum ast_audiosocket_msg_kind``)."""

    HANGUP = 0x00
    UUID = 0x01
    DTMF = 0x03
    SLIN8 = 0x10
    SLIN12 = 0x11
    SLIN16 = 0x12
    SLIN24 = 0x13
    SLIN32 = 0x14
    SLIN44 = 0x15
    SLIN48 = 0x16
    SLIN96 = 0x17
    SLIN192 = 0x18
    ERROR = 0xFF


#: Sample rate (Hz) carried by each audio kind.
AUDIO_KIND_RATES: dict[int, int] = {
    Kind.SLIN8: 8000,
    Kind.SLIN12: 12000,
    Kind.SLIN16: 16000,
    Kind.SLIN24: 24000,
    Kind.SLIN32: 32000,
    Kind.SLIN44: 44100,
    Kind.SLIN48: 48000,
    Kind.SLIN96: 96000,
    Kind.SLIN192: 192000,
}

#: The sample rates (Hz) AudioSocket carries, ascending.
AUDIO_RATES: tuple[int, ...] = tuple(AUDIO_KIND_RATES.values())

_KIND_FOR_RATE = {rate: kind for kind, rate in AUDIO_KIND_RATES.items()}
_KNOWN_KINDS = frozenset(int(k) for k in Kind)

#: Largest payload a message can have (16-bit length field).
MAX_PAYLOAD = 0xFFFF

#: Default limit for received audio payloads: 15360 bytes, i.e. 40 ms at 192 kHz, 160 ms at 48 kHz, 0.96 s at 8 kHz.
#: Asterisk sends one frame per ``ast_read`` (10-60 ms in practice, 20 ms typical: 7680 bytes at slin192), and its own
#: translators refuse frames much past this size, so anything bigger is a corrupt or foreign stream.
DEFAULT_MAX_AUDIO_PAYLOAD = 8 * 1920

#: Limit for hang-up and error payloads. Asterisk never sends either; the spec gives 0xFF an optional 1-byte code and
#: 0x00 none, so a few bytes are tolerated and a long one means the stream is not AudioSocket.
MAX_CONTROL_PAYLOAD = 255

#: The complete hang-up message.
HANGUP_FRAME = b"\x00\x00\x00"

_HEADER = 3


def audio_kind_for_rate(rate: int) -> int:
    """
    The audio kind that carries slin at ``rate``.

    :raises ValueError: no kind carries that rate.
    """
    try:
        return _KIND_FOR_RATE[rate]
    except KeyError:
        raise ValueError(f"no AudioSocket audio kind for {rate} Hz (rates: {sorted(_KIND_FOR_RATE)})") from None


def is_audio_kind(kind: int) -> bool:
    """True for the audio kinds 0x10-0x18."""
    return kind in AUDIO_KIND_RATES


def kind_name(kind: int) -> str:
    """A readable name for ``kind``, e.g. ``SLIN16 (0x12)`` or ``0x02``."""
    try:
        return f"{Kind(kind).name} (0x{kind:02x})"
    except ValueError:
        return f"0x{kind:02x}"


@frozen
class Frame:
    """
    One AudioSocket message.

    :ivar kind: the kind byte (a `Kind` value when it came from `FrameParser`).
    :ivar payload: the payload bytes (may be empty).
    """

    kind: int
    payload: bytes


class FrameError(Exception):
    """
    The byte stream is not valid AudioSocket.

    :ivar reason: a readable explanation.
    :ivar frames: the valid frames the failing `FrameParser.feed` completed before the bad header, in order (so they
        can still be handled).
    """

    def __init__(self, reason: str, frames: list[Frame] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.frames: list[Frame] = frames if frames is not None else []


class FrameParser:
    """
    Incremental AudioSocket parser. Feed it received bytes, split or merged in any way; it returns the complete frames.

    Headers are checked as soon as they are complete, so a bad kind or length fails before its payload arrives. After
    a `FrameError` the parser is dead and every later `feed` raises again.

    Zero-length audio frames are returned as they are (Asterisk never sends them; callers decide what to do with
    them). Odd-length audio payloads are returned unchanged.

    :param max_payload: the largest audio payload accepted (1..65535).
    :param uuid_first: the stream must start with the UUID message (Asterisk's stream to the server does): any
        other first header fails as soon as its 3 bytes are in.
    """

    def __init__(self, max_payload: int = DEFAULT_MAX_AUDIO_PAYLOAD, uuid_first: bool = False) -> None:
        if not 1 <= max_payload <= MAX_PAYLOAD:
            raise ValueError(f"max_payload must be 1..{MAX_PAYLOAD}, got {max_payload}")
        self.max_payload = max_payload
        self._uuid_first = uuid_first
        self._pending = bytearray()
        # Bytes needed in _pending before parsing is worth trying (a header, then header + payload).
        self._need = _HEADER
        self._error: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._pending)

    def feed(self, data: bytes) -> list[Frame]:
        """
        Add received bytes.

        :return: the frames completed by ``data``, in order (often empty or one).
        :raises FrameError: the stream is invalid (unknown kind, bad length); its ``frames`` holds the valid frames
            before the bad header. Every later call raises too.
        """
        if self._error is not None:
            raise FrameError(f"parser already failed: {self._error.reason}")
        pending = self._pending
        if pending:
            pending += data
            if len(pending) < self._need:
                return []
            data = bytes(pending)
            pending.clear()
        frames: list[Frame] = []
        total = len(data)
        if self._uuid_first and total >= _HEADER:
            # Nothing was consumed yet: data starts with the stream's first header.
            self._uuid_first = False
            if data[0] != Kind.UUID:
                self._error = FrameError(f"first frame is {kind_name(data[0])}, not the UUID (0x01)")
                raise self._error
        pos = 0
        need = _HEADER
        try:
            while total - pos >= _HEADER:
                kind = data[pos]
                length = (data[pos + 1] << 8) | data[pos + 2]
                self._check(kind, length)
                end = pos + _HEADER + length
                if end > total:
                    need = end - pos
                    break
                frames.append(Frame(kind, data[pos + _HEADER:end]))
                pos = end
        except FrameError as e:
            self._error = e
            e.frames = frames
            raise
        if pos < total:
            pending += memoryview(data)[pos:]
        self._need = need
        return frames

    def _check(self, kind: int, length: int) -> None:
        if kind in AUDIO_KIND_RATES:
            if length > self.max_payload:
                raise FrameError(
                    f"{kind_name(kind)} audio payload of {length} bytes exceeds the limit of {self.max_payload}")
        elif kind == Kind.UUID:
            if length != 16:
                raise FrameError(f"UUID (0x01) payload must be 16 bytes, got {length}")
        elif kind == Kind.DTMF:
            if length != 1:
                raise FrameError(f"DTMF (0x03) payload must be 1 byte, got {length}")
        elif kind == Kind.HANGUP or kind == Kind.ERROR:
            if length > MAX_CONTROL_PAYLOAD:
                raise FrameError(f"{kind_name(kind)} payload of {length} bytes exceeds {MAX_CONTROL_PAYLOAD}")
        else:
            raise FrameError(f"unknown message kind 0x{kind:02x}")


def encode_frame(kind: int, payload: bytes) -> bytes:
    """
    The bytes of one message (header + payload) as one object, ready for a single ``write``.

    :raises ValueError: unknown kind, payload over 65535 bytes, or empty audio (Asterisk tears the call down on it).
    """
    length = len(payload)
    if kind not in _KNOWN_KINDS:
        raise ValueError(f"unknown AudioSocket kind 0x{kind:02x}")
    if length > MAX_PAYLOAD:
        raise ValueError(f"AudioSocket payload of {length} bytes exceeds {MAX_PAYLOAD}")
    if length == 0 and kind in AUDIO_KIND_RATES:
        raise ValueError("empty audio payload (Asterisk rejects zero-length audio)")
    return bytes((kind, length >> 8, length & 0xFF)) + payload


def encode_uuid(uuid_str: str | _uuid.UUID) -> bytes:
    """
    The 19-byte UUID message Asterisk sends first.

    :raises ValueError: ``uuid_str`` is not a UUID.
    """
    value = uuid_str if isinstance(uuid_str, _uuid.UUID) else _uuid.UUID(uuid_str)
    return b"\x01\x00\x10" + value.bytes


#: DTMF characters Asterisk sends in kind 0x03 frames, and the AVR STS protocol's ``dtmf_digit`` values.
DTMF_DIGITS = frozenset("0123456789*#ABCD")


def encode_dtmf(digit: str) -> bytes:
    """
    The DTMF message Asterisk sends when ``digit`` ends.

    :raises ValueError: ``digit`` is not one ASCII character.
    """
    if len(digit) != 1 or not digit.isascii():
        raise ValueError(f"a DTMF digit is one ASCII character, got {digit!r}")
    return b"\x03\x00\x01" + digit.encode("ascii")


def decode_uuid(payload: bytes) -> str:
    """The lower-case canonical string of a UUID frame's 16-byte payload."""
    return str(_uuid.UUID(bytes=bytes(payload)))
