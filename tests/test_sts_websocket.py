"""The AVR STS WebSocket client: protocol behaviour in memory, the connector's failures, and real loopback sockets."""

from __future__ import annotations

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

from avr.config import ConfigError
from avr.interfaces import IStsConnector, IStsHandler, IStsSession
from avr.sts.codec import AudioMessage, DtmfDigit, Init, UnknownMessage
from avr.sts.errors import StsConnectError
from avr.sts.websocket import StsClientProtocol, WebSocketStsConnector, disable_autobahn_timers
from avr.testing.sts import FakeStsServerFactory, RecordingStsHandler, make_certificates

UUID = "935652e3-1a2b-4c3d-8e9f-0123456789ab"
URL = "ws://sts.example:9000/agent?from=2000&to=5001"


def pair(server_factory=None, handler=None, clock=None, greet=True, **protocol_kwargs):
    """A client protocol and a fake STS connection joined in memory (handshake done when ``greet``)."""
    clock = clock or Clock()
    server_factory = server_factory or FakeStsServerFactory(clock)
    handler = handler or RecordingStsHandler()
    client_factory = WebSocketClientFactory(URL, reactor=clock)
    disable_autobahn_timers(client_factory)
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
    dropped = [e for e in events if e["log_format"] == "STS for call {uuid} is not open: {what} not sent"]
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
    assert handler.events == [("error", "provider failed"), ("closed", "closed by the STS (code 1011: provider failed)")]


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
    connector = WebSocketStsConnector(reactor)
    handler = RecordingStsHandler()
    outcome: list = []
    with capturedLogs() as events:
        connector.connect("ws://sts.example:9000/agent?from=2000&api_key=s3cret", UUID, handler).addBoth(outcome.append)
        assert outcome == []
        pump = iosim.ConnectionCompleter(reactor).succeedOnce()
        pump.flush()
    session = outcome[0]
    assert isinstance(session, StsClientProtocol)
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


async def _loopback_session(url_for, listen, connector):
    """Open a session through ``connector`` to a fake echo STS served by ``listen``, exchange audio, close."""
    from twisted.internet import reactor

    server = FakeStsServerFactory(reactor, echo=True)
    port = listen(reactor, server)
    handler = RecordingStsHandler()
    try:
        session = await connector(reactor).connect(url_for(port.getHost().port), UUID, handler)
        conn = await server.session_opened(UUID)
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
@pytest_twisted.ensureDeferred
async def test_loopback_ws_session():
    """A real ws:// session with the fake STS: init first, audio echoed, DTMF delivered, clean close."""
    await _loopback_session(
        lambda port: f"ws://127.0.0.1:{port}/?from=2000",
        lambda reactor, server: reactor.listenTCP(0, server, interface="127.0.0.1"),
        lambda reactor: WebSocketStsConnector(reactor),
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
