"""Fixtures shared by the test modules."""

from __future__ import annotations

import gc
import re
import sys
from typing import Any, AsyncIterator, Iterator

import pytest
import pytest_twisted
from twisted.logger import (
    FilteringLogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsText,
    globalLogBeginner,
    globalLogPublisher,
)

#: Levels that count as "an error was logged" (``log.failure`` logs at ``critical``).
ERROR_LEVELS = frozenset({LogLevel.error, LogLevel.critical})

#: The marker of a test that expects logged errors: ``@pytest.mark.logs_errors(pattern, ...)``.
LOGS_ERRORS = "logs_errors"


def is_error(event: LogEvent) -> bool:
    """Whether ``event`` reports an error: logged at error or critical level, or a legacy ``log.err``."""
    return event.get("log_level") in ERROR_LEVELS or bool(event.get("isError"))


def unexpected_errors(errors: list[str], patterns: tuple[str, ...]) -> list[str]:
    """
    The problems with the errors a test logged, given the patterns it expects (empty when all is as expected).

    Every error must match one of ``patterns`` (``re.search`` over its text, traceback included; ``.`` matches a
    newline too), and every pattern must match at least one error.
    """
    problems = [f"unexpected error logged:\n{text}" for text in errors
                if not any(re.search(pattern, text, re.DOTALL) for pattern in patterns)]
    problems += [f"no logged error matches {pattern!r}" for pattern in patterns
                 if not any(re.search(pattern, text, re.DOTALL) for text in errors)]
    return problems


def pytest_configure(config: pytest.Config) -> None:
    """
    Start Twisted's logging: warnings and errors go to the test's (captured) stderr, and nothing else keeps events.

    Until logging starts, Twisted keeps the last 65,536 events in memory, and with them every object they name
    (``log_source`` among them), so a test's garbage would outlive it by thousands of tests.
    """
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(_to_stderr, [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)])],
        redirectStandardIO=False,
    )


def _to_stderr(event: LogEvent) -> None:
    sys.stderr.write(eventAsText(event, includeTimestamp=False) + "\n")


@pytest.fixture(autouse=True)
def no_logged_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """
    Fail the test if an error was logged while it ran, or a Deferred of it failed with nobody handling the failure.

    A test that expects logged errors names them: ``@pytest.mark.logs_errors("STS connection failed", ...)``; each
    pattern must then match a logged error, and every logged error must match a pattern.

    Twisted logs an unhandled Deferred failure only when the Deferred is garbage-collected, so teardown (the last of
    the test's fixtures to end) drops the test's fixture values and forces a collection. It then freezes what
    survived (it outlives the test: modules, caches), so that each collection only walks the objects of one test:
    ~0.5 ms instead of ~70 ms for the suite's whole heap. (An object that outlives its test is not checked.)
    """
    marker = request.node.get_closest_marker(LOGS_ERRORS)
    patterns: tuple[str, ...] = marker.args if marker is not None else ()
    if marker is not None and not patterns:
        pytest.fail(f"@pytest.mark.{LOGS_ERRORS} needs the patterns of the errors the test expects", pytrace=False)
    errors: list[str] = []

    def observe(event: LogEvent) -> None:
        if is_error(event):
            errors.append(eventAsText(event, includeTimestamp=False))

    globalLogPublisher.addObserver(observe)
    try:
        yield
        request.node.funcargs.clear()  # pytest would drop them only after the teardown
        gc.collect()
        gc.freeze()
    finally:
        globalLogPublisher.removeObserver(observe)
    problems = unexpected_errors(errors, patterns)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def log_events() -> Iterator[list[LogEvent]]:
    """Every log event emitted during the test."""
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events.append)


@pytest_twisted.async_yield_fixture
async def core_rig() -> AsyncIterator[Any]:
    """
    avr as `avr.service.build` wires it with its peers on loopback (tests/test_integration_core.py's ``Rig``: the test
    starts it with its settings), on the running reactor; stopped, and its ports closed, after the test.
    """
    from twisted.internet import reactor

    from tests.test_integration_core import Rig

    rig = Rig(reactor)
    try:
        yield rig
    finally:
        await rig.stop()
