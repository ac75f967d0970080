"""`avr.timestamps.iso_millis`, the one timestamp format of avr's JSON (webhooks, REST records, /events)."""

from __future__ import annotations

from avr.control.records import iso
from avr.timestamps import iso_millis

NOON = 1767268800.0  # 2026-01-01T12:00:00Z


def test_iso_millis_is_utc_with_three_decimals_and_z() -> None:
    assert iso_millis(0) == "1970-01-01T00:00:00.000Z"
    assert iso_millis(NOON + 0.5) == "2026-01-01T12:00:00.500Z"
    assert iso_millis(NOON + 1.234) == "2026-01-01T12:00:01.234Z"


def test_iso_millis_rounds_to_the_nearest_millisecond() -> None:
    assert iso_millis(NOON + 59.9996) == "2026-01-01T12:01:00.000Z"
    assert iso_millis(NOON + 0.0014) == "2026-01-01T12:00:00.001Z"


def test_records_iso_keeps_none() -> None:
    """A record's moment that has not come (``answeredAt`` before the answer) stays ``null``."""
    assert iso(None) is None
    assert iso(NOON) == "2026-01-01T12:00:00.000Z"
