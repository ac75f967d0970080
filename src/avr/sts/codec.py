"""
Sans-IO codec of the AVR STS WebSocket protocol: JSON text frames, audio as base64 of PCM16LE.

Client (avr) to STS: ``init`` ``{uuid}``, ``audio`` ``{audio}``, ``dtmf_digit`` ``{digit}``, and ``action_result``
``{action, ok, error[, id]}`` answering each control message.
STS to client: ``audio`` ``{audio}``, ``interruption``, ``transcript`` ``{role, text}``, ``error`` ``{message}``, and
the control messages ``hangup`` ``{reason?}``, ``transfer`` ``{endpoint | context, extension, priority?; callerId?,
timeout?}`` and ``dtmf`` ``{digits}`` (each may carry an ``id``, echoed in its result); any other type must be
ignored by the client.

Encoders return UTF-8 bytes ready for ``sendMessage(payload, isBinary=False)``. Decoders return frozen values and raise
`StsProtocolError` for messages that cannot be understood.
"""

from __future__ import annotations

import binascii
import json
from base64 import b64decode
from binascii import a2b_base64, b2a_base64

from attrs import frozen

from avr.frames import DTMF_DIGITS
from avr.json_input import JsonInputError, decode_json


#: The roles a ``transcript`` message may carry.
TRANSCRIPT_ROLES = ("user", "agent")


class StsProtocolError(Exception):
    """
    A message that does not follow the AVR STS protocol.

    :ivar reason: what is wrong with it, for logs (never the whole message).
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@frozen
class AudioMessage:
    """Audio (PCM16LE at the STS sample rate, any length, possibly odd) in either direction."""

    pcm: bytes


@frozen
class Interruption:
    """The STS tells the client the caller barged in: queued agent audio must be dropped."""


@frozen
class Transcript:
    """A final transcript from the STS; ``role`` is ``user`` or ``agent``."""

    role: str
    text: str


@frozen
class StsErrorMessage:
    """The STS reports an error (``message`` is empty when the STS gave none)."""

    message: str


@frozen
class UnknownMessage:
    """A well-formed message of a type this codec does not know (e.g. ``tool_invocation``): to be ignored."""

    type: str


@frozen
class Init:
    """The client's first message: the call's UUID."""

    uuid: str


@frozen
class DtmfDigit:
    """A DTMF digit the caller pressed (client to STS)."""

    digit: str


@frozen
class HangupRequest:
    """The agent asks avr to end the call (``reason``: free text for logs and events, or ``None``)."""

    reason: str | None = None
    id: str | int | None = None
    action = "hangup"


@frozen
class TransferRequest:
    """
    The agent asks avr to transfer the caller: to ``endpoint`` (a dial string like ``PJSIP/1002``), or to
    ``extension`` in ``context`` (``priority``, when given). ``caller_id`` and ``timeout`` (seconds) as for the REST
    transfer. The values' limits are the REST API's, checked where the transfer is carried out.
    """

    endpoint: str | None = None
    context: str | None = None
    extension: str | None = None
    priority: int | None = None
    caller_id: str | None = None
    timeout: int | None = None
    id: str | int | None = None
    action = "transfer"


@frozen
class DtmfRequest:
    """The agent asks avr to send DTMF ``digits`` to the caller."""

    digits: str
    id: str | int | None = None
    action = "dtmf"


@frozen
class InvalidAction:
    """A control message of a known type whose fields are wrong: answered with a failed ``action_result``."""

    action: str
    error: str
    id: str | int | None = None


#: The control messages an agent may send: what avr carries out on the call.
ActionRequest = HangupRequest | TransferRequest | DtmfRequest

#: A control message as received: a request, or one that cannot be carried out as it is.
ActionMessage = HangupRequest | TransferRequest | DtmfRequest | InvalidAction

#: The control message types.
ACTIONS = ("hangup", "transfer", "dtmf")


@frozen
class ActionResult:
    """The outcome of one control message (``error`` is ``None`` when ``ok``), sent back as ``action_result``."""

    action: str
    ok: bool
    error: str | None = None
    id: str | int | None = None


#: What an STS sends to the client.
StsMessage = (
    AudioMessage | Interruption | Transcript | StsErrorMessage | HangupRequest | TransferRequest | DtmfRequest
    | InvalidAction | UnknownMessage
)

#: What a client sends to an STS.
ClientMessage = Init | AudioMessage | DtmfDigit | ActionResult | UnknownMessage

_AUDIO_PREFIX = b'{"type":"audio","audio":"'
_AUDIO_SUFFIX = b'"}'
_PREFIX_LEN = len(_AUDIO_PREFIX)
_MIN_COMPACT = _PREFIX_LEN + len(_AUDIO_SUFFIX)


def encode_init(uuid: str) -> bytes:
    """The ``init`` message for call ``uuid``."""
    return json.dumps({"type": "init", "uuid": uuid}, separators=(",", ":")).encode("utf-8")


def encode_audio(pcm: bytes) -> bytes:
    """
    An ``audio`` message carrying ``pcm``.

    Built by concatenation around the base64 text (which needs no JSON escaping): this runs for every 20 ms frame.
    """
    return _AUDIO_PREFIX + b2a_base64(pcm, newline=False) + _AUDIO_SUFFIX


def encode_dtmf(digit: str) -> bytes:
    """
    A ``dtmf_digit`` message.

    :raises ValueError: ``digit`` is not one of 0-9, ``*``, ``#``, A-D.
    """
    if digit not in DTMF_DIGITS:
        raise ValueError(f"not a DTMF digit: {digit!r}")
    return b'{"type":"dtmf_digit","digit":"' + digit.encode("ascii") + b'"}'


def encode_interruption() -> bytes:
    """An ``interruption`` message (STS side)."""
    return b'{"type":"interruption"}'


def encode_transcript(role: str, text: str) -> bytes:
    """A ``transcript`` message (STS side)."""
    return json.dumps({"type": "transcript", "role": role, "text": text}, separators=(",", ":")).encode("utf-8")


def encode_error(message: str | None) -> bytes:
    """An ``error`` message (STS side); ``None`` leaves ``message`` out, as some peers do."""
    body: dict[str, str] = {"type": "error"}
    if message is not None:
        body["message"] = message
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def encode_action_result(result: ActionResult) -> bytes:
    """An ``action_result`` message: ``{"type", "action", "ok", "error"}`` plus the request's ``id`` if it had one."""
    body: dict[str, object] = {"type": "action_result", "action": result.action, "ok": result.ok,
                               "error": result.error}
    if result.id is not None:
        body["id"] = result.id
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def encode_hangup(reason: str | None = None) -> bytes:
    """A ``hangup`` control message (STS side)."""
    body: dict[str, str] = {"type": "hangup"}
    if reason is not None:
        body["reason"] = reason
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def encode_transfer(**fields: object) -> bytes:
    """A ``transfer`` control message (STS side) with the given wire fields (``endpoint``, ``context``, ...)."""
    return json.dumps({"type": "transfer", **fields}, separators=(",", ":")).encode("utf-8")


def encode_dtmf_request(digits: str) -> bytes:
    """A ``dtmf`` control message (STS side)."""
    return json.dumps({"type": "dtmf", "digits": digits}, separators=(",", ":")).encode("utf-8")


def action_fields(request: ActionMessage) -> dict[str, object]:
    """The wire fields a control message gave (those not given left out), for logs and events."""
    fields: dict[str, object]
    if isinstance(request, HangupRequest):
        fields = {"reason": request.reason}
    elif isinstance(request, TransferRequest):
        fields = {"endpoint": request.endpoint, "context": request.context, "extension": request.extension,
                  "priority": request.priority, "callerId": request.caller_id, "timeout": request.timeout}
    elif isinstance(request, DtmfRequest):
        fields = {"digits": request.digits}
    else:
        fields = {}
    fields["id"] = request.id
    return {k: v for k, v in fields.items() if v is not None}


class _BadField(Exception):
    pass


def _optional(obj: dict, name: str, kind: type | tuple[type, ...], what: str) -> object:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise _BadField(f"{name} must be {what}")
    return value


def _action(kind: str, obj: dict) -> HangupRequest | TransferRequest | DtmfRequest | InvalidAction:
    """A control message's request, or `InvalidAction` naming what is wrong (never an exception: it is answered)."""
    request_id = obj.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, (str, int)):
        request_id = None
    try:
        if kind == "hangup":
            return HangupRequest(_optional(obj, "reason", str, "a string"), request_id)  # type: ignore[arg-type]
        if kind == "dtmf":
            digits = _optional(obj, "digits", str, "a string")
            if not digits:
                raise _BadField("digits (a string of DTMF digits) is required")
            return DtmfRequest(digits, request_id)  # type: ignore[arg-type]
        endpoint = _optional(obj, "endpoint", str, "a string")
        context = _optional(obj, "context", str, "a string")
        extension = _optional(obj, "extension", str, "a string")
        priority = _optional(obj, "priority", int, "a whole number")
        if endpoint is not None and (context is not None or extension is not None or priority is not None):
            raise _BadField("give either endpoint or context/extension, not both")
        if endpoint is None and (context is None or extension is None):
            raise _BadField("endpoint, or both context and extension, are required")
        return TransferRequest(
            endpoint, context, extension, priority,  # type: ignore[arg-type]
            _optional(obj, "callerId", str, "a string"),  # type: ignore[arg-type]
            _optional(obj, "timeout", int, "a whole number of seconds"),  # type: ignore[arg-type]
            request_id,
        )
    except _BadField as e:
        return InvalidAction(kind, str(e), request_id)


def _parse(payload: bytes | str) -> tuple[str, dict]:
    try:
        obj = decode_json(payload)
    except JsonInputError as e:
        raise StsProtocolError(f"message is not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise StsProtocolError(f"message is a JSON {type(obj).__name__}, not an object")
    kind = obj.get("type")
    if kind is None:
        raise StsProtocolError("message has no type")
    if not isinstance(kind, str):
        raise StsProtocolError(f"message type is a {type(kind).__name__}, not a string")
    return kind, obj


def _audio(obj: dict) -> AudioMessage:
    text = obj.get("audio")
    if not isinstance(text, str):
        raise StsProtocolError("audio message without an audio string" if text is None
                               else f"audio field is a {type(text).__name__}, not a string")
    # Tolerate missing padding; reject anything outside the base64 alphabet rather than silently skipping it.
    missing = -len(text) % 4
    if missing:
        text += "=" * missing
    try:
        return AudioMessage(b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        raise StsProtocolError("audio field is not valid base64") from None


def compact_audio(payload: bytes | str) -> bytes | None:
    """
    The PCM of an ``audio`` message in the compact form `encode_audio` writes (and most peers send), decoded without
    a JSON parser; ``None`` for anything else, which `decode_message` then parses in full.

    Only ``{"type":"audio","audio":"<strict base64>"}`` exactly qualifies: a string of nothing but base64 characters
    needs no JSON unescaping, so this is the same value the full parse would give.
    """
    if (type(payload) is not bytes or len(payload) < _MIN_COMPACT or not payload.startswith(_AUDIO_PREFIX)
            or not payload.endswith(_AUDIO_SUFFIX)):
        return None
    try:
        return a2b_base64(payload[_PREFIX_LEN:-2], strict_mode=True)
    except binascii.Error:
        return None


def decode_message(payload: bytes | str) -> StsMessage:
    """
    Decode one text frame from an STS.

    :raises StsProtocolError: not JSON, not an object, no string ``type``, or fields missing or invalid for the type.
    """
    pcm = compact_audio(payload)
    if pcm is not None:
        return AudioMessage(pcm)
    kind, obj = _parse(payload)
    if kind == "audio":
        return _audio(obj)
    if kind == "interruption":
        return Interruption()
    if kind == "transcript":
        role = obj.get("role")
        text = obj.get("text")
        if role not in TRANSCRIPT_ROLES:
            raise StsProtocolError(f"transcript role must be user or agent, got {role!r:.40}")
        if not isinstance(text, str):
            raise StsProtocolError("transcript without a text string")
        return Transcript(role, text)
    if kind == "error":
        message = obj.get("message")
        if message is None:
            message = ""
        elif not isinstance(message, str):
            message = json.dumps(message, separators=(",", ":"))
        return StsErrorMessage(message)
    if kind in ACTIONS:
        return _action(kind, obj)
    return UnknownMessage(kind)


def decode_client_message(payload: bytes | str) -> ClientMessage:
    """
    Decode one text frame from a client (what an STS receives); used by fakes and for checks.

    :raises StsProtocolError: as `decode_message`, for ``init`` without a string ``uuid`` and bad ``dtmf_digit``.
    """
    kind, obj = _parse(payload)
    if kind == "audio":
        return _audio(obj)
    if kind == "init":
        uuid = obj.get("uuid")
        if not isinstance(uuid, str) or not uuid:
            raise StsProtocolError("init without a uuid string")
        return Init(uuid)
    if kind == "dtmf_digit":
        digit = obj.get("digit")
        if not isinstance(digit, str) or digit not in DTMF_DIGITS:
            raise StsProtocolError(f"dtmf_digit with an invalid digit {digit!r:.20}")
        return DtmfDigit(digit)
    if kind == "action_result":
        action, ok, error, result_id = obj.get("action"), obj.get("ok"), obj.get("error"), obj.get("id")
        if not isinstance(action, str) or not isinstance(ok, bool) or not (error is None or isinstance(error, str)):
            raise StsProtocolError("action_result needs a string action, a boolean ok and a string or null error")
        return ActionResult(action, ok, error, result_id)
    return UnknownMessage(kind)
