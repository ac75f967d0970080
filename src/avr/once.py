"""A result that arrives once, for any number of waiters."""

from __future__ import annotations

from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

_PENDING = object()


@define(eq=False)
class Once:
    """
    A result (a value, or a `Failure`) that arrives once; each `wait` gets its own Deferred for it.

    Only the first `fire` counts: later ones are ignored (e.g. the first of several sessions, or a close reported
    twice).
    """

    _result: Any = field(default=_PENDING, init=False)
    _waiters: list[Deferred] = field(factory=list, init=False)

    def wait(self) -> Deferred:
        """A Deferred firing with the result (failing, for a `Failure`), at once if it has arrived."""
        d: Deferred = Deferred()
        if self._result is not _PENDING:
            self._deliver(d)
        else:
            self._waiters.append(d)
        return d

    def fire(self, result: Any) -> None:
        """Deliver ``result`` to every waiter, present and future (ignored if a result arrived already)."""
        if self._result is not _PENDING:
            return
        self._result = result
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            self._deliver(d)

    def _deliver(self, d: Deferred) -> None:
        if isinstance(self._result, Failure):
            d.errback(self._result)
        else:
            d.callback(self._result)
