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
    compact_audio,
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


# -- compact_audio: the JSON-free path for the common audio message


def _full_path_audio(payload):
    """The audio an ``audio`` message carries by the general rules (JSON parse, base64 with padding tolerated), as
    an independent oracle; ``None`` if the message is not a valid audio message."""
    try:
        obj = json.loads(payload)
        text = obj["audio"]
        if obj.get("type") != "audio" or not isinstance(text, str):
            return None
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


@pytest.mark.parametrize("pcm", [b"", b"\x00", b"\x00\x01", b"\x00\x01\x02", b"\xff\xfb\xef" * 107, bytes(range(256))])
def test_compact_audio_reads_what_encode_audio_writes(pcm):
    """The compact form (what avr and most peers send) is decoded without JSON, for every padding length."""
    assert compact_audio(encode_audio(pcm)) == pcm


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param('{"type":"audio","audio":"AAEC"}', id="str"),
        pytest.param(bytearray(b'{"type":"audio","audio":"AAEC"}'), id="bytearray"),
        pytest.param(b'{"audio":"AAEC","type":"audio"}', id="other key order"),
        pytest.param(b'{"type": "audio", "audio": "AAEC"}', id="whitespace"),
        pytest.param(b'{"type":"audio","audio":"AAEC"}\n', id="trailing newline"),
        pytest.param(b' {"type":"audio","audio":"AAEC"}', id="leading space"),
        pytest.param(b'{"type":"audio","audio":"\\/\\/\\/\\/"}', id="escaped slash"),
        pytest.param(b'{"type":"audio","audio":"\\u0041AEC"}', id="unicode escape"),
        pytest.param(b'{"type":"audio","audio":"AAE"}', id="missing padding"),
        pytest.param(b'{"type":"audio","audio":"AAA=="}', id="excess padding"),
        pytest.param(b'{"type":"audio","audio":"AA$A"}', id="invalid char"),
        pytest.param(b'{"type":"audio","audio":"AA AA"}', id="space inside"),
        pytest.param(b'{"type":"audio","audio":"AAAA\\n"}', id="escaped newline"),
        pytest.param(b'{"type":"audio","audio":"AAEC","seq":1}', id="extra field"),
        pytest.param(b'{"type":"audio","audio":"AAEC"}"}', id="suffix twice"),
        pytest.param(b'{"type":"audio","audio":"}', id="26 bytes, prefix and suffix overlap"),
        pytest.param(b'{"type":"audio","audio":"', id="prefix only"),
        pytest.param(b'{"type":"interruption"}', id="other type"),
        pytest.param(b"", id="empty"),
    ],
)
def test_compact_audio_declines_every_other_form(payload):
    """Anything but exactly ``{"type":"audio","audio":"<strict base64>"}`` as bytes is left to the full parser."""
    assert compact_audio(payload) is None


def test_overlapping_prefix_and_suffix_is_not_audio():
    """``{"type":"audio","audio":"}`` starts with the prefix and ends with the suffix, sharing a quote; it is not
    JSON, and the full decoder says so (no empty audio made up)."""
    payload = b'{"type":"audio","audio":"}'
    assert len(payload) == 26
    assert compact_audio(payload) is None
    with pytest.raises(StsProtocolError, match="not JSON"):
        decode_message(payload)


@pytest.mark.parametrize(
    "payload, pcm",
    [
        ('{"type":"audio","audio":"AAEC"}', b"\x00\x01\x02"),
        (b'{"audio":"AAEC","type":"audio"}', b"\x00\x01\x02"),
        (b'{ "type" : "audio" , "audio" : "AAEC" }', b"\x00\x01\x02"),
        (b'{"type":"audio","audio":"\\/\\/\\/\\/"}', b"\xff\xff\xff"),
        (b'{"type":"audio","audio":"\\u0041AEC"}', b"\x00\x01\x02"),
        (b'{"type":"audio","audio":"AAE"}', b"\x00\x01"),
        (b'{"type":"audio","audio":"AAEC","seq":1}', b"\x00\x01\x02"),
        (b'{"type":"audio","audio":"AAEC"}\n', b"\x00\x01\x02"),
    ],
)
def test_decode_message_still_reads_the_general_forms(payload, pcm):
    """Every form the JSON path accepted before the compact path existed still decodes to the same audio."""
    assert decode_message(payload) == AudioMessage(pcm)


_B64ISH = "AQgw+/=\\\"} \n"


@given(
    st.one_of(
        st.binary(max_size=80),
        st.binary(max_size=300).map(encode_audio),
        st.binary(max_size=40).map(lambda body: b'{"type":"audio","audio":"' + body + b'"}'),
        st.text(alphabet=_B64ISH, max_size=14).map(lambda t: b'{"type":"audio","audio":"' + t.encode() + b'"}'),
        st.text(alphabet=_B64ISH, max_size=14).map(lambda t: b'{"type":"audio","audio":"' + t.encode()),
    )
)
def test_compact_audio_agrees_with_the_json_path(payload):
    """Whenever the compact path yields PCM, the full JSON path yields the same PCM (and decode_message returns it);
    a payload it declines decodes exactly as the JSON path says."""
    pcm = compact_audio(payload)
    expected = _full_path_audio(payload)
    if pcm is not None:
        assert list(json.loads(payload)) == ["type", "audio"]
        assert expected == pcm
        assert decode_message(payload) == AudioMessage(pcm)
    elif expected is not None:
        assert decode_message(payload) == AudioMessage(expected)
