"""Tests for avr.frames: AudioSocket framing."""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from avr.frames import (
    AUDIO_KIND_RATES,
    AUDIO_RATES,
    DEFAULT_MAX_AUDIO_PAYLOAD,
    HANGUP_FRAME,
    MAX_CONTROL_PAYLOAD,
    Frame,
    FrameError,
    FrameParser,
    Kind,
    audio_kind_for_rate,
    decode_uuid,
    encode_dtmf,
    encode_frame,
    encode_uuid,
    is_audio_kind,
)
from avr.testing.asterisk import fixtures_dir

UUID = "b5768917-0f8e-47b3-89df-6b961073e64d"

# (kind, payload) of every kind that is valid as received.
VALID = [
    (Kind.HANGUP, b""),
    (Kind.HANGUP, b"\x01"),
    (Kind.UUID, uuid.UUID(UUID).bytes),
    (Kind.DTMF, b"#"),
    *[(kind, b"\x01\x02" * 160) for kind in AUDIO_KIND_RATES],
    (Kind.ERROR, b""),
    (Kind.ERROR, b"\x01"),
]


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    """Cut ``data`` at the given offsets."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@pytest.mark.parametrize("kind,payload", VALID, ids=lambda v: repr(v)[:20])
def test_every_kind_round_trips(kind: int, payload: bytes) -> None:
    """Each kind encodes to a 3-byte big-endian header + payload and parses back to the same frame."""
    data = encode_frame(kind, payload)
    assert data[:3] == bytes((kind, len(payload) >> 8, len(payload) & 0xFF))
    assert data[3:] == payload
    assert FrameParser().feed(data) == [Frame(kind, payload)]


def test_kind_table() -> None:
    """The kind codes and rates are those of res_audiosocket.h (0x11 = 12 kHz, 0x12 = 16 kHz)."""
    assert [int(k) for k in Kind] == [0x00, 0x01, 0x03, *range(0x10, 0x19), 0xFF]
    assert AUDIO_KIND_RATES == {0x10: 8000, 0x11: 12000, 0x12: 16000, 0x13: 24000, 0x14: 32000, 0x15: 44100,
                                0x16: 48000, 0x17: 96000, 0x18: 192000}
    assert audio_kind_for_rate(16000) == 0x12
    assert is_audio_kind(0x18) and not is_audio_kind(0x03)
    with pytest.raises(ValueError, match="22050"):
        audio_kind_for_rate(22050)


def test_rate_tables_derive_from_the_kind_table() -> None:
    """The sample rates other modules use (settings, externalMedia formats, WAV resampling) are the kinds' rates."""
    from avr.config import AUDIO_RATES as SETTING_RATES
    from avr.control.records import SLIN_FORMATS

    assert AUDIO_RATES == (8000, 12000, 16000, 24000, 32000, 44100, 48000, 96000, 192000)
    assert SETTING_RATES == AUDIO_RATES
    assert SLIN_FORMATS == {8000: "slin", 12000: "slin12", 16000: "slin16", 24000: "slin24", 32000: "slin32",
                            44100: "slin44", 48000: "slin48", 96000: "slin96", 192000: "slin192"}


def test_uuid_and_dtmf_helpers() -> None:
    """encode_uuid makes Asterisk's 19-byte first message; decode_uuid gives the lower-case string back."""
    data = encode_uuid(UUID.upper())
    assert len(data) == 19 and data[:3] == b"\x01\x00\x10"
    assert decode_uuid(data[3:]) == UUID
    assert encode_dtmf("5") == b"\x03\x00\x015"
    with pytest.raises(ValueError):
        encode_dtmf("12")
    with pytest.raises(ValueError):
        encode_uuid("not-a-uuid")


def test_hangup_frame_constant() -> None:
    """HANGUP_FRAME is the 3-byte 0x00 message."""
    assert HANGUP_FRAME == encode_frame(Kind.HANGUP, b"") == b"\x00\x00\x00"


def test_encode_refuses_empty_audio_oversize_and_unknown_kinds() -> None:
    """Asterisk tears a call down on empty audio; 65535 is the length field's limit."""
    with pytest.raises(ValueError, match="empty"):
        encode_frame(Kind.SLIN8, b"")
    with pytest.raises(ValueError, match="65535"):
        encode_frame(Kind.SLIN8, bytes(65536))
    assert len(encode_frame(Kind.SLIN8, bytes(65535))) == 65538
    with pytest.raises(ValueError, match="0x02"):
        encode_frame(0x02, b"")


def test_merged_frames_in_one_chunk() -> None:
    """Several frames in one read come out in order (the UUID and first audio can share a segment)."""
    frames = [Frame(k, p) for k, p in VALID]
    data = b"".join(encode_frame(f.kind, f.payload) for f in frames)
    assert FrameParser().feed(data) == frames


def test_byte_by_byte() -> None:
    """Feeding one byte at a time yields the same frames, each as soon as its last byte arrives."""
    frames = [Frame(k, p) for k, p in VALID]
    parser = FrameParser()
    out: list[Frame] = []
    for f in frames:
        data = encode_frame(f.kind, f.payload)
        for i in range(len(data)):
            got = parser.feed(data[i:i + 1])
            assert got == ([f] if i == len(data) - 1 else [])
            out.extend(got)
    assert out == frames
    assert parser.buffered == 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(VALID), min_size=1, max_size=12),
    st.lists(st.integers(min_value=0, max_value=5000), max_size=30),
)
def test_any_split_gives_the_same_frames(chosen: list[tuple[int, bytes]], cuts: list[int]) -> None:
    """However the stream is cut into reads, the parser returns exactly the frames that were encoded."""
    data = b"".join(encode_frame(k, p) for k, p in chosen)
    parser = FrameParser()
    out: list[Frame] = []
    for chunk in split_at(data, cuts):
        out.extend(parser.feed(chunk))
    assert out == [Frame(k, p) for k, p in chosen]
    assert parser.buffered == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=400), st.lists(st.integers(min_value=0, max_value=400), max_size=10))
def test_garbage_never_crashes_otherwise(data: bytes, cuts: list[int]) -> None:
    """Arbitrary bytes either parse into valid frames or raise FrameError; nothing else escapes."""
    parser = FrameParser()
    try:
        for chunk in split_at(data, cuts):
            for frame in parser.feed(chunk):
                assert frame.kind in {int(k) for k in Kind}
    except FrameError as e:
        assert e.reason


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=255).filter(lambda k: k not in {int(x) for x in Kind}))
def test_unknown_kind_fails_at_the_header(kind: int) -> None:
    """An unknown kind (e.g. the Go library's 0x02 silence) is refused as soon as the header is complete."""
    parser = FrameParser()
    with pytest.raises(FrameError, match=f"unknown message kind 0x{kind:02x}"):
        parser.feed(bytes((kind, 0x00, 0x05)))  # payload not yet there


def test_garbage_text_is_refused() -> None:
    """An HTTP request sent to the AudioSocket port fails at once ('G' = 0x47)."""
    with pytest.raises(FrameError, match="0x47"):
        FrameParser().feed(b"GET / HTTP/1.1\r\n\r\n")


@pytest.mark.parametrize("kind,length,message", [
    (Kind.UUID, 15, "16 bytes, got 15"),
    (Kind.UUID, 17, "16 bytes, got 17"),
    (Kind.DTMF, 0, "1 byte, got 0"),
    (Kind.DTMF, 2, "1 byte, got 2"),
    (Kind.SLIN8, DEFAULT_MAX_AUDIO_PAYLOAD + 1, "exceeds the limit"),
    (Kind.SLIN192, 65535, "exceeds the limit"),
    (Kind.HANGUP, MAX_CONTROL_PAYLOAD + 1, "exceeds"),
    (Kind.ERROR, 1000, "exceeds"),
])
def test_bad_lengths(kind: int, length: int, message: str) -> None:
    """Wrong UUID/DTMF sizes and oversize payloads are refused from the header alone."""
    with pytest.raises(FrameError, match=message):
        FrameParser().feed(bytes((kind, length >> 8, length & 0xFF)))


@pytest.mark.parametrize("kind", [Kind.SLIN8, Kind.SLIN16, Kind.SLIN192, Kind.DTMF, Kind.HANGUP, Kind.ERROR])
def test_uuid_first_refuses_any_other_first_header_when_it_is_complete(kind: int) -> None:
    """
    With ``uuid_first`` a first header of another kind fails when its third byte arrives, before its payload (which
    may never come); the UUID itself, and anything after it, parse as usual.
    """
    length = {Kind.DTMF: 1, Kind.HANGUP: 0, Kind.ERROR: 1}.get(kind, 320)
    parser = FrameParser(uuid_first=True)
    assert parser.feed(bytes((kind,))) == []
    assert parser.feed(bytes((length >> 8,))) == []
    with pytest.raises(FrameError, match=rf"first frame is \w+ \(0x{kind:02x}\), not the UUID \(0x01\)") as caught:
        parser.feed(bytes((length & 0xFF,)))
    assert caught.value.frames == []
    with pytest.raises(FrameError, match="already failed"):
        parser.feed(encode_uuid("b5768917-0f8e-47b3-89df-6b961073e64d"))
    parser = FrameParser(uuid_first=True)
    uuid_frame = encode_uuid("b5768917-0f8e-47b3-89df-6b961073e64d")
    assert parser.feed(uuid_frame[:3]) == []
    assert parser.feed(uuid_frame[3:] + bytes((kind, length >> 8, length & 0xFF)) + bytes(length)) == [
        Frame(Kind.UUID, uuid_frame[3:]), Frame(kind, bytes(length))]
    assert FrameParser().feed(bytes((kind, length >> 8, length & 0xFF)) + bytes(length)) == [Frame(kind, bytes(length))]


def test_audio_limit_is_configurable_and_inclusive() -> None:
    """max_payload is the largest accepted audio payload."""
    parser = FrameParser(max_payload=640)
    assert parser.feed(encode_frame(Kind.SLIN16, bytes(640))) == [Frame(Kind.SLIN16, bytes(640))]
    with pytest.raises(FrameError):
        parser.feed(encode_frame(Kind.SLIN16, bytes(641)))
    with pytest.raises(ValueError):
        FrameParser(max_payload=0)


def test_dead_after_error() -> None:
    """After a FrameError every feed raises, even with valid data."""
    parser = FrameParser()
    with pytest.raises(FrameError):
        parser.feed(b"\x02\x00\x00")
    with pytest.raises(FrameError, match="already failed: unknown message kind 0x02"):
        parser.feed(HANGUP_FRAME)


def test_frames_before_an_error_travel_with_it() -> None:
    """A chunk with valid frames followed by garbage raises, and the error carries the valid frames."""
    parser = FrameParser()
    parser.feed(b"\x10\x00")
    with pytest.raises(FrameError) as caught:
        parser.feed(b"\x02ab" + encode_frame(Kind.DTMF, b"1") + b"\x02\x00\x00" + encode_frame(Kind.DTMF, b"2"))
    assert caught.value.frames == [Frame(Kind.SLIN8, b"ab"), Frame(Kind.DTMF, b"1")]
    assert "0x02" in caught.value.reason


def test_zero_length_and_odd_length_audio_are_returned() -> None:
    """Empty audio is valid framing (the caller decides to ignore it); odd lengths are kept as they are."""
    data = b"\x10\x00\x00" + b"\x10\x00\x03abc"
    assert FrameParser().feed(data) == [Frame(Kind.SLIN8, b""), Frame(Kind.SLIN8, b"abc")]


def test_whole_frame_read_returns_payload_without_buffering() -> None:
    """The common case (one frame per read) leaves nothing buffered and yields an exact payload."""
    parser = FrameParser()
    payload = bytes(range(256)) + bytes(64)
    (frame,) = parser.feed(encode_frame(Kind.SLIN8, payload))
    assert frame.payload == payload and type(frame.payload) is bytes
    assert parser.buffered == 0


def fixture_names() -> list[str]:
    """The capture names (``<name>.bin`` files)."""
    return sorted(p.stem for p in fixtures_dir().glob("*.bin"))


@pytest.mark.parametrize("name", fixture_names())
def test_fixture_bins_parse_to_their_json_counts(name: str) -> None:
    """Every real capture parses completely, with the frame count, kinds and lengths its .json lists."""
    directory = fixtures_dir()
    raw = (directory / f"{name}.bin").read_bytes()
    meta = json.loads((directory / f"{name}.json").read_text())
    parser = FrameParser()
    frames = parser.feed(raw)
    assert parser.buffered == 0
    assert len(frames) == meta["frame_count"] == len(meta["frames"])
    counted: dict[str, int] = {}
    for frame in frames:
        key = f"0x{frame.kind:02x}:{len(frame.payload)}"
        counted[key] = counted.get(key, 0) + 1
    assert counted == meta["frames_by_kind_and_length"]
    assert decode_uuid(frames[0].payload) == meta["uuid_in_0x01_frame"]
