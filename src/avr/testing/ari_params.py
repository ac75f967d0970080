"""
Request parameters as Asterisk's generated ARI parsers read them, and the error every fake operation raises to
answer with an ARI error response.
"""

from __future__ import annotations

import re
from typing import Any

#: Codec names ``formats`` and externalMedia accept (``ast_format_cache_get``).
CODECS = frozenset(
    "ulaw alaw gsm g722 g726 g729 ilbc lpc10 speex speex16 speex32 opus h264 vp8 testlaw slin slin12 slin16 "
    "slin24 slin32 slin44 slin48 slin96 slin192 siren7 siren14 g719 adpcm".split()
)


class AriHttpError(Exception):
    """
    An ARI error response.

    :ivar status: the HTTP status.
    :ivar body: the JSON body (``{"message": ...}`` unless given).
    """

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message
        self.body = body if body is not None else {"message": message}


def allocation_failed() -> AriHttpError:
    """Asterisk's ``ast_ari_response_alloc_failed``: 500 ``{"error":"Allocation failed"}`` (fact 11)."""
    return AriHttpError(500, "Allocation failed", {"error": "Allocation failed"})


def param_str(value: Any) -> str:
    """A parameter as a string (JSON bodies may carry numbers and booleans)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def param_int(value: Any, default: int) -> int:
    """C ``atoi`` on a parameter: leading digits, 0 for garbage; ``default`` when absent."""
    text = param_str(value).strip()
    if not text:
        return default
    match = re.match(r"[-+]?\d+", text)
    return int(match.group(0)) if match else 0


def split_args(value: str) -> list[str]:
    """``appArgs`` → StasisStart ``args`` (split on commas; empty → ``[]``)."""
    return value.split(",") if value else []


def check_codec(name: str) -> None:
    """400 unless ``name`` is a codec Asterisk knows."""
    if name not in CODECS:
        raise AriHttpError(400, f"Provided format ({name}) was not found")


def parse_caller_id(value: str) -> tuple[str, str]:
    """
    Split a ``callerId`` parameter (``"Name" <123>``, ``Name <123>``, ``123``) into ``(name, number)``.

    :param value: the parameter.
    """
    match = re.match(r'^\s*"?([^"<]*?)"?\s*<([^>]*)>\s*$', value)
    if match:
        return match.group(1).strip(), match.group(2).strip()
    value = value.strip()
    if re.fullmatch(r"[0-9*#+]+", value):
        return "", value
    return value, ""
