"""A burst of 1,000 simultaneous AudioSocket connections over loopback: every one is queued, accepted and routed."""

from __future__ import annotations

import resource
import socket
import sys
import uuid
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from zope.interface import implementer

from avr.audiosocket import AudioSocketFactory
from avr.config import Config
from avr.frames import encode_uuid
from avr.interfaces import IAudioSocketLeg, ICallRouter, ICallSink
from avr.service import ListeningService, server_endpoint

BURST = 1000


@implementer(ICallSink)
class Sink:
    """Counts the calls that end."""

    def __init__(self, router: CountingRouter) -> None:
        self.router = router

    def caller_audio(self, kind: int, payload: bytes) -> None:
        """Not needed."""

    def caller_dtmf(self, digit: str) -> None:
        """Not needed."""

    def caller_gone(self, reason: str) -> None:
        """Count; fire ``router.all_gone`` with the last one."""
        self.router.gone += 1
        if self.router.gone == self.router.expected:
            self.router.all_gone.callback(None)


@implementer(ICallRouter)
class CountingRouter:
    """Records each call's UUID; fires ``all_routed`` once ``expected`` calls arrived."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.uuids: set[str] = set()
        self.gone = 0
        self.all_routed: Deferred[None] = Deferred()
        self.all_gone: Deferred[None] = Deferred()

    def attach(self, leg: IAudioSocketLeg) -> ICallSink:
        """Record the UUID."""
        assert leg.uuid is not None
        self.uuids.add(leg.uuid)
        if len(self.uuids) == self.expected:
            self.all_routed.callback(None)
        return Sink(self)


def _burst_possible() -> str | None:
    if not sys.platform.startswith("linux"):
        return "needs Linux loopback semantics (a full accept queue drops the SYN)"
    somaxconn = Path("/proc/sys/net/core/somaxconn")
    if somaxconn.exists() and int(somaxconn.read_text()) < BURST:
        return f"net.core.somaxconn is below {BURST}: the kernel caps every backlog there"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * BURST + 200
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            return f"needs {needed} file descriptors (hard limit {hard})"
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return None


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_a_burst_of_1000_connections_is_queued_accepted_and_routed() -> None:
    """
    1,000 callers connect in the same instant, while avr cannot accept (the reactor is busy with this loop), and each
    sends its UUID frame: with the default LISTEN_BACKLOG the kernel completes and queues every handshake (with
    Twisted's default of 50 it drops 949 SYNs, and those callers would wait 1 s or more for a retry, past Asterisk's
    connect timeout under load), and then every call reaches the router.
    """
    from twisted.internet import reactor

    why_not = _burst_possible()
    if why_not:
        pytest.skip(why_not)
    router = CountingRouter(BURST)
    factory = AudioSocketFactory(router, reactor)
    listening = ListeningService(
        server_endpoint(reactor, "127.0.0.1", 0, Config().listen_backlog), factory, "burst test on {port}")
    listening.startService()
    assert listening.port is not None
    address = ("127.0.0.1", listening.port.getHost().port)
    callers: list[socket.socket] = []
    try:
        for _ in range(BURST):
            caller = socket.socket()
            callers.append(caller)
            caller.setblocking(False)
            caller.connect_ex(address)
        sent: dict[str, socket.socket] = {}
        not_connected = 0
        for caller in callers:
            call_uuid = str(uuid.uuid4())
            try:
                caller.send(encode_uuid(call_uuid))  # EAGAIN while the handshake is not complete
            except BlockingIOError:
                not_connected += 1
            else:
                sent[call_uuid] = caller
        assert not_connected == 0, f"{not_connected} of {BURST} handshakes were not queued (listen backlog too small)"
        await router.all_routed.addTimeout(60, reactor)
        assert router.uuids == set(sent)
        assert len(factory.connections) == BURST
    finally:
        for caller in callers:
            caller.close()
        if not router.all_gone.called and router.uuids:
            router.expected = len(router.uuids)
            if router.gone == router.expected:
                router.all_gone.callback(None)
        await listening.stopService()
    if router.uuids:
        await router.all_gone.addTimeout(60, reactor)
    assert factory.connections == set()
