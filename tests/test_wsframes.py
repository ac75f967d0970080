"""
`avr.sts.wsframes`: client frames built by `masked_frame` read back by an independent RFC 6455 decoder and by autobahn,
and `leading_text_frames` taking exactly the complete final unmasked text frames a stream starts with.
"""

from __future__ import annotations

import struct

import pytest
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.xormasker import create_xor_masker
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.test import iosim

from avr.wsclock import disable_autobahn_timers
from avr.sts import wsframes
from avr.sts.wsframes import TEXT, MaskingKeys, leading_text_frames, masked_frame, xor_mask

LENGTHS = [0, 1, 125, 126, 127, 65535, 65536, 70000]


def decode_frame(data: bytes) -> tuple[dict, bytes]:
    """
    One RFC 6455 §5.2 frame from the start of ``data``, written independently of the code under test (unmasking by
    per-byte XOR): its fields, and the bytes after it.
    """
    b0, b1 = data[0], data[1]
    length = b1 & 0x7F
    pos = 2
    if length == 126:
        (length,) = struct.unpack("!H", data[2:4])
        pos = 4
    elif length == 127:
        (length,) = struct.unpack("!Q", data[2:10])
        pos = 10
    mask = None
    if b1 & 0x80:
        mask = data[pos:pos + 4]
        pos += 4
    body = data[pos:pos + length]
    assert len(body) == length, "frame truncated"
    if mask is not None:
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(body))
    fields = {
        "fin": bool(b0 & 0x80), "rsv": (b0 >> 4) & 0x7, "opcode": b0 & 0x0F, "mask": mask,
        "header_len": pos, "payload": body,
    }
    return fields, data[pos + length:]


def frame(payload: bytes, opcode: int = TEXT, fin: bool = True, rsv: int = 0, mask: bytes | None = None,
          length_form: int | None = None) -> bytes:
    """A server-style frame built by hand, including forms a correct sender never uses (``length_form`` 126/127 for
    short payloads)."""
    n = len(payload)
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if mask is not None else 0
    form = length_form or (n if n < 126 else 126 if n < 0x10000 else 127)
    if form < 126:
        header = bytes((first, mask_bit | n))
    elif form == 126:
        header = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, n)
    if mask is not None:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        header += mask
    return header + payload


def autobahn_pair():
    """A plain autobahn server and client joined in memory with the handshake done, autobahn's timers off."""
    clock = Clock()
    server_factory = WebSocketServerFactory()
    disable_autobahn_timers(server_factory)
    client_factory = WebSocketClientFactory("ws://localhost:9000/", reactor=clock)
    disable_autobahn_timers(client_factory)
    server = WebSocketServerProtocol()
    server.factory = server_factory
    client = WebSocketClientProtocol()
    client.factory = client_factory
    received: list[tuple[bytes, bool]] = []
    server.onMessage = lambda payload, is_binary: received.append((payload, is_binary))
    pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), clock=clock)
    assert server.state == server.STATE_OPEN
    return server, received, pump


def payload_of(n: int) -> bytes:
    """``n`` bytes that differ from position to position (a wrong mask offset shows)."""
    return bytes((i * 7 + 3) % 256 for i in range(n))


# -- masked_frame


@pytest.mark.parametrize("n", LENGTHS)
def test_masked_frame_decodes_independently(n):
    """Each length uses the minimal length form, FIN set, no RSV, mask bit and key present; unmasking gives the
    payload back (checked with a per-byte XOR decoder and with autobahn's own masker)."""
    payload = payload_of(n)
    mask = b"\x9a\x01\xff\x3c"
    data = masked_frame(TEXT, payload, mask)
    fields, rest = decode_frame(data)
    assert rest == b""
    assert fields["fin"] and fields["rsv"] == 0 and fields["opcode"] == TEXT
    assert fields["mask"] == mask
    assert fields["header_len"] == (2 if n < 126 else 4 if n < 65536 else 10) + 4
    assert fields["payload"] == payload
    assert create_xor_masker(mask, n).process(data[fields["header_len"]:]) == payload


@given(st.binary(max_size=2000), st.binary(min_size=4, max_size=4))
def test_both_maskers_mask_alike(payload, mask):
    """The pure-Python fallback masks exactly as websockets' C helper and as autobahn's masker do."""
    assert wsframes.apply_mask is not None, "websockets' C speedups are installed with avr (setup.cfg)"
    expected = create_xor_masker(mask, len(payload)).process(payload)
    assert xor_mask(payload, mask) == expected
    assert wsframes.apply_mask(payload, mask) == expected


@pytest.mark.parametrize("n", [0, 1, 320, 70000])
def test_masked_frame_without_the_c_helper(monkeypatch, n):
    """Where websockets has no C helper, `masked_frame` falls back to `xor_mask`, frame for frame the same."""
    payload = payload_of(n)
    with_helper = masked_frame(TEXT, payload, b"\x01\x02\x03\x04")
    monkeypatch.setattr(wsframes, "apply_mask", None)
    assert masked_frame(TEXT, payload, b"\x01\x02\x03\x04") == with_helper


def test_masked_frame_keeps_the_opcode():
    """The opcode given is the one framed (binary here), still final and masked."""
    fields, _ = decode_frame(masked_frame(0x2, b"\x00\x01", b"abcd"))
    assert (fields["fin"], fields["opcode"], fields["payload"]) == (True, 0x2, b"\x00\x01")


def test_masked_frame_with_zero_mask_is_the_payload_itself():
    """An all-zero key leaves the payload bytes unchanged on the wire (the XOR is aligned from the payload start)."""
    data = masked_frame(TEXT, b"hello", b"\x00\x00\x00\x00")
    assert data == b"\x81\x85\x00\x00\x00\x00hello"


@pytest.mark.parametrize("n", LENGTHS)
def test_autobahn_server_reads_masked_frames(n):
    """An autobahn server (which refuses unmasked or malformed client frames, and text that is not UTF-8) receives
    each frame as one message of its type."""
    server, received, pump = autobahn_pair()
    binary, text = payload_of(n), bytes(b"abcdefgh"[i % 8] for i in range(n))
    pump.clientIO.write(masked_frame(0x2, binary, b"\x01\x02\x03\x04") + masked_frame(TEXT, text, b"wxyz")
                        + masked_frame(TEXT, b"after", b"\xff\xfe\xfd\xfc"))
    pump.flush()
    assert received == [(binary, True), (text, False), (b"after", False)]
    assert server.state == server.STATE_OPEN


@given(st.binary(max_size=600), st.binary(min_size=4, max_size=4))
def test_masked_frame_unmasks_to_the_payload(payload, mask):
    """For any payload and key, the independent decoder gets the payload and key back, with nothing left over."""
    fields, rest = decode_frame(masked_frame(TEXT, payload, mask))
    assert (fields["payload"], fields["mask"], rest) == (payload, mask, b"")


# -- leading_text_frames


def test_complete_frames_are_all_taken():
    """Back-to-back complete text frames: all payloads, every byte used."""
    payloads = [b"", b"a", b"x" * 125, b"y" * 126, b"z" * 65535]
    data = b"".join(frame(p) for p in payloads)
    assert leading_text_frames(data) == (payloads, len(data))


def test_nothing_or_too_little():
    """Empty input and lone header bytes give no frame and use nothing."""
    assert leading_text_frames(b"") == ([], 0)
    assert leading_text_frames(b"\x81") == ([], 0)
    assert leading_text_frames(b"\x81\x7e\x00") == ([], 0)


def test_split_at_every_byte_of_a_two_frame_stream():
    """Cut anywhere: the frames wholly before the cut are returned and exactly their bytes are used."""
    first = frame(b'{"type":"audio","audio":"AAAA"}')
    second = frame(b"s" * 300)  # 16-bit length form: cuts inside the extended length too
    data = first + second
    for cut in range(len(data) + 1):
        got = leading_text_frames(data[:cut])
        if cut == len(data):
            assert got == ([first[2:], b"s" * 300], len(data)), cut
        elif cut >= len(first):
            assert got == ([first[2:]], len(first)), cut
        else:
            assert got == ([], 0), cut


def test_frames_produced_by_autobahn_are_taken():
    """What an autobahn server actually sends (messages of several sizes) is read back in full."""
    server, _, pump = autobahn_pair()
    payloads = [b"", b"{}", b"a" * 125, b"b" * 126, b"c" * 4000, b"d" * 65535]
    for p in payloads:
        server.sendMessage(p, isBinary=False)
    data = pump.serverIO.getOutBuffer()
    assert leading_text_frames(data) == (payloads, len(data))


def test_autobahn_fragments_are_left_alone():
    """A message autobahn fragments starts with a non-final text frame: nothing is taken."""
    server, _, pump = autobahn_pair()
    server.sendMessage(b"q" * 100, isBinary=False, fragmentSize=30)
    data = pump.serverIO.getOutBuffer()
    assert leading_text_frames(data) == ([], 0)


STOPPERS = {
    "ping": frame(b"hb", opcode=0x9),
    "pong": frame(b"hb", opcode=0xA),
    "close": frame(struct.pack("!H", 1000), opcode=0x8),
    "binary": frame(b"\x00\x01", opcode=0x2),
    "non-final text": frame(b"part", fin=False),
    "continuation": frame(b"part", opcode=0x0),
    "final continuation": frame(b"part", opcode=0x0, fin=True),
    "rsv1": frame(b"text", rsv=4),
    "rsv2": frame(b"text", rsv=2),
    "rsv3": frame(b"text", rsv=1),
    "masked": frame(b"text", mask=b"abcd"),
    "masked 16-bit": frame(b"m" * 200, mask=b"abcd"),
    "64-bit length": frame(b"L" * 65536),
    "64-bit length, short payload": frame(b"short", length_form=127),
}


@pytest.mark.parametrize("kind", sorted(STOPPERS))
def test_stops_at_any_other_frame(kind):
    """A text frame before it is taken; the other frame, and the text frame after it, are left to autobahn."""
    before, after = frame(b"before"), frame(b"after")
    data = before + STOPPERS[kind] + after
    assert leading_text_frames(data) == ([b"before"], len(before))
    assert leading_text_frames(STOPPERS[kind] + after) == ([], 0)


def test_merged_text_ping_text_returns_only_the_first():
    """Text, ping, text in one chunk: only the first text frame is taken."""
    first = frame(b'{"type":"audio","audio":"AQID"}')
    data = first + frame(b"", opcode=0x9) + frame(b'{"type":"audio","audio":"BAUG"}')
    assert leading_text_frames(data) == ([first[2:]], len(first))


def test_incomplete_frame_after_complete_ones():
    """A frame whose payload has not fully arrived ends the scan; the complete ones before it are taken."""
    first = frame(b"one")
    data = first + frame(b"t" * 500)[:-1]
    assert leading_text_frames(data) == ([b"one"], len(first))


def test_non_minimal_length_is_left_to_autobahn():
    """
    A 16-bit length below 126 breaks RFC 6455 §5.2 ("the minimal number of bytes MUST be used"), which autobahn
    fails as a protocol violation: the fast path must leave such a frame to autobahn, not accept it.
    """
    assert leading_text_frames(frame(b"short", length_form=126)) == ([], 0)


@given(st.lists(st.text(max_size=150).map(lambda t: t.encode("utf-8")), max_size=6), st.integers(min_value=0))
def test_any_text_frames_and_any_cut(payloads, cut_seed):
    """Any sequence of text frames cut at any point: the complete frames before the cut, in order."""
    frames = [frame(p) for p in payloads]
    data = b"".join(frames)
    cut = cut_seed % (len(data) + 1)
    got, used = leading_text_frames(data[:cut])
    expected, end = [], 0
    for p, f in zip(payloads, frames, strict=True):
        if end + len(f) > cut:
            break
        expected.append(p)
        end += len(f)
    assert (got, used) == (expected, end)


def test_text_that_is_not_utf8_is_left_to_autobahn():
    """A text frame whose payload is not UTF-8 stops the fast path (autobahn fails the connection with 1007)."""
    good, bad = frame(b'{"type":"audio","audio":""}'), frame(b"\xff\xfe")
    assert leading_text_frames(good + bad + good) == ([b'{"type":"audio","audio":""}'], len(good))


def test_masking_keys_are_four_fresh_bytes_drawn_a_block_at_a_time():
    """Keys are 4 bytes, consecutive slices of os.urandom blocks; a new block is drawn when one is used up."""
    keys = MaskingKeys(block=8)
    drawn = [keys.next() for _ in range(6)]
    assert all(len(k) == 4 for k in drawn)
    assert len(set(drawn)) > 1
    assert keys._pool[:4] == drawn[4] and keys._pool[4:] == drawn[5]  # the third block
