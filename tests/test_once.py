"""`avr.once.Once`: a result that arrives once, for any number of waiters."""

from __future__ import annotations

from twisted.python.failure import Failure

from avr.once import Once


def test_waiters_before_and_after_the_result_all_get_it():
    """Each waiter, early or late, gets its own Deferred firing with the result."""
    once = Once()
    early: list = []
    once.wait().addCallback(early.append)
    once.wait().addCallback(early.append)
    assert early == []
    once.fire("open")
    late: list = []
    once.wait().addCallback(late.append)
    assert early == ["open", "open"]
    assert late == ["open"]


def test_a_failure_fails_every_waiter():
    """A `Failure` result errbacks each waiter (before and after it arrived) with it."""
    once = Once()
    seen: list = []
    once.wait().addErrback(seen.append)
    once.fire(Failure(ValueError("refused")))
    once.wait().addErrback(seen.append)
    assert [f.value.args for f in seen] == [("refused",), ("refused",)]


def test_only_the_first_result_counts():
    """Firing again changes nothing for waiters past or future."""
    once = Once()
    seen: list = []
    once.wait().addCallback(seen.append)
    once.fire(1)
    once.fire(2)
    once.wait().addCallback(seen.append)
    assert seen == [1, 1]


def test_callbacks_of_one_waiter_do_not_change_what_others_get():
    """A waiter's callback chain returning something else does not leak into the next waiter's result."""
    once = Once()
    first = once.wait()
    first.addCallback(lambda result: "changed")
    once.fire("session")
    seen: list = []
    once.wait().addCallback(seen.append)
    assert seen == ["session"]
