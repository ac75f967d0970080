"""Fixtures shared by the test modules."""

from __future__ import annotations

from typing import Iterator

import pytest
from twisted.logger import LogEvent, globalLogPublisher


@pytest.fixture
def log_events() -> Iterator[list[LogEvent]]:
    """Every log event emitted during the test."""
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)
