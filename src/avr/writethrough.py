"""
Writing a frame to a TCP connection at once, without a reactor round trip.

Twisted's ``transport.write`` only buffers: it registers the socket for writability (an ``epoll_ctl``), and the
reactor sends the data on its next pass and unregisters the socket again (another ``epoll_ctl``). For a stream of
small real-time frames (every call sends 50 a second each way) that bookkeeping costs more than the ``send`` itself.
`write_through` sends straight away when nothing is waiting in the transport's buffer, and hands whatever the kernel
did not take (or any error) back to ``transport.write``, so ordering, back-pressure and error reporting stay
Twisted's.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import tcp

#: The private `twisted.internet.abstract.FileDescriptor` attributes the fast path reads; checked once per transport.
_NEEDED = ("socket", "dataBuffer", "_tempDataLen", "disconnecting", "connected", "producer", "_writeDisconnecting",
           "_writeDisconnected")


def write_through(transport: Any) -> Callable[[bytes], None]:
    """
    A ``write`` for ``transport`` that sends at once when it can.

    For a plain TCP connection (`twisted.internet.tcp.Connection`), the returned function calls ``socket.send``
    directly while the transport has nothing buffered, no producer and is not closing (either way); any rest goes to
    ``transport.write`` (which also reports errors through ``connectionLost`` as usual). For anything else (TLS,
    test transports) it is ``transport.write`` itself.
    """
    if not isinstance(transport, tcp.Connection) or not all(hasattr(transport, name) for name in _NEEDED):
        return transport.write
    sock = transport.socket
    buffered_write = transport.write

    def write(data: bytes) -> None:
        if (transport._tempDataLen or transport.dataBuffer or transport.disconnecting or not transport.connected
                or transport.producer is not None or transport._writeDisconnecting or transport._writeDisconnected):
            buffered_write(data)
            return
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            # Reset or broken pipe: let the transport meet the error in its own doWrite and report the loss.
            buffered_write(data)
            return
        if sent < len(data):
            buffered_write(data[sent:])

    return write
