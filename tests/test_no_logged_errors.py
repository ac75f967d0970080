"""The autouse `no_logged_errors` fixture (tests/conftest.py), run in a separate pytest over a small test file."""

from __future__ import annotations

import pytest

from conftest import unexpected_errors

pytest_plugins = ["pytester"]

CASES = """
import pytest
from twisted.internet.defer import Deferred
from twisted.logger import Logger

log = Logger()


def test_error():
    log.error("it broke")


def test_failure():
    try:
        1 / 0
    except ZeroDivisionError:
        log.failure("it broke")


def test_warning():
    log.warn("just a warning")


def test_dropped_deferred():
    d = Deferred()
    d.cycle = d  # only a full collection frees it
    d.errback(RuntimeError("nobody handles this"))


def test_handled_deferred():
    d = Deferred()
    d.errback(RuntimeError("handled"))
    d.addErrback(lambda f: None)


@pytest.mark.logs_errors("it broke")
def test_expected():
    log.error("it broke: as expected")


@pytest.mark.logs_errors("it broke")
def test_another_error_too():
    log.error("it broke")
    log.error("something else")


@pytest.mark.logs_errors("it broke", "never logged")
def test_pattern_without_error():
    log.error("it broke")


@pytest.mark.logs_errors()
def test_no_patterns():
    pass
"""


def test_the_fixture_fails_tests_that_log_errors(pytester: pytest.Pytester, request: pytest.FixtureRequest,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Logged errors (log.error, log.failure) and a failed Deferred nobody handled fail a test, a warning does not; the
    marker lets through the errors its patterns name, and nothing else.
    """
    pytester.makeconftest((request.config.rootpath / "tests" / "conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    logs_errors: expected errors\n")
    pytester.makepyfile(test_cases=CASES)
    monkeypatch.setenv("COLUMNS", "200")  # whole lines in the short summary
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:twisted", "-rE")
    errored = {line.split("::")[1].split(" ")[0]: line.split(" - ", 1)[1]
               for line in result.outlines if line.startswith("ERROR test_cases.py::")}
    assert sorted(errored) == ["test_another_error_too", "test_dropped_deferred", "test_error", "test_failure",
                               "test_no_patterns", "test_pattern_without_error"]
    assert errored["test_error"] == "Failed: unexpected error logged:"
    assert errored["test_pattern_without_error"] == "Failed: no logged error matches 'never logged'"
    assert errored["test_no_patterns"].startswith("Failed: @pytest.mark.logs_errors needs the patterns")
    result.stdout.fnmatch_lines(["*Unhandled error in Deferred*", "*RuntimeError: nobody handles this*"])
    result.stdout.fnmatch_lines(["[[]test_cases#error[]] something else"])
    result.assert_outcomes(passed=8, errors=6)  # a teardown error follows a passed call


def test_unexpected_errors() -> None:
    """Each error needs a pattern and each pattern an error."""
    assert unexpected_errors([], ()) == []
    assert unexpected_errors(["a: boom"], ("boom",)) == []
    assert unexpected_errors(["a: boom"], ()) == ["unexpected error logged:\na: boom"]
    assert unexpected_errors(["a: boom"], ("boom", "bang")) == ["no logged error matches 'bang'"]
