"""Tests for avr.admissions: the AudioSocket connections avr expects, each with a time to live."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from avr.admissions import Admissions
from avr.interfaces import IAdmission
from fakes import FakeAdmission

U = "935652e3-7c59-4edc-b17f-9646a9c2a265"


def test_the_fake_is_an_admission() -> None:
    verifyObject(IAdmission, FakeAdmission())


def test_take_returns_the_admission_once_in_any_case() -> None:
    """take() removes the expectation (upper-case UUIDs too) and cancels its timer; nothing expires."""
    clock, waiting = Clock(), FakeAdmission()
    admissions = Admissions(clock)
    admissions.expect(U.upper(), waiting, 10)
    assert U in admissions and admissions.get(U) is waiting and len(admissions) == 1
    assert admissions.take(U) is waiting
    assert admissions.take(U) is None and U not in admissions
    clock.advance(20)
    assert waiting.reasons == [] and clock.getDelayedCalls() == []


def test_an_expectation_expires_after_its_ttl() -> None:
    """Not taken in time: the admission hears TimeoutError once, and it is gone."""
    clock, waiting = Clock(), FakeAdmission()
    admissions = Admissions(clock)
    admissions.expect(U, waiting, 10)
    clock.advance(9.9)
    assert waiting.reasons == []
    clock.advance(0.1)
    [reason] = waiting.reasons
    assert reason.check(TimeoutError) and U in reason.getErrorMessage()
    assert admissions.take(U) is None and clock.getDelayedCalls() == []


def test_a_newer_expectation_replaces_the_older() -> None:
    """The replaced admission hears CancelledError; the newer one keeps its own time to live."""
    clock, first, second = Clock(), FakeAdmission(), FakeAdmission()
    admissions = Admissions(clock)
    admissions.expect(U, first, 10)
    clock.advance(5)
    admissions.expect(U, second, 10)
    assert len(first.reasons) == 1 and first.reasons[0].check(CancelledError)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(9)
    assert admissions.get(U) is second
    clock.advance(1)
    assert len(second.reasons) == 1 and len(first.reasons) == 1


def test_withdraw_only_removes_the_same_admission() -> None:
    """withdraw() is silent and leaves an admission that replaced the withdrawn one alone."""
    clock, first, second = Clock(), FakeAdmission(), FakeAdmission()
    admissions = Admissions(clock)
    admissions.expect(U, first, 10)
    assert admissions.withdraw(U, first) is True
    assert first.reasons == [] and clock.getDelayedCalls() == []
    admissions.expect(U, second, 10)
    assert admissions.withdraw(U, first) is False
    assert admissions.get(U) is second


def test_count_by_kind_and_clear() -> None:
    """count() per kind; clear() cancels every timer and tells every admission, once."""
    clock = Clock()
    admissions = Admissions(clock)
    a, b, c = FakeAdmission("registration"), FakeAdmission("playback"), FakeAdmission("registration")
    for uuid, admission in ((U, a), ("00000000-0000-0000-0000-000000000001", b),
                            ("00000000-0000-0000-0000-000000000002", c)):
        admissions.expect(uuid, admission, 10)
    assert admissions.count() == 3 and admissions.count("registration") == 2 and admissions.count("playback") == 1
    admissions.clear()
    assert len(admissions) == 0 and clock.getDelayedCalls() == []
    assert all(len(x.reasons) == 1 and x.reasons[0].check(CancelledError) for x in (a, b, c))
    clock.advance(20)
    assert all(len(x.reasons) == 1 for x in (a, b, c))


@pytest.mark.logs_errors(r"admission of .* failed to expire")
def test_an_admission_that_raises_on_expiry_is_logged(log_events: list[Any]) -> None:
    """A broken admission does not stop the others from being told at shutdown."""

    class Broken(FakeAdmission):
        def expired(self, reason: Failure) -> None:
            raise RuntimeError("bug")

    admissions = Admissions(Clock())
    fine = FakeAdmission()
    admissions.expect(U, Broken(), 10)
    admissions.expect("00000000-0000-0000-0000-000000000001", fine, 10)
    admissions.clear()
    assert len(fine.reasons) == 1
    assert [e["log_failure"].type for e in log_events if "log_failure" in e] == [RuntimeError]
