"""
The reactor ``twistd avr`` runs on: Twisted's epoll reactor, dispatching each ready socket without a legacy log
context around it (Linux only: this module does not import where there is no epoll).

Twisted's ``EPollReactor.doPoll`` hands every ready socket to ``_doReadOrWrite`` inside ``log.callWithLogger``,
which asks the connection for its ``logPrefix()`` and pushes a context dictionary around the call, only so that
legacy ``twisted.python.log`` messages written during that read carry the connection's name as their ``system``.
avr logs through `twisted.logger`, which does not read that context, and each call has two sockets that are read
50 times a second: at 200 calls, the context was 9 % of the reactor thread's time (BENCHMARKS.md, "What changed
in 2026-12"). `LeanEPollReactor` calls ``_doReadOrWrite`` directly, and does what it does for the common event
(readable, nothing else) inline: ``fileno`` checked, ``doRead``, Twisted's own disconnection on a reason or an
exception (tests/test_reactor.py runs both reactors through the same cases). What is lost: a legacy ``log.err``
from inside a read (a protocol raising) is logged with system ``-`` instead of the connection's name; its
traceback still names the protocol.

``twistd avr`` installs it unless another reactor was chosen (``twistd --reactor=…``) or ``FAST_PATHS=off``;
``twistd --reactor=avr-epoll`` selects it for any application (``twisted/plugins/avr_reactor.py``).
"""

from __future__ import annotations

import errno
from select import EPOLLIN
from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.main import installReactor
from twisted.internet.posixbase import _NO_FILEDESC
from twisted.python import log

#: The `EPollReactor` internals `LeanEPollReactor.doPoll` uses.
EPOLL_USES = ("_poller", "_selectables", "_doReadOrWrite", "_disconnectSelectable")


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
            if selectable is None:
                continue
            if event != EPOLLIN:
                handle(selectable, fd, event)
                continue
            # Readable, nothing else (the common case): what _doReadOrWrite does for it, without the call.
            why: Any
            try:
                if selectable.fileno() == -1:
                    why, in_read = _NO_FILEDESC, False
                else:
                    why, in_read = selectable.doRead(), True
            except BaseException as e:
                why, in_read = e, False
                log.err()
            if why:
                self._disconnectSelectable(selectable, why, in_read)

    doIteration = doPoll


def install() -> LeanEPollReactor:
    """
    Install a `LeanEPollReactor` as the global reactor (``twistd --reactor=avr-epoll``) and return it.

    :raises RuntimeError: the installed Twisted's `EPollReactor` lacks an internal it uses (`EPOLL_USES`).
    """
    reactor = LeanEPollReactor()
    missing = [name for name in EPOLL_USES if not hasattr(reactor, name)]
    if missing:
        raise RuntimeError(f"Twisted's EPollReactor has no {', '.join(missing)}")
    installReactor(reactor)
    return reactor


__all__ = ["EPOLL_USES", "LeanEPollReactor", "install"]
