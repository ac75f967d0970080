"""
Time in the fake Asterisk: the injected clock, the simulated wall clock that ids and timestamps use, and timers
owned by channels, playbacks, recordings and commands (cancelled together when their owner ends).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from avr.timestamps import iso_millis


class TimerOwner(Protocol):
    """Anything that keeps its pending timers in ``timers``."""

    timers: list[IDelayedCall]


def format_timestamp(wall: float) -> str:
    """
    An ARI timestamp: ``2026-11-21T11:53:16.769+0000`` (UTC, milliseconds, no colon in the offset; fact 15).

    :param wall: seconds since the epoch.
    """
    return iso_millis(wall).removesuffix("Z") + "+0000"


def http_date(wall: float) -> str:
    """
    The HTTP ``Date`` value for ``wall`` (``Sat, 21 Nov 2026 11:58:54 GMT``).

    :param wall: seconds since the epoch.
    """
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(int(wall)))


class AsteriskClock:
    """
    The fake's sense of time.

    :param clock: ``IReactorTime`` for all timing (``task.Clock`` in unit tests).
    :param wall_start: the wall-clock time (epoch seconds) shown at ``clock.seconds()`` now.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, wall_start: float) -> None:
        self.reactor = clock
        self._clock0 = clock.seconds()
        self._wall0 = wall_start

    def now(self) -> float:
        """The injected clock's time (for durations)."""
        return self.reactor.seconds()

    def wall(self) -> float:
        """The simulated wall-clock time (epoch seconds)."""
        return self._wall0 + (self.reactor.seconds() - self._clock0)

    def timestamp(self) -> str:
        """`wall` as an ARI timestamp."""
        return format_timestamp(self.wall())

    def later(self, owner: TimerOwner, delay: float, fn: Callable[..., Any], *args: Any) -> IDelayedCall:
        """Run ``fn(*args)`` in ``delay`` s, unless ``owner`` ends first (`cancel`); failures are logged."""
        call = self.reactor.callLater(delay, self._fire, owner, fn, args)
        owner.timers.append(call)
        return call

    def _fire(self, owner: TimerOwner, fn: Callable[..., Any], args: tuple) -> None:
        owner.timers[:] = [c for c in owner.timers if c.active()]
        try:
            fn(*args)
        except Exception:
            self.log.failure("Fake Asterisk timer failed")

    @staticmethod
    def cancel(owner: TimerOwner) -> None:
        """Cancel every pending timer of ``owner``."""
        for call in owner.timers:
            if call.active():
                call.cancel()
        owner.timers.clear()
