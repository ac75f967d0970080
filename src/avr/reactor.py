"""
The reactor ``twistd avr`` runs on: Twisted's epoll reactor, dispatching each ready socket without a legacy log
context around it (Linux only: this module does not import where there is no epoll).

Twisted's ``EPollReactor.doPoll`` hands every ready socket to ``_doReadOrWrite`` inside ``log.callWithLogger``,
which asks the connection for its ``logPrefix()`` and pushes a context dictionary around the call, only so that
legacy ``twisted.python.log`` messages written during that read carry the connection's name as their ``system``.
avr logs through `twisted.logger`, which does not read that context, and each call has two sockets that are read
50 times a second: at 200 calls, the context was 9 % of the reactor thread's time (BENCHMARKS.md, "What bounds avr").
`LeanEPollReactor` calls ``_doReadOrWrite`` directly; reading, writing, disconnecting and the handling of
exceptions stay Twisted's own code. What is lost: a legacy ``log.err`` from inside a read (a protocol raising) is
logged with system ``-`` instead of the connection's name; its traceback still names the protocol.

``twistd avr`` installs it unless another reactor was chosen (``twistd --reactor=…``) or ``FAST_PATHS=off``;
``twistd --reactor=avr-epoll`` selects it for any application (``twisted/plugins/avr_reactor.py``).
"""

from __future__ import annotations

import errno

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.main import installReactor

#: The `EPollReactor` internals `LeanEPollReactor.doPoll` uses.
EPOLL_USES = ("_poller", "_selectables", "_doReadOrWrite")


class LeanEPollReactor(EPollReactor):
    """`EPollReactor`, with each ready socket dispatched without a legacy log context."""

    def doPoll(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` seconds for ready sockets and handle each, as `EPollReactor.doPoll` does."""
        try:
            events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        selectables = self._selectables
        handle = self._doReadOrWrite
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:
                handle(selectable, fd, event)

    doIteration = doPoll


def install() -> LeanEPollReactor:
    """Install a `LeanEPollReactor` as the global reactor (``twistd --reactor=avr-epoll``) and return it."""
    reactor = LeanEPollReactor()
    installReactor(reactor)
    return reactor


__all__ = ["EPOLL_USES", "LeanEPollReactor", "install"]
