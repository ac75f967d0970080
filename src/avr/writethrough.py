"""
Writing a frame to a TCP connection at once, without a reactor round trip.

Twisted's ``transport.write`` only buffers: it registers the socket for writability (an ``epoll_ctl``), and the
reactor sends the data on its next pass and unregisters the socket again (another ``epoll_ctl``). For a stream of
small real-time frames (every call sends 50 a second each way) that bookkeeping costs more than the ``send`` itself.
`write_through` sends straight away when nothing is waiting in the transport's buffer, and hands whatever the kernel
did not take back to ``transport.write``, so ordering and back-pressure stay Twisted's.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import error, tcp
from twisted.python.failure import Failure


def write_through(transport: Any) -> Callable[[bytes], None]:
    """
    A ``write`` for ``transport`` that sends at once when it can. It relies on Twisted internals:
    `avr.fastpaths.check_write_through` checks them at start-up.

    For a plain TCP connection (`twisted.internet.tcp.Connection`), the returned function calls ``socket.send``
    directly while the transport has nothing buffered, no producer, no TLS, and is neither closing nor aborted; any
    rest goes to ``transport.write``. For anything else (TLS wrappers, test transports) it is ``transport.write``
    itself.
    """
    if not isinstance(transport, tcp.Connection):
        return transport.write
    sock = transport.socket
    buffered_write = transport.write

    def write(data: bytes) -> None:
        if (transport._tempDataLen or transport.dataBuffer or transport.disconnecting or transport._aborting
                or not transport.connected or transport.producer is not None or transport.TLS
                or transport._writeDisconnecting or transport._writeDisconnected):
            buffered_write(data)
            return
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as e:
            _lost(transport, e)
            return
        if sent < len(data):
            buffered_write(data[sent:])

    return write


def _lost(transport: Any, reason: OSError) -> None:
    """
    The peer reset the connection under a send. The failed send consumed the socket's error (a later read would only
    see a clean end of stream), so end the connection now, as `abortConnection` does, but reporting the loss.
    """
    transport._aborting = True
    transport.stopReading()
    transport.stopWriting()
    transport.doRead = transport.doWrite = lambda: None
    transport.reactor.callLater(0, transport.connectionLost, Failure(error.ConnectionLost(str(reason))))
