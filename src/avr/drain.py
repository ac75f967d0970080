"""
Graceful drain: what avr does between SIGTERM and exit.

twistd stops the reactor on SIGTERM, which stops avr's service tree (`avr.service.AvrService`); before any of its
services stops, `Drain.run` has avr refuse new calls (`avr.calls.CallManager.draining`: a new AudioSocket call gets
a hang-up frame, ``POST /call`` and ARI originates answer 503, ``GET /ready`` answers 503) and waits for the live
calls to end, at most ``DRAIN_TIMEOUT`` seconds. The listeners stay open meanwhile: ``/health``, ``/ready``,
``/events`` and the call-control routes keep answering, and the media legs of live ARI calls (uploaded audio,
capture) can still connect. Then the services stop as before: the calls still live are hung up, each with its
``call_ended`` webhook and ``/events`` event.
"""

from __future__ import annotations

from attrs import define
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from avr.calls import CallManager


@define(eq=False)
class Drain:
    """
    Refuses new calls and waits for the live ones to end.

    :param calls: the live calls, and where new ones are refused.
    :param clock: times the wait.
    :param timeout: ``DRAIN_TIMEOUT``: seconds the live calls may go on (0: not at all).
    """

    calls: CallManager
    clock: IReactorTime
    timeout: float
    #: ``clock.seconds()`` when the drain began, ``None`` before.
    started_at: float | None = None
    _done: Deferred[None] | None = None
    log = Logger()

    @property
    def draining(self) -> bool:
        """The drain has begun (it lasts until the process exits)."""
        return self.started_at is not None

    def run(self) -> Deferred[None]:
        """
        Begin the drain (once; later calls wait for the same end): refuse new calls from now on.

        :return: a Deferred firing (never failing) once no call is live, or after ``timeout`` seconds.
        """
        if self._done is not None:
            return self._settled()
        self.started_at = self.clock.seconds()
        self.calls.draining = True
        live = len(self.calls)
        if not live:
            self.log.info("Draining: no live calls; stopping")
            self._done = succeed(None)
            return self._settled()
        if not self.timeout:
            self.log.info("Draining: DRAIN_TIMEOUT is 0: hanging up the {count} live calls now", count=live)
            self._done = succeed(None)
            return self._settled()
        self.log.info("Draining: taking no new calls; waiting up to {timeout} s (DRAIN_TIMEOUT) for the {count} live "
                      "calls to end", timeout=self.timeout, count=live)
        idle = self.calls.when_idle()
        timer = self.clock.callLater(self.timeout, idle.cancel)

        def ended(result: object) -> None:
            if timer.active():
                timer.cancel()
            if isinstance(result, Failure):
                if not result.check(CancelledError):
                    self.log.failure("Draining: waiting for the calls failed", result)
                self.log.info("Draining: DRAIN_TIMEOUT ({timeout} s) is over: hanging up the {count} calls still live",
                              timeout=self.timeout, count=len(self.calls))
            else:
                self.log.info("Draining: every call has ended after {seconds:.1f} s; stopping",
                              seconds=self.clock.seconds() - (self.started_at or 0.0))

        self._done = idle.addBoth(ended)
        return self._settled()

    def _settled(self) -> Deferred[None]:
        """A new Deferred firing with ``None`` when the drain is over (each caller gets its own)."""
        assert self._done is not None
        done: Deferred[None] = Deferred()

        def relay(result: object) -> object:
            done.callback(None)
            return result

        self._done.addBoth(relay)
        return done


__all__ = ["Drain"]
