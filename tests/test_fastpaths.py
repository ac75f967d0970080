"""
`avr.fastpaths`: the start-up checks of the two fast paths, FAST_PATHS=off, degrading on a mismatch, and canaries
that fail if a fast path silently stops taking effect on the installed Twisted and autobahn.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from autobahn.websocket.protocol import WebSocketClientProtocol as ClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, LogLevel, formatEvent
from twisted.test import iosim
from treq.testing import StubTreq

from avr.config import Config, load_config
from avr.fastpaths import DIRECT_FRAMES, WRITE_THROUGH, FastPaths, check_direct_frames, check_write_through
from avr.service import build, sts_connectors
from avr.sts.codec import AudioMessage, Init
from avr.sts.websocket import StsClientProtocol
from avr.tap import build_real_service
from avr.testing.sts import FakeStsServerFactory, RecordingStsHandler
from fakes import FakeStsConnector

UUID = "935652e3-7c59-4edc-b17f-9646a9c2a265"
URL = "ws://sts.example:9000/"
OFF = FastPaths(write_through=False, direct_frames=False)


def logged(events: list[LogEvent], level: LogLevel) -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_level") == level]


# -- the checks


def test_both_checks_pass_on_the_installed_twisted_and_autobahn() -> None:
    """The versions setup.cfg allows have what both fast paths use; the probes leave nothing on the reactor."""
    reactor = MemoryReactorClock()
    assert check_write_through(reactor) is None
    assert check_direct_frames(reactor) is None
    assert reactor.getDelayedCalls() == [] and reactor.readers == set() and reactor.writers == set()


def test_detect_logs_once_which_fast_paths_are_active(log_events: list[LogEvent]) -> None:
    assert FastPaths.detect(Clock()) == FastPaths()
    assert logged(log_events, LogLevel.info) == [f"Fast paths active: {WRITE_THROUGH}, {DIRECT_FRAMES}"]
    assert logged(log_events, LogLevel.warn) == []


def test_fast_paths_off(log_events: list[LogEvent]) -> None:
    """FAST_PATHS=off (any boolean spelling) turns both off without probing."""
    assert load_config({"FAST_PATHS": "off"}, {}, {}).fast_paths is False
    assert load_config({}, {}, {}).fast_paths is True
    assert FastPaths.detect(Clock(), enabled=False) == OFF
    assert OFF.active == ()
    assert logged(log_events, LogLevel.info) == [
        "Fast paths off (FAST_PATHS=off): frames go through Twisted's and autobahn's public APIs"]


def test_a_twisted_without_what_write_through_uses_turns_it_off_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, log_events: list[LogEvent]
) -> None:
    owner = next(c for c in tcp.Connection.__mro__ if "_aborting" in vars(c))
    monkeypatch.delattr(owner, "_aborting")
    assert check_write_through(Clock()) == "twisted.internet.tcp.Connection has no _aborting"
    assert FastPaths.detect(Clock()) == FastPaths(write_through=False, direct_frames=True)
    [warning] = logged(log_events, LogLevel.warn)
    assert warning.startswith(f"Fast path off: {WRITE_THROUGH} (twisted.internet.tcp.Connection has no _aborting;")
    assert warning.endswith("calls go on through the public APIs, slower")
    assert logged(log_events, LogLevel.info) == [f"Fast paths active: {DIRECT_FRAMES}"]


def test_an_autobahn_without_the_state_direct_frames_read_turns_them_off_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, log_events: list[LogEvent]
) -> None:
    """As if autobahn renamed what says a message is being received: direct frames are off, write-through is on."""
    process_handshake = ClientProtocol.processHandshake

    def renamed(self: ClientProtocol) -> None:
        process_handshake(self)
        self.receiving_message = self.inside_message
        del self.inside_message

    monkeypatch.setattr(ClientProtocol, "processHandshake", renamed)
    assert check_direct_frames(Clock()) == "autobahn's WebSocketProtocol has no inside_message"
    assert FastPaths.detect(Clock()) == FastPaths(write_through=True, direct_frames=False)
    [warning] = logged(log_events, LogLevel.warn)
    assert warning.startswith(f"Fast path off: {DIRECT_FRAMES} (autobahn's WebSocketProtocol has no inside_message;")


def test_a_failing_probe_is_a_failed_check(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise OSError("no sockets")

    monkeypatch.setattr(socket, "socketpair", broken)
    assert check_write_through(Clock()) == "the probe connection failed: OSError('no sockets')"
    monkeypatch.setattr(WebSocketProtocol, "_connectionMade", broken)
    assert check_direct_frames(Clock()) == "the probe connection failed: OSError('no sockets')"


# -- write-through sends take effect


@pytest.fixture
def connection() -> Any:
    """A Twisted TCP connection over a local socket pair (never registered with a reactor), and its peer socket."""
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    transport = tcp.Connection(ours, Protocol(), MemoryReactorClock())
    transport.connected = 1
    yield transport, peer
    ours.close()
    peer.close()


def test_write_through_reaches_the_socket_before_the_reactor_runs(connection: Any) -> None:
    transport, peer = connection
    FastPaths().writer(transport)(b"frame")
    assert peer.recv(64) == b"frame"
    assert transport.dataBuffer == b"" and transport._tempDataLen == 0


def test_without_write_through_frames_wait_for_the_reactor(connection: Any) -> None:
    transport, peer = connection
    write = OFF.writer(transport)
    assert write == transport.write
    write(b"frame")
    with pytest.raises(BlockingIOError):
        peer.recv(64)


# -- direct WebSocket data frames take effect


def session(fast_paths: FastPaths) -> tuple[StsClientProtocol, Any, RecordingStsHandler, iosim.IOPump]:
    """An STS session opened by the composition root's ws:// connector, against the fake STS, in memory."""
    reactor = MemoryReactorClock()
    server = FakeStsServerFactory(reactor)
    reactor.listenTCP(9000, server)
    handler = RecordingStsHandler()
    opened: list[Any] = []
    sts_connectors(reactor, Config(), fast_paths)["ws"].connect(URL, UUID, handler).addBoth(opened.append)
    pump = iosim.ConnectionCompleter(reactor).succeedOnce()
    pump.flush()
    [client] = opened
    assert isinstance(client, StsClientProtocol)
    return client, server.connections[0], handler, pump


def through_autobahn(client: StsClientProtocol) -> dict[str, int]:
    """Count what reaches autobahn's own send and receive machinery from now on."""
    counts = {"sent": 0, "parsed": 0}
    send, parse = client.sendMessage, client._dataReceived

    def sending(*args: Any, **kwargs: Any) -> None:
        counts["sent"] += 1
        send(*args, **kwargs)

    def parsing(data: bytes) -> None:
        counts["parsed"] += 1
        parse(data)

    client.sendMessage = sending  # type: ignore[method-assign]
    client._dataReceived = parsing  # type: ignore[method-assign]
    return counts


@pytest.mark.parametrize(("fast_paths", "sent", "parsed"), [(FastPaths(), 0, 0), (OFF, 10, 10)])
def test_audio_takes_the_direct_frames_both_ways(fast_paths: FastPaths, sent: int, parsed: int) -> None:
    """
    On an open session, caller audio is framed without autobahn's sendMessage and the STS's audio frames skip its
    parser; with the fast paths off both go through autobahn. Either way the audio arrives whole and in order.
    """
    client, server, handler, pump = session(fast_paths)
    counts = through_autobahn(client)
    pcms = [bytes([i]) * 320 for i in range(10)]
    for pcm in pcms:
        client.send_audio(pcm)
        server.send_audio(pcm)
        pump.flush()
    assert counts == {"sent": sent, "parsed": parsed}
    assert server.messages == [Init(UUID)] + [AudioMessage(pcm) for pcm in pcms]
    assert server.violations == []
    assert handler.audio == b"".join(pcms)


# -- the composition root passes the result on


def test_the_twistd_service_checks_the_fast_paths_at_start_up(log_events: list[LogEvent]) -> None:
    build_real_service(MemoryReactorClock(), Config())
    assert f"Fast paths active: {WRITE_THROUGH}, {DIRECT_FRAMES}" in logged(log_events, LogLevel.info)


def test_the_audiosocket_server_gets_the_fast_paths() -> None:
    reactor = MemoryReactorClock()
    avr = build(reactor, Config(), http_client=StubTreq(None), sts_connector=FakeStsConnector(), fast_paths=OFF)
    avr.service.startService()
    assert reactor.tcpServers[0][1].fast_paths == OFF
    avr.service.stopService()
