"""
`TaskGroup`: the timers, background tasks and waits of the call-control model, all ended by one `TaskGroup.stop`.
"""

from __future__ import annotations

from typing import Any, Callable, Coroutine

from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure


@define(eq=False)
class TaskGroup:
    """
    Owns every timer, background coroutine and wait started through it, so that `stop` can end them all.

    :param clock: runs the timers and the timeouts of waits.
    """

    clock: IReactorTime
    #: Set by `stop`: the owner starts no new work after it.
    stopped: bool = field(default=False, init=False)
    _timers: set[IDelayedCall] = field(factory=set, init=False)
    _tasks: set[Deferred] = field(factory=set, init=False)
    _waits: set[Deferred] = field(factory=set, init=False)
    log = Logger()

    def later(self, delay: float, function: Callable[..., Any], *args: Any) -> IDelayedCall:
        """Call ``function(*args)`` after ``delay`` seconds (cancelled by `stop`)."""

        def run() -> None:
            self._timers.discard(timer)
            function(*args)

        timer = self.clock.callLater(delay, run)
        self._timers.add(timer)
        return timer

    def cancel(self, timer: IDelayedCall | None) -> None:
        """Cancel ``timer`` (one of `later`'s) if it is still pending; ``None`` is ignored."""
        if timer is not None:
            self._timers.discard(timer)
            if timer.active():
                timer.cancel()

    def spawn(self, coroutine: Coroutine[Any, Any, Any], what: str) -> Deferred:
        """Run ``coroutine`` in the background; its failure is logged (a cancellation is not)."""
        d = Deferred.fromCoroutine(coroutine)
        self._tasks.add(d)

        def done(result: Any) -> None:
            self._tasks.discard(d)
            if isinstance(result, Failure) and not result.check(CancelledError):
                self.log.failure("Call control: {what} failed", result, what=what)

        d.addBoth(done)
        return d

    def wait(self, d: Deferred, timeout: float | None = None) -> Deferred:
        """Track ``d`` (cancelled by `stop`), optionally with a timeout on the clock."""
        self._waits.add(d)
        if timeout is not None:
            d.addTimeout(timeout, self.clock)

        def untrack(result: Any) -> Any:
            self._waits.discard(d)
            return result

        return d.addBoth(untrack)

    def stop(self) -> None:
        """Cancel every timer and every pending wait; `stopped` is set. See `drained` for the background tasks."""
        self.stopped = True
        for timer in list(self._timers):
            if timer.active():
                timer.cancel()
        self._timers.clear()
        for wait in list(self._waits):
            if not wait.called:
                wait.cancel()

    def drained(self) -> Deferred:
        """A Deferred firing with ``None`` once the background tasks running now are done (their failures are
        logged by `spawn`, never passed on)."""
        tasks = list(self._tasks)
        if not tasks:
            return succeed(None)
        return DeferredList(tasks, consumeErrors=True).addCallback(lambda _: None)
