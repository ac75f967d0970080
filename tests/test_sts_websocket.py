"""The AVR STS WebSocket client: protocol behaviour in memory, the connector's failures, and real loopback sockets."""

from __future__ import annotations

import os
import struct

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import CancelledError, DeferredList
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface.verify import verifyObject

from avr.fastpaths import FastPaths
from avr.config import ConfigError
from avr.interfaces import IStsConnector, IStsHandler, IStsSession
from avr.sts.codec import (
    ActionResult,
    AudioMessage,
    DtmfDigit,
    DtmfRequest,
    HangupRequest,
    Init,
    InvalidAction,
    TransferRequest,
    UnknownMessage,
    encode_audio,
    encode_transcript,
)
from avr.sts.errors import StsConnectError
from avr.sts.websocket import StsClientProtocol, WebSocketStsConnector
from avr.wsclock import disable_autobahn_timers
from avr.testing.sts import FakeStsServerFactory, RecordingStsHandler, make_certificates

UUID = "935652e3-1a2b-4c3d-8e9f-0123456789ab"
URL = "ws://sts.example:9000/agent?from=2000&to=5001"


def pair(server_factory=None, handler=None, clock=None, greet=True, options=None, **protocol_kwargs):
    """
    A client protocol and a fake STS connection joined in memory (handshake done when ``greet``); ``options`` are
    autobahn's protocol options of the client's factory.
    """
    clock = clock or Clock()
    server_factory = server_factory or FakeStsServerFactory(clock)
    handler = handler or RecordingStsHandler()
    client_factory = WebSocketClientFactory(URL, reactor=clock)
    disable_autobahn_timers(client_factory)
    client_factory.setProtocolOptions(failByDrop=False, **(options or {}))  # as WebSocketStsConnector sets it
    client = StsClientProtocol(UUID, handler, clock, **protocol_kwargs)
    client.factory = client_factory
    server = server_factory.buildProtocol(None)
    pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client),
                         greet=greet, clock=clock)
    return client, server, handler, pump, clock


def connecting(server_factory=None, **connector_kwargs):
    """A connector on a memory reactor with ``server_factory`` listening on port 9000, and its pending attempt."""
    reactor = MemoryReactorClock()
    if server_factory is not None:
        reactor.listenTCP(9000, server_factory(reactor))
    connector = WebSocketStsConnector(reactor, **connector_kwargs)
    handler = RecordingStsHandler()
    outcome: list = []
    d = connector.connect(URL, UUID, handler)
    d.addBoth(outcome.append)
    return reactor, handler, outcome


def test_providers_implement_the_interfaces():
    """The protocol is an IStsSession, the connector an IStsConnector, the recording handler an IStsHandler."""
    client, *_ = pair()
    assert verifyObject(IStsSession, client)
    assert (client.input_rate, client.output_rate) == (8000, 8000)
    assert verifyObject(IStsConnector, WebSocketStsConnector(MemoryReactorClock()))
    assert verifyObject(IStsHandler, RecordingStsHandler())


def test_sends_before_open_are_dropped_not_queued():
    """The connector hands a session out only once open; sends before that (misuse) are dropped with a debug log."""
    client, server, _, pump, _ = pair(greet=False)
    with capturedLogs() as events:
        client.send_audio(b"\x01\x02" * 160)
        client.send_dtmf("5")
    pump.flush()
    assert client.state == client.STATE_OPEN
    assert server.messages == [Init(UUID)]
    dropped = [e for e in events if e["log_format"] == "STS for call {call_id} is not open: {what} not sent"]
    assert [(e["log_level"].name, e["what"]) for e in dropped] == [("debug", "audio"), ("debug", "DTMF")]


def test_audio_and_dtmf_after_open_go_straight_out():
    """Once open, each send is one text message."""
    client, server, _, pump, _ = pair()
    client.send_audio(b"\x00\x01")
    client.send_dtmf("#")
    pump.flush()
    assert server.messages == [Init(UUID), AudioMessage(b"\x00\x01"), DtmfDigit("#")]


def test_invalid_dtmf_is_not_sent():
    """A digit that is not DTMF is logged and dropped; the session goes on."""
    client, server, _, pump, _ = pair()
    client.send_dtmf("x")
    client.send_dtmf("1")
    pump.flush()
    assert server.messages == [Init(UUID), DtmfDigit("1")]


def test_each_sts_message_type_reaches_the_handler():
    """Audio (any size, odd too), interruption, transcript and error are dispatched in order."""
    client, server, handler, pump, _ = pair()
    server.send_audio(b"\x10" * 16001, chunk_size=8000)
    server.send_interruption()
    server.send_transcript("user", "hi")
    server.send_transcript("agent", "hello")
    server.send_error("quota exceeded")
    server.send_error(None)
    pump.flush()
    assert handler.events == [
        ("audio", b"\x10" * 8000), ("audio", b"\x10" * 8000), ("audio", b"\x10"),
        ("interruption",), ("transcript", "user", "hi"), ("transcript", "agent", "hello"),
        ("error", "quota exceeded"), ("error", ""),
    ]


def test_control_messages_reach_the_handler_and_results_go_back():
    """hangup, transfer and dtmf reach the handler as requests; action_result goes back to the STS as JSON."""
    client, server, handler, pump, _ = pair()
    server.send_hangup("bye")
    server.send_transfer(endpoint="PJSIP/1002", id="t")
    server.send_dtmf_request("12")
    server.send_raw('{"type":"transfer"}')
    pump.flush()
    assert handler.events == [
        ("action", HangupRequest("bye")), ("action", TransferRequest(endpoint="PJSIP/1002", id="t")),
        ("action", DtmfRequest("12")),
        ("action", InvalidAction("transfer", "endpoint, or both context and extension, are required")),
    ]
    client.send_action_result(ActionResult("transfer", False, "busy", "t"))
    pump.flush()
    assert server.action_results == [ActionResult("transfer", False, "busy", "t")]
    client.close()
    pump.flush()
    client.send_action_result(ActionResult("dtmf", True))  # closed: dropped
    pump.flush()
    assert len(server.action_results) == 1


def test_unknown_binary_and_malformed_messages_are_ignored():
    """Unknown types, binary frames and undecodable JSON are skipped; the session keeps working."""
    client, server, handler, pump, _ = pair()
    with capturedLogs() as events:
        server.send_raw('{"type":"tool_invocation","toolName":"hangup","invocationId":"1","parameters":{}}')
        server.send_raw(b"\x00\x01", binary=True)
        server.send_raw(b"\x00\x01", binary=True)
        server.send_raw("{not json")
        server.send_raw('{"type":"audio","audio":"@@@@"}')
        server.send_raw('{"type":"transcript","role":"bot","text":"x"}')
        server.send_raw('{"type":"audio","audio":""}')
        server.send_audio(b"ok")
        pump.flush()
    assert handler.events == [("audio", b"ok")]
    assert client.is_open.called and client.state == client.STATE_OPEN
    warnings = [e for e in events if e["log_level"].name == "warn"]
    # First binary frame and first undecodable message warn; repeats go to debug.
    assert len(warnings) == 2


@pytest.mark.logs_errors(r"the call failed to handle Interruption")
def test_a_failing_handler_does_not_break_the_session():
    """An exception in the call's handler is logged; later messages are still delivered."""

    class Exploding(RecordingStsHandler):
        def sts_interruption(self):
            raise RuntimeError("boom")

    client, server, handler, pump, _ = pair(handler=Exploding())
    with capturedLogs() as events:
        server.send_interruption()
        server.send_audio(b"after")
        pump.flush()
    assert handler.events == [("audio", b"after")]
    assert any(e.get("log_failure") is not None for e in events)


def test_close_is_a_normal_close_and_reports_once():
    """close() sends code 1000; sts_closed follows once; more close() and sends are harmless no-ops."""
    client, server, handler, pump, clock = pair()
    client.close()
    client.close()
    client.send_audio(b"late")
    client.send_dtmf("1")
    pump.flush()
    assert server.close_info == (True, 1000, None)
    assert handler.closed == ["closed (code 1000)"]
    assert server.messages == [Init(UUID)]
    client.close()
    assert handler.closed == ["closed (code 1000)"]
    assert clock.getDelayedCalls() == []


def test_messages_after_close_are_not_delivered():
    """Once the call asked to close, agent audio still in flight is not handed to it."""
    client, server, handler, pump, _ = pair()
    client.close()
    server.send_audio(b"late")
    pump.flush()
    assert handler.events == [("closed", "closed (code 1000)")]


def test_sts_close_reports_code_and_reason():
    """A close started by the STS is reported with its code and reason."""
    client, server, handler, pump, _ = pair()
    server.send_error("provider failed")
    server.close(1011, "provider failed")
    pump.flush()
    assert handler.events == [
        ("error", "provider failed"), ("closed", "closed by the STS (code 1011: provider failed)")]


def test_dropped_connection_is_reported_once():
    """The STS vanishing without a closing handshake ends the session as 'connection lost'."""
    client, server, handler, pump, _ = pair()
    server.drop()
    pump.flush()
    assert len(handler.closed) == 1
    assert handler.closed[0].startswith("connection lost (code 1006")
    client.close()
    pump.flush()
    assert len(handler.closed) == 1


def test_unanswered_close_is_dropped_after_the_close_timeout():
    """If the STS never answers the closing handshake, the connection is dropped on the clock's time."""
    client, server, handler, pump, clock = pair(close_timeout=2.0)
    server.dataReceived = lambda data: None
    client.close()
    pump.flush()
    assert handler.closed == []
    clock.advance(1.9)
    pump.flush()
    assert handler.closed == []
    clock.advance(0.1)
    pump.flush()
    assert len(handler.closed) == 1
    assert "closing handshake not finished within 2 s" in handler.closed[0]
    assert clock.getDelayedCalls() == []


def test_connector_opens_a_session_at_the_url():
    """The connector logs the (redacted) URL, reaches path and query, sends init, and fires once open."""
    reactor = MemoryReactorClock()
    server = FakeStsServerFactory(reactor)
    reactor.listenTCP(9000, server)
    connector = WebSocketStsConnector(reactor, sample_rate=16000)
    handler = RecordingStsHandler()
    outcome: list = []
    with capturedLogs() as events:
        connector.connect("ws://sts.example:9000/agent?from=2000&api_key=s3cret", UUID, handler).addBoth(outcome.append)
        assert outcome == []
        pump = iosim.ConnectionCompleter(reactor).succeedOnce()
        pump.flush()
    session = outcome[0]
    assert isinstance(session, StsClientProtocol)
    assert (session.input_rate, session.output_rate) == (16000, 16000)  # STS_SAMPLE_RATE, both ways
    (conn,) = server.connections
    assert conn.path == "/agent"
    assert conn.params == {"from": ["2000"], "api_key": ["s3cret"]}
    assert conn.messages == [Init(UUID)]
    connecting_lines = [e for e in events if e["log_format"] == "Connecting to STS WebSocket: {url}"]
    assert [e["url"] for e in connecting_lines] == ["ws://sts.example:9000/agent?from=2000&api_key=***"]
    assert all("s3cret" not in repr(e) for e in events)
    session.close()
    pump.flush()
    assert handler.closed == ["closed (code 1000)"]
    assert reactor.getDelayedCalls() == []


def test_session_for_a_uuid_can_be_awaited_on_the_fake():
    """The fake STS tells a test when the session of a given call opened."""
    reactor = MemoryReactorClock()
    server = FakeStsServerFactory(reactor, on_session=lambda conn: conn.send_transcript("agent", "welcome"))
    reactor.listenTCP(9000, server)
    seen: list = []
    server.session_opened(UUID).addCallback(seen.append)
    handler = RecordingStsHandler()
    WebSocketStsConnector(reactor).connect(URL, UUID, handler)
    iosim.ConnectionCompleter(reactor).succeedOnce().flush()
    assert seen == server.connections
    assert handler.events == [("transcript", "agent", "welcome")]


def test_refused_connection_fails_readably():
    """A refused TCP connection is a StsConnectError saying so, with no timer left behind."""
    reactor, handler, outcome = connecting()
    iosim.ConnectionCompleter(reactor).failOnce(Failure(ConnectionRefusedError()))
    reactor.advance(0.3)  # HostnameEndpoint's attempt pacing
    (failure,) = outcome
    assert failure.check(StsConnectError)
    assert failure.value.reason == "connection refused"
    assert reactor.getDelayedCalls() == []
    assert handler.events == []


def test_unknown_host_fails_readably():
    """A DNS failure names the host."""
    reactor = MemoryReactorClock()

    class FailingResolver:
        def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None, transportSemantics="TCP"):
            receiver.resolutionBegan(None)
            receiver.resolutionComplete()

    reactor.nameResolver = FailingResolver()
    outcome: list = []
    WebSocketStsConnector(reactor).connect(URL, UUID, RecordingStsHandler()).addBoth(outcome.append)
    reactor.advance(0)
    (failure,) = outcome
    assert failure.check(StsConnectError)
    assert failure.value.reason == "cannot resolve host name sts.example"
    assert reactor.getDelayedCalls() == []


def test_connect_timeout_while_tcp_connects():
    """No TCP connection within the timeout: StsConnectError on the injected clock, attempt abandoned."""
    reactor, handler, outcome = connecting(connect_timeout=3.0)
    reactor.advance(2.9)
    assert outcome == []
    reactor.advance(0.1)
    (failure,) = outcome
    assert failure.check(StsConnectError)
    assert failure.value.reason == "timed out after 3 s"
    assert reactor.getDelayedCalls() == []
    assert reactor.connectors[0].stoppedConnecting


def test_connect_timeout_during_a_silent_handshake():
    """A server that accepts TCP but never answers the WebSocket handshake times out; the socket is dropped."""
    reactor, handler, outcome = connecting(lambda r: Factory.forProtocol(Protocol), connect_timeout=5.0)
    pump = iosim.ConnectionCompleter(reactor).succeedOnce()
    pump.flush()
    assert outcome == []
    reactor.advance(5.0)
    pump.flush()
    (failure,) = outcome
    assert failure.value.reason == "timed out after 5 s"
    assert pump.clientIO.disconnected
    assert handler.events == []
    assert reactor.getDelayedCalls() == []


def test_rejected_handshake_names_the_http_status():
    """An STS answering the upgrade with 403 fails the connection with that status."""
    reactor, handler, outcome = connecting(lambda r: FakeStsServerFactory(r, reject=(403, "Forbidden")))
    iosim.ConnectionCompleter(reactor).succeedOnce().flush()
    (failure,) = outcome
    assert failure.check(StsConnectError)
    assert failure.value.reason == "WebSocket handshake rejected: HTTP 403 Forbidden"
    assert handler.events == []
    assert reactor.getDelayedCalls() == []


def test_server_closing_during_handshake_fails_the_attempt():
    """A server that hangs up before the handshake completes is a connect failure, not a session end."""

    class HangUp(Protocol):
        def dataReceived(self, data):
            self.transport.loseConnection()

    reactor, handler, outcome = connecting(lambda r: Factory.forProtocol(HangUp))
    iosim.ConnectionCompleter(reactor).succeedOnce().flush()
    (failure,) = outcome
    assert failure.check(StsConnectError)
    assert "WebSocket handshake" in failure.value.reason
    assert handler.events == []


def test_cancelling_before_tcp_connects_abandons_the_attempt():
    """Cancelling the connect Deferred (the call ended meanwhile) stops the TCP attempt and every timer."""
    reactor = MemoryReactorClock()
    d = WebSocketStsConnector(reactor).connect(URL, UUID, RecordingStsHandler())
    d.cancel()
    failures: list = []
    d.addErrback(failures.append)
    assert failures[0].check(CancelledError)
    assert reactor.connectors[0].stoppedConnecting
    assert reactor.getDelayedCalls() == []


def test_cancelling_during_the_handshake_drops_the_connection():
    """Cancelled after TCP connected: the socket is dropped and no session event is reported."""
    reactor = MemoryReactorClock()
    reactor.listenTCP(9000, Factory.forProtocol(Protocol))
    handler = RecordingStsHandler()
    d = WebSocketStsConnector(reactor).connect(URL, UUID, handler)
    pump = iosim.ConnectionCompleter(reactor).succeedOnce()
    pump.flush()
    d.cancel()
    failures: list = []
    d.addErrback(failures.append)
    pump.flush()
    assert failures[0].check(CancelledError)
    assert pump.clientIO.disconnected
    assert handler.events == []
    assert reactor.getDelayedCalls() == []


def test_invalid_url_fails_without_connecting():
    """A URL autobahn cannot use is a StsConnectError that does not repeat the URL."""
    reactor = MemoryReactorClock()
    failures: list = []
    WebSocketStsConnector(reactor).connect("ws://host/path#frag-secret", UUID, RecordingStsHandler()).addErrback(
        failures.append)
    assert failures[0].check(StsConnectError)
    assert "secret" not in failures[0].value.reason
    assert reactor.tcpClients == []


def test_unusable_ca_file_is_a_config_error(tmp_path):
    """A CA file that is missing or holds no certificate is refused when the connector is built."""
    with pytest.raises(ConfigError, match="cannot be read"):
        WebSocketStsConnector(MemoryReactorClock(), trust_root=str(tmp_path / "missing.pem"))
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="no usable PEM certificate"):
        WebSocketStsConnector(MemoryReactorClock(), trust_root=str(bad))


# -- real loopback sockets


async def _loopback_session(url_for, listen, connector, reads_directly=False):
    """
    Open a session through ``connector`` to a fake echo STS served by ``listen``, exchange audio, close.

    :param reads_directly: the TCP connection hands its reads to the session itself (not through the endpoint's
        forwarding wrapper).
    """
    from twisted.internet import reactor

    server = FakeStsServerFactory(reactor, echo=True)
    port = listen(reactor, server)
    handler = RecordingStsHandler()
    try:
        session = await connector(reactor).connect(url_for(port.getHost().port), UUID, handler)
        conn = await server.session_opened(UUID)
        assert (session.transport.protocol is session) == reads_directly
        session.send_audio(b"\x01\x02" * 160)
        session.send_dtmf("7")
        await handler.wait_for("audio", 320)
        assert handler.audio == b"\x01\x02" * 160
        assert conn.dtmf == ["7"]
        session.close()
        await handler.wait_for("closed")
        assert handler.closed == ["closed (code 1000)"]
        assert conn.violations == []
    finally:
        await DeferredList([c.when_closed() for c in server.connections])
        await port.stopListening()


async def _failed_connect(certificates, trust_root, host):
    """Connect to a wss fake serving ``certificates`` and return the StsConnectError."""
    from twisted.internet import reactor

    server = FakeStsServerFactory(reactor, echo=True)
    port = reactor.listenSSL(0, server, certificates.server_options(), interface="127.0.0.1")
    handler = RecordingStsHandler()
    try:
        connector = WebSocketStsConnector(reactor, trust_root=trust_root)
        with pytest.raises(StsConnectError) as caught:
            await connector.connect(f"wss://{host}:{port.getHost().port}/", UUID, handler)
        assert handler.events == []
        return caught.value
    finally:
        await DeferredList([c.when_closed() for c in server.connections])
        await port.stopListening()


@pytest.mark.integration
@pytest.mark.parametrize("fast_paths", [FastPaths(), FastPaths(write_through=False, direct_frames=False)],
                         ids=["fast paths", "FAST_PATHS=off"])
@pytest_twisted.ensureDeferred
async def test_loopback_ws_session(fast_paths):
    """
    A real ws:// session with the fake STS: init first, audio echoed, DTMF delivered, clean close; with the fast
    paths the TCP connection hands its reads to the session directly, without them through the endpoint's wrapper.
    """
    await _loopback_session(
        lambda port: f"ws://127.0.0.1:{port}/?from=2000",
        lambda reactor, server: reactor.listenTCP(0, server, interface="127.0.0.1"),
        lambda reactor: WebSocketStsConnector(reactor, fast_paths=fast_paths),
        reads_directly=fast_paths.direct_frames,
    )


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_loopback_wss_with_trusted_ca(tmp_path):
    """wss:// to a server whose certificate chains to the configured CA and names the host: works."""
    certificates = make_certificates(dns_names=("localhost",), ips=("127.0.0.1",))
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(certificates.ca_pem)
    await _loopback_session(
        lambda port: f"wss://127.0.0.1:{port}/",
        lambda reactor, server: reactor.listenSSL(0, server, certificates.server_options(), interface="127.0.0.1"),
        lambda reactor: WebSocketStsConnector(reactor, trust_root=str(ca_file)),
    )


@pytest.mark.logs_errors(r"SSL error: certificate verify failed", r"SSL error: tlsv1 alert unknown ca")
@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_loopback_wss_untrusted_certificate_is_refused():
    """A certificate from a CA the platform does not trust fails with 'certificate verify failed'."""
    error = await _failed_connect(make_certificates(), None, "127.0.0.1")
    assert "certificate verify failed" in error.reason


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_loopback_wss_wrong_host_name_is_refused(tmp_path):
    """A trusted certificate for another name fails with a host name mismatch."""
    certificates = make_certificates(dns_names=("sts.example",), ips=())
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(certificates.ca_pem)
    error = await _failed_connect(certificates, str(ca_file), "127.0.0.1")
    assert error.reason == (
        "TLS certificate verification failed: host name mismatch (certificate is not valid for 127.0.0.1)"
    )


# -- the fake STS itself


def test_fake_echo_reflects_audio_frames_unchanged_without_recording():
    """Lean echo mode sends each audio frame back as-is and only counts it."""
    clock = Clock()
    client, server, handler, pump, _ = pair(FakeStsServerFactory(clock, echo=True, record_audio=False))
    client.send_audio(b"\x05\x06" * 160)
    client.send_audio(b"\x07")
    pump.flush()
    assert handler.audio == b"\x05\x06" * 160 + b"\x07"
    assert server.messages == [Init(UUID)]
    assert server.audio_messages == 2


def test_fake_records_protocol_violations():
    """A client that sends audio before init, a second init or junk is caught by the fake (and not echoed)."""
    clock = Clock()
    factory = FakeStsServerFactory(clock, echo=True)
    client_factory = WebSocketClientFactory(URL, reactor=clock)
    disable_autobahn_timers(client_factory)
    client_factory.protocol = WebSocketClientProtocol
    client = client_factory.buildProtocol(None)
    received: list = []
    client.onMessage = lambda payload, is_binary: received.append(payload)
    server = factory.buildProtocol(None)
    pump = iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client), clock=clock)
    client.sendMessage(b'{"type":"audio","audio":"AAA="}')
    client.sendMessage(b'{"type":"init","uuid":"u1"}')
    client.sendMessage(b'{"type":"init","uuid":"u2"}')
    client.sendMessage(b"junk")
    client.sendMessage(b"\x00", isBinary=True)
    client.sendMessage(b'{"type":"tool_result"}')
    pump.flush()
    assert server.uuid == "u1"
    assert server.violations == ["AudioMessage before init", "duplicate init",
                                 "undecodable message: message is not JSON (Expecting value: line 1 column 1 (char 0))",
                                 "binary frame of 1 bytes"]
    assert server.messages[-1] == UnknownMessage("tool_result")
    assert received == []
    assert factory.open_connections == [server]


# -- the per-frame fast paths (send_audio's direct frames, dataReceived's complete text frames)


def _frame(payload: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
    """An unmasked server frame (RFC 6455 §5.2), built by hand."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        return bytes((first, n)) + payload
    if n < 0x10000:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


def _client_frames(wire: bytes) -> list[tuple[int, bytes, bytes]]:
    """The ``(opcode, masking key, unmasked payload)`` of each client frame in ``wire``, decoded independently."""
    frames = []
    while wire:
        opcode, length, pos = wire[0] & 0x0F, wire[1] & 0x7F, 2
        assert wire[0] & 0xF0 == 0x80 and wire[1] & 0x80, "a client frame must be final and masked"
        if length == 126:
            (length,), pos = struct.unpack("!H", wire[2:4]), 4
        elif length == 127:
            (length,), pos = struct.unpack("!Q", wire[2:10]), 10
        key = wire[pos:pos + 4]
        body = wire[pos + 4:pos + 4 + length]
        frames.append((opcode, key, bytes(b ^ key[i % 4] for i, b in enumerate(body))))
        wire = wire[pos + 4 + length:]
    return frames


def _record_chunks(client) -> list[bytes]:
    """Record each chunk handed to ``client.dataReceived`` (what one TCP read would deliver)."""
    chunks: list[bytes] = []
    receive = client.dataReceived

    def spy(data):
        chunks.append(data)
        receive(data)

    client.dataReceived = spy
    return chunks


def _audio_frames(*pcms: bytes) -> bytes:
    return b"".join(_frame(encode_audio(p)) for p in pcms)


def test_send_audio_frames_are_proper_masked_frames(monkeypatch):
    """
    send_audio writes one final masked text frame per call, each keyed by the next 4 bytes of os.urandom; the autobahn
    server decodes every one (short, 16-bit and 64-bit lengths, empty and odd sizes) to the same PCM, in order.
    """
    client, server, _, pump, _ = pair()
    pump.flush()
    blocks: list[bytes] = []
    real_urandom = os.urandom

    def urandom(n):
        value = real_urandom(n)
        blocks.append(value)
        return value

    monkeypatch.setattr(os, "urandom", urandom)
    sizes = [320, 0, 1, 2, 63, 64, 93, 94, 48000, 49149, 49150, 70000] + [320] * 200
    pcms = [bytes((i + j) % 256 for j in range(n)) for i, n in enumerate(sizes)]
    for pcm in pcms:
        client.send_audio(pcm)
    monkeypatch.setattr(os, "urandom", real_urandom)
    wire = b"".join(pump.clientIO.stream)
    frames = _client_frames(wire)
    assert [(opcode, payload) for opcode, _, payload in frames] == [(0x1, encode_audio(p)) for p in pcms]
    entropy = b"".join(blocks)
    assert [key for _, key, _ in frames] == [entropy[i:i + 4] for i in range(0, 4 * len(frames), 4)]
    pump.flush()
    assert server.messages == [Init(UUID)] + [AudioMessage(p) for p in pcms]
    assert server.violations == []
    assert client.state == client.STATE_OPEN


def test_direct_audio_frames_and_autobahn_messages_interleave_in_order():
    """Audio (direct frames) and DTMF (autobahn's sendMessage) sent alternately reach the STS in call order."""
    client, server, _, pump, _ = pair()
    expected = [Init(UUID)]
    for i in range(30):
        client.send_audio(bytes([i]) * 320)
        expected.append(AudioMessage(bytes([i]) * 320))
        if i % 3 == 0:
            client.send_dtmf("5")
            expected.append(DtmfDigit("5"))
    pump.flush()
    assert server.messages == expected


def test_complete_frames_bypass_autobahns_message_machinery():
    """Complete text frames at a frame boundary go straight to onMessage (autobahn's _onMessage is not used); a
    fragmented message still goes through autobahn."""
    client, server, handler, pump, _ = pair()
    through_autobahn: list[bytes] = []
    original = client._onMessage
    client._onMessage = lambda payload, is_binary: (through_autobahn.append(payload), original(payload, is_binary))
    server.send_audio(b"\x01" * 3200, chunk_size=320)
    pump.flush()
    assert handler.audio == b"\x01" * 3200 and handler.count("audio") == 10
    assert through_autobahn == []
    server.sendMessage(encode_audio(b"\x02" * 320), isBinary=False, fragmentSize=100)
    pump.flush()
    assert through_autobahn == [encode_audio(b"\x02" * 320)]
    assert handler.events[-1] == ("audio", b"\x02" * 320)


def test_audio_around_a_ping_in_one_chunk():
    """Audio, ping, audio in one TCP chunk: both audio messages in order, and autobahn answers the ping."""
    client, server, handler, pump, _ = pair()
    pongs: list[bytes] = []
    server.onPong = pongs.append
    chunks = _record_chunks(client)
    server.send_audio(b"\x01\x02")
    server.sendPing(b"hb")
    server.send_audio(b"\x03\x04")
    pump.flush()
    assert chunks[0] == _audio_frames(b"\x01\x02") + _frame(b"hb", opcode=0x9) + _audio_frames(b"\x03\x04")
    assert handler.events == [("audio", b"\x01\x02"), ("audio", b"\x03\x04")]
    assert pongs == [b"hb"]
    assert client.state == client.STATE_OPEN


def test_two_frames_split_at_every_byte():
    """An audio and a transcript frame (16-bit length) split in two reads anywhere: each delivered once, in order."""
    data = _audio_frames(b"\x05" * 120) + _frame(encode_transcript("agent", "h\u00e9llo " * 5))
    expected = [("audio", b"\x05" * 120), ("transcript", "agent", "h\u00e9llo " * 5)]
    assert data[1] == 126
    for cut in range(1, len(data)):
        client, server, handler, pump, _ = pair()
        client.dataReceived(data[:cut])
        client.dataReceived(data[cut:])
        pump.flush()
        assert handler.events == expected, cut
        assert client.state == client.STATE_OPEN, cut


def test_fragmented_message_is_delivered_whole_once():
    """A message in continuation frames, between complete audio frames in the same chunk, arrives once, whole."""
    whole = encode_audio(b"\x07" * 90)
    fragments = (_frame(whole[:10], fin=False) + _frame(whole[10:50], opcode=0x0, fin=False)
                 + _frame(whole[50:], opcode=0x0))
    client, server, handler, pump, _ = pair()
    client.dataReceived(_audio_frames(b"a") + fragments + _audio_frames(b"b"))
    assert handler.events == [("audio", b"a"), ("audio", b"\x07" * 90), ("audio", b"b")]


def test_fragmented_message_across_reads_is_delivered_whole_once():
    """Fragments spread over several reads, a ping between them: the message once, complete frames around it."""
    whole = encode_audio(b"\x08" * 90)
    client, server, handler, pump, _ = pair()
    client.dataReceived(_audio_frames(b"a") + _frame(whole[:20], fin=False))
    client.dataReceived(_frame(whole[20:40], opcode=0x0, fin=False) + _frame(b"", opcode=0x9))
    client.dataReceived(_frame(whole[40:], opcode=0x0))
    client.dataReceived(_audio_frames(b"b"))
    pump.flush()
    assert handler.events == [("audio", b"a"), ("audio", b"\x08" * 90), ("audio", b"b")]
    assert client.state == client.STATE_OPEN


def test_fragmented_message_sent_by_autobahn():
    """A message the autobahn server sends in fragments (beginMessage ... endMessage) arrives once, whole."""
    client, server, handler, pump, _ = pair()
    whole = encode_audio(b"\x09" * 200)
    server.send_audio(b"first")
    server.beginMessage(isBinary=False)
    for i in range(0, len(whole), 64):
        server.sendMessageFrame(whole[i:i + 64])
    server.endMessage()
    server.send_audio(b"last")
    pump.flush()
    assert handler.events == [("audio", b"first"), ("audio", b"\x09" * 200), ("audio", b"last")]


def test_transcript_interruption_and_audio_in_one_chunk_keep_their_order():
    """Other message types in the same chunk as audio go through the same path, in arrival order."""
    client, server, handler, pump, _ = pair()
    chunks = _record_chunks(client)
    server.send_audio(b"\x01")
    server.send_transcript("user", "hi")
    server.send_audio(b"\x02")
    server.send_interruption()
    server.send_audio(b"\x03")
    pump.flush()
    assert len(chunks) == 1
    assert handler.events == [("audio", b"\x01"), ("transcript", "user", "hi"), ("audio", b"\x02"),
                              ("interruption",), ("audio", b"\x03")]


def test_close_frame_in_the_same_chunk_after_audio():
    """Audio then the STS's close frame in one chunk: the audio is delivered, then the session ends once."""
    client, server, handler, pump, clock = pair()
    chunks = _record_chunks(client)
    server.send_audio(b"\x01\x02")
    server.send_audio(b"\x03\x04")
    server.close(1000, "bye")
    pump.flush()
    assert chunks[0] == _audio_frames(b"\x01\x02", b"\x03\x04") + _frame(struct.pack("!H", 1000) + b"bye", opcode=0x8)
    assert handler.events == [("audio", b"\x01\x02"), ("audio", b"\x03\x04"),
                              ("closed", "closed by the STS (code 1000: bye)")]
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("how", ["close", "abort"])
def test_handler_ending_the_session_on_the_first_of_several_frames(how):
    """The call closes (or aborts) the session while handling the first audio of a chunk: later frames are not
    delivered (autobahn's own loop stops once the connection is closed), nothing raises or is logged as a failure,
    and the end is reported once."""

    class Ending(RecordingStsHandler):
        session = None

        def sts_audio(self, pcm):
            super().sts_audio(pcm)
            getattr(self.session, how)()

    handler = Ending()
    client, server, _, pump, clock = pair(handler=handler)
    handler.session = client
    chunks = _record_chunks(client)
    with capturedLogs() as events:
        server.send_audio(b"\x01")
        server.send_audio(b"\x02")
        server.send_transcript("agent", "late")
        server.send_audio(b"\x03")
        pump.flush()
        clock.advance(10)
        pump.flush()
    assert len(chunks[0]) > len(_audio_frames(b"\x01")), "the frames did not arrive in one chunk"
    assert handler.events[0] == ("audio", b"\x01")
    assert [e[0] for e in handler.events] == ["audio", "closed"]
    assert not [e for e in events if e.get("log_failure") is not None]
    assert clock.getDelayedCalls() == []


_BAD_UTF8_TRANSCRIPT = b'{"type":"transcript","role":"user","text":"caf\xe9"}'


def test_invalid_utf8_in_a_complete_text_frame_fails_the_connection():
    """
    A complete text frame that is not UTF-8 is left to autobahn by the fast path, so it is treated exactly as a
    fragmented one: the connection fails (1007) and the call learns why. Audio before it was delivered.
    """
    client, server, handler, pump, _ = pair()
    client.dataReceived(_audio_frames(b"\x01") + _frame(_BAD_UTF8_TRANSCRIPT) + _audio_frames(b"\x02"))
    pump.flush()
    assert client.state == client.STATE_CLOSED
    assert [e[0] for e in handler.events] == ["audio", "closed"]
    assert handler.events[0] == ("audio", b"\x01")
    assert "invalid UTF-8" in handler.closed[0]


def test_invalid_utf8_in_a_fragmented_text_message_fails_the_connection():
    """The same bytes in fragments go through autobahn, which validates UTF-8 and fails the connection (1007)."""
    client, server, handler, pump, _ = pair()
    client.dataReceived(_frame(_BAD_UTF8_TRANSCRIPT[:20], fin=False)
                        + _frame(_BAD_UTF8_TRANSCRIPT[20:], opcode=0x0))
    pump.flush()
    assert client.state == client.STATE_CLOSED
    assert [e[0] for e in handler.events] == ["closed"]
    assert "invalid UTF-8" in handler.closed[0]


@pytest.mark.logs_errors(r"sent a message larger than STS_MAX_MESSAGE \(1024 bytes; close code 1009\)")
def test_a_failed_connection_is_closed_with_its_code_then_dropped_if_unanswered():
    """
    A message over STS_MAX_MESSAGE (1009) closes the connection with that code, so the STS learns why; what it
    sends after that is not delivered; if it never answers the close, the close timeout drops the connection.
    """
    client, server, handler, pump, clock = pair(close_timeout=2.0, options={
        "maxMessagePayloadSize": 1024, "maxFramePayloadSize": 1024})
    wire: list[bytes] = []
    server.dataReceived = wire.append
    client.dataReceived(_frame(encode_transcript("agent", "x" * 1024)) + _audio_frames(b"\x01"))
    pump.flush()
    close = [payload for opcode, _, payload in _client_frames(b"".join(wire)) if opcode == 0x8]
    assert len(close) == 1 and struct.unpack("!H", close[0][:2]) == (1009,)
    client.dataReceived(_audio_frames(b"\x02"))
    assert handler.events == [] and client.state == client.STATE_CLOSING
    clock.advance(1.9)
    pump.flush()
    assert handler.events == []
    clock.advance(0.1)
    pump.flush()
    assert handler.closed == ["message larger than STS_MAX_MESSAGE (1024 bytes; close code 1009)"]
    assert clock.getDelayedCalls() == []


def test_utf8_encoded_surrogates_are_not_delivered_as_text():
    """
    UTF-8 forbids encoded surrogates (ED A0 80); autobahn's validator rejects them (1007). On the fast path the
    transcript must not reach the call with a lone surrogate in its text (it could not be encoded to UTF-8 again).
    """
    client, server, handler, pump, _ = pair()
    client.dataReceived(_frame(b'{"type":"transcript","role":"user","text":"\xed\xa0\x80"}'))
    pump.flush()
    assert handler.count("transcript") == 0, f"delivered: {handler.events}"


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_loopback_direct_audio_frames_keep_order_with_autobahn_writes():
    """Over real TCP (where send_audio writes through to the socket) audio and DTMF interleave in call order."""
    from twisted.internet import reactor

    server = FakeStsServerFactory(reactor)
    port = reactor.listenTCP(0, server, interface="127.0.0.1")
    handler = RecordingStsHandler()
    try:
        session = await WebSocketStsConnector(reactor).connect(f"ws://127.0.0.1:{port.getHost().port}/", UUID,
                                                               handler)
        conn = await server.session_opened(UUID)
        expected = [Init(UUID)]
        for i in range(200):
            pcm = bytes([i % 256]) * (320 if i % 50 else 40000)
            session.send_audio(pcm)
            expected.append(AudioMessage(pcm))
            if i % 7 == 0:
                session.send_dtmf("9")
                expected.append(DtmfDigit("9"))
        session.close()
        await handler.wait_for("closed")
        assert conn.messages == expected
        assert conn.violations == []
        assert handler.closed == ["closed (code 1000)"]
    finally:
        await DeferredList([c.when_closed() for c in server.connections])
        await port.stopListening()
