"""Wall-clock timestamps as avr writes them in JSON: ISO 8601, UTC, milliseconds."""

from __future__ import annotations

import time


def iso_millis(seconds: float) -> str:
    """
    ``seconds`` since the epoch as ISO 8601 UTC with milliseconds and ``Z``: ``2026-01-01T12:00:00.000Z``.

    Rounded to the nearest millisecond (``59.9996`` s is the next minute).
    """
    whole, millis = divmod(round(seconds * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"
