"""
STS URLs: validating them and carrying a call's metadata to the STS as query parameters (avr-core's ``POST /call``).
"""

from __future__ import annotations

import json
from typing import Any, Mapping
from urllib.parse import quote, urlsplit, urlunsplit

#: Schemes an STS URL may use: the AVR STS WebSocket protocol, or the legacy HTTP streaming mode.
STS_SCHEMES = ("ws", "wss", "http", "https")


def sts_url_with_params(base: str, payload: Mapping[str, Any]) -> str:
    """
    ``base`` with every key/value of ``payload`` appended as a query parameter, as avr-core does for ``POST /call``.

    ``ws://localhost:6030`` with ``{"from": "2000", "channel": "PJSIP/2000-00000013"}`` becomes
    ``ws://localhost:6030/?from=2000&channel=PJSIP%2F2000-00000013``.

    - A bare origin gains the ``/`` path (as a WHATWG ``URL`` serialises it); any other path is kept.
    - The base's own query parameters are kept, in place, before the appended ones; a name present in both appears
      twice (the receiver sees both).
    - Keys and values are percent-encoded as UTF-8 with nothing left unescaped but ``A-Z a-z 0-9 - . _ ~`` (so ``/``
      becomes ``%2F`` and a space ``%20``, which every query decoder reads back correctly; a ``+`` would not be).
    - Values: strings as they are; numbers as their JSON text (``5``, ``1.5``); booleans ``true``/``false``; ``null``
      an empty value (``key=``); objects and arrays as compact JSON (``{"a":1}``).
    - The fragment, if any, is kept at the end. Lone surrogates (JSON allows ``"\\ud800"``) are written as ``%3F``.

    :param base: an absolute URL (see `is_sts_url`).
    :param payload: the call metadata, in the order its parameters are appended.
    """
    parts = urlsplit(base)
    path = parts.path or "/"
    pairs = [f"{_encode(str(key))}={_encode(query_value(value))}" for key, value in payload.items()]
    query = "&".join([q for q in [parts.query.strip("&")] if q] + pairs)
    return urlunsplit((parts.scheme, parts.netloc, path, query, parts.fragment))


def routed_sts_url(override: str | None, base: str | None, payload: Mapping[str, Any]) -> str | None:
    """
    A call's STS URL as ``POST /call`` decides it: the ``call_initiated`` webhook's ``override`` if it gave one, else
    ``base``, with the payload appended (`sts_url_with_params`); ``None`` (the built-in echo agent) when neither.
    """
    chosen = override if override is not None else base
    return sts_url_with_params(chosen, payload) if chosen is not None else None


def query_value(value: Any) -> str:
    """
    The query-parameter text of one payload value (see `sts_url_with_params`).

    :raises TypeError: for a value JSON cannot represent.
    """
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    # bool before int is handled by json.dumps itself: True -> "true".
    return json.dumps(value, allow_nan=False)


def is_sts_url(text: object) -> bool:
    """
    Whether ``text`` is a usable STS URL: a string, ``ws``/``wss``/``http``/``https`` scheme, a host, a valid port, and
    no whitespace or control characters.
    """
    if not isinstance(text, str) or not text:
        return False
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return False
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return parts.scheme.lower() in STS_SCHEMES and bool(parts.hostname)


def _encode(text: str) -> str:
    # Lone surrogates (possible in JSON text) are not Unicode: they become "?" rather than an error.
    return quote(text, safe="", encoding="utf-8", errors="replace")
