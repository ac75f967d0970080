"""
What the call-control REST API accepts: the fields of each JSON request body with their checks, and the checks of
ids in paths. This is the one place where wire input is validated, with asterisk-api's limits (dial timeout 1-120 s,
DTMF durations 40-10000 ms, up to 20 media URIs, recordings of 1-7200 s in the formats offered); the model behind
the routes keeps only its own invariants.

A body is checked by `validate` against a tuple of `Field`: wrong types and out-of-range values are a 400 listing
every problem; a field given as ``null`` counts as not given. Fields the route does not know are accepted and
ignored, as asterisk-api accepts them (its clients send some: the OpenClaw plugin's ``maxDuration``); `unknown_fields`
names them, so the route can tell the caller. A field may have aliases (other names clients send for it).

Each check carries the JSON Schema of what it accepts (`Check`), written next to the code that enforces it:
`body_schema` turns a tuple of fields into the request body schema of the OpenAPI document (`avr.http.openapi`).
Where a rule has no JSON Schema form, the schema says what it can and the description says the rest.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable

from attrs import frozen

from avr.control.records import HANGUP_REASONS as _REASON_CAUSES
from avr.control.records import IF_EXISTS, MEDIA_SCHEMES, RECORDING_NAME
from avr.http.json import ApiError, json_type
from avr.urls import is_sts_url

#: Recording formats offered (Asterisk's format names; one whose module is not loaded is refused by Asterisk: 422).
RECORD_FORMATS = ("wav", "wav16", "gsm", "ulaw", "alaw", "sln", "sln16", "g722")
#: ARI's hang-up reasons (``DELETE /channels/{id}?reason=``).
HANGUP_REASONS = tuple(_REASON_CAUSES)
#: Most media URIs in one ``play`` request.
MAX_MEDIA = 20

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
_ENDPOINT = re.compile(r"[A-Za-z][A-Za-z0-9_-]*/[^\s,\x00-\x1f\x7f]{1,250}")
# DTMF digits, plus Asterisk's pauses: w = 0.5 s, W = 1 s.
_DTMF = re.compile(r"[0-9A-Da-d*#wW]{1,100}")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_().:-]{0,79}")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


class _Invalid(ValueError):
    """One field's problem (the message follows ``<field>: ``)."""


@frozen
class Check:
    """A field's check (returns the value to use or raises `_Invalid`) and the JSON Schema of what it accepts."""

    run: Callable[[Any], Any]
    schema: dict[str, Any]

    def __call__(self, value: Any) -> Any:
        return self.run(value)


@frozen
class Field:
    """One allowed field of a JSON request body: ``check`` returns the value to use or raises `_Invalid`."""

    name: str
    check: Check
    required: bool = False
    #: Other names the field is accepted under (when ``name`` is not given).
    aliases: tuple[str, ...] = ()


def body_schema(fields: Iterable[Field], description: str = "") -> dict[str, Any]:
    """
    The JSON Schema of a body `validate` accepts for ``fields``: an object whose fields (and aliases) have their
    checks' schemas, ``null`` allowed where a field is optional (it counts as not given), other fields allowed.
    """
    properties: dict[str, Any] = {}
    required: list[str] = []
    for f in fields:
        for name in (f.name, *f.aliases):
            properties[name] = f.check.schema if f.required else nullable(f.check.schema)
        if f.required:
            required.append(f.name)
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    if description:
        schema["description"] = description
    return schema


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or ``null``."""
    if "type" not in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    result = {**schema, "type": [*types, "null"]}
    if "enum" in schema:
        result["enum"] = [*schema["enum"], None]
    return result


#: Python's ``\s`` (the characters of `str.isspace`, which `str.strip` strips), spelled out for a character class: a
#: JSON Schema pattern is an ECMA-262 regex, whose ``\s`` is another set (without \x1c-\x1f and \x85, with \ufeff).
_SPACE = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


def _pattern(regex: re.Pattern[str] | str, whole: bool = True) -> str:
    r"""
    A Python regex (``\s`` only inside character classes) as a JSON Schema pattern; ``whole``: one that must match
    the whole value (``fullmatch``), so anchored (a pattern matches anywhere).
    """
    source = (regex.pattern if isinstance(regex, re.Pattern) else regex).replace(r"\s", _SPACE)
    return f"^(?:{source})$" if whole else source


def validate(body: Any, fields: Iterable[Field]) -> dict[str, Any]:
    """
    Check ``body`` against ``fields``; a field given as ``null`` counts as not given, unknown fields are ignored.

    :return: the checked values of the fields present, under their names (not their aliases).
    :raises ApiError: 400 ``{"error": "Validation failed: ...", "details": [...]}`` listing every problem.
    """
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    details: list[str] = []
    values: dict[str, Any] = {}
    for f in fields:
        given = [(name, body[name]) for name in (f.name, *f.aliases) if body.get(name) is not None]
        if not given:
            if f.required:
                details.append(f"{f.name}: required")
            continue
        if len({json_key(value) for _, value in given}) > 1:
            details.append(f"{f.name}: given as {' and '.join(name for name, _ in given)} with different values")
            continue
        name, value = given[0]
        try:
            values[f.name] = f.check(value)
        except _Invalid as e:
            details.append(f"{name}: {e}")
    if details:
        raise ApiError(400, "Validation failed: " + "; ".join(details), details=details)
    return values


def unknown_fields(body: Any, fields: Iterable[Field]) -> list[str]:
    """The keys of ``body`` that none of ``fields`` (nor their aliases) reads: accepted, and ignored."""
    if not isinstance(body, dict):
        return []
    known = {name for f in fields for name in (f.name, *f.aliases)}
    return [str(key) for key in body if key not in known]


def json_key(value: Any) -> str:
    """A value in a form two equal JSON values share (to tell whether a field and its alias agree)."""
    return repr(value)


def _text(max_length: int, pattern: re.Pattern[str] | None = None, hint: str = "") -> Check:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise _Invalid(f"must be a string, not {json_type(value)}")
        if not value:
            raise _Invalid("must not be empty")
        if len(value) > max_length:
            raise _Invalid(f"must be at most {max_length} characters")
        if _CONTROL_CHARS.search(value):
            raise _Invalid("must not contain control characters")
        if pattern is not None and not pattern.fullmatch(value):
            raise _Invalid(hint)
        return value

    # The given patterns exclude control characters themselves.
    return Check(check, {"type": "string", "minLength": 1, "maxLength": max_length,
                         "pattern": _pattern(pattern) if pattern is not None else _NO_CONTROL_CHARS})


_NO_CONTROL_CHARS = "^[^\\x00-\\x1f\\x7f]*$"


def _integer(low: int, high: int) -> Check:
    def check(value: Any) -> int:
        if isinstance(value, float):
            # 30.0 is the JSON number 30 (JSON Schema's "integer" and JavaScript clients agree); 30.5 is not whole.
            if not value.is_integer():
                raise _Invalid(f"must be a whole number, got {value!r}")
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"must be a whole number, not {json_type(value)}")
        if not low <= value <= high:
            raise _Invalid(f"must be between {low} and {high}, got {value}")
        return value

    return Check(check, {"type": "integer", "minimum": low, "maximum": high})


def _check_boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false, not {json_type(value)}")
    return value


_boolean = Check(_check_boolean, {"type": "boolean"})


def _choice(choices: tuple[str, ...]) -> Check:
    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            raise _Invalid(f"must be one of {', '.join(choices)}")
        return value

    return Check(check, {"type": "string", "enum": list(choices)})


def _media_uri(value: Any) -> str:
    uri = _MEDIA_TEXT(value)
    if "," in uri or uri.strip() != uri:
        # ARI takes a playlist as one comma-separated value: a comma would split this URI.
        raise _Invalid(f"{uri!r}: a media URI must not contain commas or surrounding spaces")
    scheme, sep, rest = uri.partition(":")
    if not sep or scheme + sep not in MEDIA_SCHEMES or not rest:
        raise _Invalid(f"{uri!r} is not a media URI ({', '.join(MEDIA_SCHEMES)}...), e.g. 'sound:hello-world'")
    return uri


_MEDIA_TEXT = _text(1000)
_MEDIA_URI = {
    "type": "string", "minLength": 2, "maxLength": 1000,
    # A scheme, then no comma nor control character, and no space first or last.
    "pattern": _pattern("(?:" + "|".join(MEDIA_SCHEMES) + ")"
                        + r"[^,\s\x00-\x1f\x7f](?:[^,\x00-\x1f\x7f]*[^,\s\x00-\x1f\x7f])?"),
    "description": "A media URI (" + ", ".join(MEDIA_SCHEMES) + "...), e.g. sound:hello-world; no commas (ARI's "
                   "playlist separator), no surrounding spaces",
}


def _check_media(value: Any) -> list[str]:
    if isinstance(value, str):
        return [_media_uri(value)]
    if not isinstance(value, list):
        raise _Invalid(f"must be a media URI or a list of them, not {json_type(value)}")
    if not 1 <= len(value) <= MAX_MEDIA:
        raise _Invalid(f"must list 1 to {MAX_MEDIA} media URIs, got {len(value)}")
    uris = []
    for i, item in enumerate(value):
        try:
            uris.append(_media_uri(item))
        except _Invalid as e:
            raise _Invalid(f"item {i}: {e}") from None
    return uris


_media = Check(_check_media, {
    "type": ["string", "array"], **{k: v for k, v in _MEDIA_URI.items() if k != "description"},
    "items": _MEDIA_URI, "minItems": 1, "maxItems": MAX_MEDIA,
    "description": f"One media URI or a playlist of 1 to {MAX_MEDIA}, played in order. {_MEDIA_URI['description']}.",
})


def _check_variables(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _Invalid(f"must be an object of strings, not {json_type(value)}")
    if len(value) > 100:
        raise _Invalid("must have at most 100 entries")
    for name, text in value.items():
        if not _VARIABLE_NAME.fullmatch(name):
            raise _Invalid(f"{name!r} is not a channel variable name")
        if not isinstance(text, str):
            raise _Invalid(f"{name}: value must be a string, not {json_type(text)}")
        if len(text) > 1000 or "\x00" in text:
            raise _Invalid(f"{name}: value must be at most 1000 characters, without NUL")
    return dict(value)


_variables = Check(_check_variables, {
    "type": "object", "maxProperties": 100, "propertyNames": {"pattern": _pattern(_VARIABLE_NAME)},
    "additionalProperties": {"type": "string", "maxLength": 1000, "pattern": "^[^\\x00]*$"},
    "description": "Channel variables to set on the new channel, name to value",
})
_DTMF_TEXT = _text(100, _DTMF, "must contain only DTMF characters 0-9, A-D, *, # and the pauses w (0.5 s) and "
                               "W (1 s)")
_dtmf = Check(lambda value: _DTMF_TEXT(value).translate(str.maketrans("abcd", "ABCD")), _DTMF_TEXT.schema)


def _check_sts_url(value: Any) -> str:
    url = _STS_TEXT(value)
    if not is_sts_url(url):
        raise _Invalid("must be a ws://, wss://, http:// or https:// URL")
    return url


_STS_TEXT = _text(2000)
_sts_url = Check(_check_sts_url, {
    "type": "string", "maxLength": 2000,
    # A host name or IPv4 address (an IPv6 literal in brackets is accepted too), an optional port up to 65535.
    "pattern": _pattern(r"(?:wss?|https?)://[A-Za-z0-9._~%-]+"
                        r"(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4}))?"
                        r"(?:[/?#][^\s\x00-\x1f\x7f]*)?"),
    "description": "The agent's STS URL: ws://, wss://, http:// or https://, a host (an IPv6 literal in brackets is "
                   "accepted too), a port up to 65535",
})


def _check_payload(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(f"must be an object, not {json_type(value)}")
    return dict(value)


_payload = Check(_check_payload, {"type": "object", "description": "Call data for the agent (any JSON object)"})


#: The fields of an agent (``POST /calls/:id/agent``, and ``agent`` in ``POST /calls``): what ``POST /call`` takes.
AGENT = (
    Field("sts_url", _sts_url),
    Field("route", _text(80)),
    Field("payload", _payload),
)


def _check_agent(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(f"must be an object (sts_url, route, payload), not {json_type(value)}")
    try:
        agent = validate(value, AGENT)
    except ApiError as e:
        raise _Invalid("; ".join(e.extra.get("details") or [e.message])) from None
    if "sts_url" in agent and "route" in agent:
        raise _Invalid("give sts_url or route, not both")
    return agent


#: The JSON Schema of the agent rule `validate` cannot state: ``sts_url`` and ``route`` (not ``null``) exclude each
#: other.
ONE_OF_URL_AND_ROUTE = {"not": {"type": "object", "required": ["sts_url", "route"], "properties": {
    "sts_url": {"type": "string"}, "route": {"type": "string"}}}}
_agent = Check(_check_agent, {
    **body_schema(AGENT, "The AI agent: sts_url or route (an STS_ROUTES name), not both, and payload; all "
                         "optional (neither: STS_URL)"),
    **ONE_OF_URL_AND_ROUTE,
})


_ENDPOINT_HINT = "must be a dial string like 'PJSIP/1001' or 'PJSIP/5551234@trunk'"
_CALL_ID_HINT = "must be a call id"
_RECORDING_HINT = "must be 1-200 letters, digits, '.', '_' or '-', not starting with '.' or '-', without '..'"

ORIGINATE = (
    Field("endpoint", _text(256, _ENDPOINT, _ENDPOINT_HINT), required=True),
    Field("callerId", _text(128)),
    Field("timeout", _integer(1, 120)),
    Field("variables", _variables),
    Field("context", _text(80)),
    Field("extension", _text(80)),
    Field("priority", _integer(1, 100000)),
    Field("agent", _agent),
)
HANGUP = (Field("reason", _choice(HANGUP_REASONS)),)
PLAY = (Field("media", _media, required=True),)
RECORD = (
    Field("name", _text(200, RECORDING_NAME, _RECORDING_HINT)),
    Field("format", _choice(RECORD_FORMATS)),
    Field("maxDurationSeconds", _integer(1, 7200), aliases=("maxDuration",)),
    Field("beep", _boolean),
    Field("ifExists", _choice(IF_EXISTS)),
)
DTMF = (
    Field("dtmf", _dtmf, required=True),
    Field("between", _integer(0, 10000)),
    Field("duration", _integer(40, 10000)),
)
TRANSFER = (
    Field("endpoint", _text(256, _ENDPOINT, _ENDPOINT_HINT), required=True),
    Field("callerId", _text(128)),
    Field("timeout", _integer(1, 120)),
)
def _number(low: float, high: float) -> Check:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid(f"must be a number, not {json_type(value)}")
        if not low <= value <= high:
            raise _Invalid(f"must be between {low:g} and {high:g}, got {value:g}")
        return float(value)

    return Check(check, {"type": "number", "minimum": low, "maximum": high})


def _check_speech_text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Invalid("text is required")
    if len(value) > 5000:
        raise _Invalid("text must be 5000 characters or fewer")
    return value


_speech_text = Check(_check_speech_text, {"type": "string", "maxLength": 5000,
                                          "pattern": _pattern(r"[^\s]", whole=False),
                                          "description": "What to say (not only whitespace)"})


SPEAK = (
    Field("text", _speech_text, required=True),
    Field("voice", _text(100)),
    Field("language", _text(100)),
    Field("speed", _number(0.25, 4.0)),
)
CREATE_BRIDGE = (Field("name", _text(80)),)
BRIDGE_MEMBER = (Field("callId", _text(128, _ID, _CALL_ID_HINT), required=True),)
COPY_RECORDING = (Field("destinationName", _text(200, RECORDING_NAME, _RECORDING_HINT), required=True),)


def checked_id(value: str, what: str) -> str:
    """``value`` (a path segment naming a call, bridge or playback). :raises ApiError: 400, not an id."""
    if not _ID.fullmatch(value):
        raise ApiError(400, f"invalid {what} id: must be 1-128 letters, digits, '.', '_', ':' or '-'")
    return value


def checked_recording_name(value: str) -> str:
    """``value`` (a path segment naming a recording). :raises ApiError: 400, not a recording name."""
    if not RECORDING_NAME.fullmatch(value):
        raise ApiError(400, f"invalid recording name: {_RECORDING_HINT}")
    return value
