"""
`avr.reactor.LeanEPollReactor`: Twisted's epoll reactor without the legacy log context around each ready socket;
reads, writes, disconnections and failures handled as Twisted handles them. Driven one `doPoll(0)` at a time over
a real socket pair (the data is written before the poll, so each poll's outcome is fixed); never run or installed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Any, Iterator

import pytest
from twisted.application.reactors import IReactorInstaller
from twisted.internet import error, main
from twisted.internet.abstract import FileDescriptor
from twisted.internet.epollreactor import EPollReactor
from twisted.plugin import getPlugins
from twisted.python import context, log

from avr.reactor import LeanEPollReactor


class Descriptor(FileDescriptor):
    """One end of a socket pair, recording what the reactor asks of it (and the log context it asks it in)."""

    def __init__(self, sock: socket.socket, reactor: Any, on_read: Any = None) -> None:
        super().__init__(reactor)
        self.sock = sock
        self.on_read = on_read
        self.calls: list[tuple[str, Any]] = []

    def fileno(self) -> int:
        return self.sock.fileno()

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


def poll_once(reactor_class: type, ours: socket.socket, peer: socket.socket, on_read: Any = None) -> Descriptor:
    reactor = reactor_class()
    try:
        descriptor = Descriptor(ours, reactor, on_read)
        descriptor.startReading()
        peer.send(b"data")
        reactor.doPoll(0)
        return descriptor
    finally:
        reactor._poller.close()
        for pipe in (reactor.waker.i, reactor.waker.o):
            os.close(pipe)


def test_a_ready_socket_is_read_without_the_legacy_log_context(pair) -> None:
    """The stock reactor reads inside a context naming the connection; the lean one reads in the caller's."""
    assert poll_once(EPollReactor, *pair).calls == [("read", "TheDescriptor")]
    assert poll_once(LeanEPollReactor, *pair).calls == [("read", "-")]


def test_a_read_that_ends_the_connection_disconnects_it(pair) -> None:
    """doRead answering CONNECTION_DONE ends the descriptor, as Twisted does."""
    descriptor = poll_once(LeanEPollReactor, *pair, on_read=lambda: main.CONNECTION_DONE)
    assert descriptor.calls == [("read", "-"), ("lost", error.ConnectionDone)]


@pytest.mark.logs_errors("boom")
def test_a_read_that_raises_is_logged_and_loses_the_connection(pair) -> None:
    def boom() -> None:
        raise ValueError("boom")

    descriptor = poll_once(LeanEPollReactor, *pair, on_read=boom)
    assert descriptor.calls == [("read", "-"), ("lost", ValueError)]


def test_a_writable_socket_is_written(pair) -> None:
    ours, peer = pair
    reactor = LeanEPollReactor()
    try:
        descriptor = Descriptor(ours, reactor)
        descriptor.startWriting()
        reactor.doPoll(0)
        assert descriptor.calls == [("write", None)]
    finally:
        reactor._poller.close()
        for pipe in (reactor.waker.i, reactor.waker.o):
            os.close(pipe)


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
