"""Argument checks of the call-control model's operations."""

from __future__ import annotations

import re
from typing import Any

from avr.control.errors import Invalid

_ENDPOINT = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*/[^\s,]+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_endpoint(endpoint: Any) -> str:
    """``endpoint`` if it looks like an ARI dial string (``TECH/resource``), else `Invalid`."""
    if not isinstance(endpoint, str) or len(endpoint) > 256 or not _ENDPOINT.match(endpoint):
        raise Invalid("endpoint must be a dial string like PJSIP/1001 or PJSIP/5551234@trunk")
    return endpoint


def check_text(name: str, value: Any, limit: int = 256) -> str | None:
    """``value`` if it is ``None`` or a short string without control characters, else `Invalid`."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit or _CONTROL.search(value):
        raise Invalid(f"{name} must be a string of at most {limit} characters without control characters")
    return value


def check_int(name: str, value: Any, low: int, high: int) -> int:
    """``value`` if it is a whole number in ``[low, high]``, else `Invalid`."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Invalid(f"{name} must be a whole number from {low} to {high}")
    return value
