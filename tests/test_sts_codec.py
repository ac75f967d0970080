"""The AVR STS message codec: encoders, decoders, and every way a message can be malformed."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from avr.sts.codec import (
    AudioMessage,
    DtmfDigit,
    Init,
    Interruption,
    StsErrorMessage,
    StsProtocolError,
    Transcript,
    UnknownMessage,
    decode_client_message,
    decode_message,
    encode_audio,
    encode_dtmf,
    encode_error,
    encode_init,
    encode_interruption,
    encode_transcript,
)

UUID = "935652e3-1a2b-4c3d-8e9f-0123456789ab"


def test_encode_init_is_the_documented_json():
    """``init`` is a JSON object with exactly type and uuid."""
    assert json.loads(encode_init(UUID)) == {"type": "init", "uuid": UUID}


def test_encode_audio_is_json_with_base64():
    """The fast-path ``audio`` encoding is valid JSON whose base64 decodes to the PCM."""
    pcm = bytes(range(256)) + b"\x00\xff" * 32
    message = json.loads(encode_audio(pcm))
    assert message == {"type": "audio", "audio": base64.b64encode(pcm).decode()}


@given(st.binary(max_size=2000))
def test_audio_round_trip(pcm):
    """Any PCM (odd lengths included) survives encode then decode, in both directions."""
    assert decode_message(encode_audio(pcm)) == AudioMessage(pcm)
    assert decode_client_message(encode_audio(pcm)) == AudioMessage(pcm)


@pytest.mark.parametrize("digit", list("0123456789*#ABCD"))
def test_dtmf_round_trip(digit):
    """Every DTMF digit encodes to ``dtmf_digit`` and decodes back."""
    assert json.loads(encode_dtmf(digit)) == {"type": "dtmf_digit", "digit": digit}
    assert decode_client_message(encode_dtmf(digit)) == DtmfDigit(digit)


@pytest.mark.parametrize("digit", ["", "55", "x", "\"", "e"])
def test_encode_dtmf_refuses_non_digits(digit):
    """A non-DTMF digit is a ValueError, not a malformed message on the wire."""
    with pytest.raises(ValueError):
        encode_dtmf(digit)


def test_init_round_trip():
    """The client decoder reads ``init`` back."""
    assert decode_client_message(encode_init(UUID)) == Init(UUID)


def test_sts_messages_decode():
    """Each STS message type decodes to its value; str and bytes payloads alike."""
    assert decode_message(encode_interruption()) == Interruption()
    assert decode_message('{"type":"interruption"}') == Interruption()
    assert decode_message(encode_transcript("user", "hi")) == Transcript("user", "hi")
    assert decode_message(encode_transcript("agent", "héllo ✓")) == Transcript("agent", "héllo ✓")
    assert decode_message(encode_error("quota exceeded")) == StsErrorMessage("quota exceeded")


def test_error_message_is_lenient():
    """``error`` may come without a message, or with a non-string one (kept as JSON text)."""
    assert decode_message(encode_error(None)) == StsErrorMessage("")
    assert decode_message(b'{"type":"error","message":null}') == StsErrorMessage("")
    assert decode_message(b'{"type":"error","message":{"code":42}}') == StsErrorMessage('{"code":42}')


def test_unknown_types_are_values_not_errors():
    """Peer extras such as ``tool_invocation`` decode to UnknownMessage, to be ignored."""
    payload = json.dumps({"type": "tool_invocation", "toolName": "x", "invocationId": "1", "parameters": {}})
    assert decode_message(payload) == UnknownMessage("tool_invocation")
    assert decode_client_message(b'{"type":"tool_result"}') == UnknownMessage("tool_result")


def test_extra_fields_are_ignored():
    """Fields the protocol does not define do not matter."""
    assert decode_message(b'{"type":"interruption","at":12}') == Interruption()
    assert decode_message(b'{"type":"audio","audio":"AAA=","seq":1}') == AudioMessage(b"\x00\x00")


def test_audio_without_padding_is_accepted():
    """Sloppy peers leave out base64 padding; the audio is still decoded."""
    assert decode_message(b'{"type":"audio","audio":"AAEC"}') == AudioMessage(b"\x00\x01\x02")
    assert decode_message(b'{"type":"audio","audio":"AAE"}') == AudioMessage(b"\x00\x01")
    assert decode_message(b'{"type":"audio","audio":""}') == AudioMessage(b"")


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"not json", "not JSON"),
        (b"", "not JSON"),
        (b"\xff\xfe{", "UTF-8"),
        (b"[1,2]", "list, not an object"),
        (b'"audio"', "str, not an object"),
        (b"{}", "no type"),
        (b'{"type":7}', "type is a int"),
        (b'{"type":"audio"}', "without an audio string"),
        (b'{"type":"audio","audio":12}', "audio field is a int"),
        (b'{"type":"audio","audio":"AA$A"}', "not valid base64"),
        (b'{"type":"audio","audio":"A"}', "not valid base64"),
        (b'{"type":"audio","audio":"AA AA"}', "not valid base64"),
        (b'{"type":"transcript","role":"system","text":"x"}', "role must be user or agent"),
        (b'{"type":"transcript","text":"x"}', "role must be user or agent"),
        (b'{"type":"transcript","role":"user"}', "without a text string"),
        (b'{"type":"transcript","role":"user","text":5}', "without a text string"),
    ],
)
def test_malformed_sts_messages(payload, reason):
    """Each malformed STS message raises StsProtocolError with a reason naming the problem."""
    with pytest.raises(StsProtocolError) as caught:
        decode_message(payload)
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b'{"type":"init"}', "init without a uuid"),
        (b'{"type":"init","uuid":""}', "init without a uuid"),
        (b'{"type":"init","uuid":5}', "init without a uuid"),
        (b'{"type":"dtmf_digit"}', "invalid digit"),
        (b'{"type":"dtmf_digit","digit":"55"}', "invalid digit"),
        (b'{"type":"audio","audio":"!!"}', "not valid base64"),
        (b"42", "not an object"),
    ],
)
def test_malformed_client_messages(payload, reason):
    """The client-side decoder rejects bad init, DTMF and audio messages."""
    with pytest.raises(StsProtocolError) as caught:
        decode_client_message(payload)
    assert reason in caught.value.reason


def test_protocol_error_does_not_echo_the_payload():
    """A huge bad message does not end up whole in the error text."""
    payload = b'{"type":"transcript","role":"' + b"x" * 10_000 + b'","text":"t"}'
    with pytest.raises(StsProtocolError) as caught:
        decode_message(payload)
    assert len(str(caught.value)) < 200
