"""
`avr.reactor.LeanEPollReactor`: Twisted's epoll reactor without the legacy log context around each ready socket;
reads, writes, disconnections and failures handled as Twisted's `EPollReactor` handles them (every case is run on
both). Driven one `doPoll(0)` at a time over a real socket pair (the data is written before the poll, so each
poll's outcome is fixed); never run or installed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any, Callable, Iterator

import pytest
from twisted.application.reactors import IReactorInstaller
from twisted.internet import error, main
from twisted.internet.abstract import FileDescriptor
from twisted.internet.epollreactor import EPollReactor
from twisted.plugin import getPlugins
from twisted.python import context, log

from avr.reactor import LeanEPollReactor

BOTH = pytest.mark.parametrize("reactor_class", [EPollReactor, LeanEPollReactor])


class Descriptor(FileDescriptor):
    """One end of a socket pair, recording what the reactor asks of it (and the log context it asks it in)."""

    def __init__(self, sock: socket.socket, reactor: Any, on_read: Callable[[], Any] | None = None) -> None:
        super().__init__(reactor)
        self.sock = sock
        self.on_read = on_read
        self.closed = False
        self.calls: list[tuple[str, Any]] = []

    def fileno(self) -> int:
        return -1 if self.closed else self.sock.fileno()

    def logPrefix(self) -> str:
        return "TheDescriptor"

    def doRead(self) -> Any:
        self.calls.append(("read", context.get(log.ILogContext)["system"]))
        self.sock.recv(100)
        return self.on_read() if self.on_read else None

    def doWrite(self) -> Any:
        self.calls.append(("write", None))
        self.stopWriting()
        return None

    def connectionLost(self, reason: Any) -> None:
        self.calls.append(("lost", reason.type))
        super().connectionLost(reason)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, peer = socket.socketpair()
    yield ours, peer
    ours.close()
    peer.close()


def poll_once(reactor_class: type, ours: socket.socket, peer: socket.socket, prepare: Callable[[Descriptor], Any],
              on_read: Callable[[], Any] | None = None) -> Descriptor:
    """Register a descriptor on ``ours``, let ``prepare`` ready it, run one poll; what the descriptor was asked."""
    reactor = reactor_class()
    try:
        descriptor = Descriptor(ours, reactor, on_read)
        prepare(descriptor)
        reactor.doPoll(0)
        return descriptor
    finally:
        reactor._poller.close()
        for pipe in (reactor.waker.i, reactor.waker.o):
            os.close(pipe)


def readable(peer: socket.socket) -> Callable[[Descriptor], None]:
    def prepare(descriptor: Descriptor) -> None:
        descriptor.startReading()
        peer.send(b"data")

    return prepare


def test_a_ready_socket_is_read_without_the_legacy_log_context(pair) -> None:
    """The stock reactor reads inside a context naming the connection; the lean one reads in the caller's."""
    ours, peer = pair
    assert poll_once(EPollReactor, ours, peer, readable(peer)).calls == [("read", "TheDescriptor")]
    assert poll_once(LeanEPollReactor, ours, peer, readable(peer)).calls == [("read", "-")]


def actions(descriptor: Descriptor) -> list[Any]:
    return [call if call[0] != "read" else "read" for call in descriptor.calls]


@BOTH
def test_a_read_that_ends_the_connection_disconnects_it(pair, reactor_class) -> None:
    """doRead answering CONNECTION_DONE ends the descriptor."""
    ours, peer = pair
    descriptor = poll_once(reactor_class, ours, peer, readable(peer), on_read=lambda: main.CONNECTION_DONE)
    assert actions(descriptor) == ["read", ("lost", error.ConnectionDone)]


@BOTH
@pytest.mark.logs_errors("boom")
def test_a_read_that_raises_is_logged_and_loses_the_connection(pair, reactor_class) -> None:
    def boom() -> None:
        raise ValueError("boom")

    ours, peer = pair
    descriptor = poll_once(reactor_class, ours, peer, readable(peer), on_read=boom)
    assert actions(descriptor) == ["read", ("lost", ValueError)]


@BOTH
def test_a_descriptor_without_a_file_is_lost_unread(pair, reactor_class) -> None:
    """fileno() -1 (closed under the reactor): connectionLost, no read."""
    ours, peer = pair

    def prepare(descriptor: Descriptor) -> None:
        readable(peer)(descriptor)
        descriptor.closed = True

    descriptor = poll_once(reactor_class, ours, peer, prepare)
    assert actions(descriptor) == [("lost", error.ConnectionFdescWentAway)]


@BOTH
def test_a_writable_socket_is_written(pair, reactor_class) -> None:
    ours, peer = pair
    descriptor = poll_once(reactor_class, ours, peer, lambda d: d.startWriting())
    assert actions(descriptor) == [("write", None)]


@BOTH
def test_a_peer_that_hung_up_ends_the_connection_after_its_last_data(pair, reactor_class) -> None:
    """Readable and hung up at once: the data is read first, then the connection ends on the next poll."""
    ours, peer = pair

    def prepare(descriptor: Descriptor) -> None:
        readable(peer)(descriptor)
        peer.shutdown(socket.SHUT_RDWR)

    descriptor = poll_once(reactor_class, ours, peer, prepare)
    assert actions(descriptor) == ["read"]


def test_twistd_can_select_it_by_name() -> None:
    """``twistd --reactor=avr-epoll`` finds it (twisted/plugins/avr_reactor.py)."""
    installers = [p for p in getPlugins(IReactorInstaller) if p.shortName == "avr-epoll"]
    assert [p.moduleName for p in installers] == ["avr.reactor"]


@pytest.mark.parametrize(("preinstall", "fast_paths", "expected"), [
    ("", True, "LeanEPollReactor"),
    ("", False, "EPollReactor"),
    ("from twisted.internet import selectreactor; selectreactor.install(); ", True, "SelectReactor"),
])
def test_twistd_avr_installs_it_unless_told_otherwise(preinstall: str, fast_paths: bool, expected: str) -> None:
    """`avr.tap.install_reactor` installs it, but not with FAST_PATHS=off or when twistd --reactor chose one."""
    code = (f"{preinstall}from avr.tap import install_reactor; install_reactor({fast_paths}); "
            "from twisted.internet import reactor; print(type(reactor).__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected
