"""The legacy HTTP STS client: one full-duplex streaming POST per call, against the fake legacy STS."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.web.server import Site
from zope.interface.verify import verifyObject

from avr.interfaces import IStsConnector, IStsSession
from avr.sts.errors import StsConnectError
from avr.sts.http import HttpStsConnector, HttpStsSession, request_head
from avr.testing.sts import FakeHttpStsResource, RecordingStsHandler, fake_http_sts_site, make_certificates

UUID = "935652e3-1a2b-4c3d-8e9f-0123456789ab"
URL = "http://sts.example:8080/speech-to-speech-stream?from=2000"


def connecting(resource=None, site=fake_http_sts_site, **connector_kwargs):
    """A connector on a memory reactor, the fake legacy STS listening on port 8080, and a pending attempt."""
    reactor = MemoryReactorClock()
    resource = resource if resource is not None else FakeHttpStsResource(echo=False)
    if site is not None:
        reactor.listenTCP(8080, site(resource, reactor))
    handler = RecordingStsHandler()
    outcome: list = []
    HttpStsConnector(reactor, **connector_kwargs).connect(URL, UUID, handler).addBoth(outcome.append)
    return reactor, resource, handler, outcome


def open_session(resource=None, site=fake_http_sts_site):
    """An open session with the fake STS, in memory."""
    reactor, resource, handler, outcome = connecting(resource, site)
    pump = iosim.ConnectionCompleter(reactor).succeedOnce()
    pump.flush()
    (session,) = outcome
    return session, resource, handler, pump, reactor


def test_providers_implement_the_interfaces():
    """The session is an IStsSession, the connector an IStsConnector."""
    session, *_ = open_session()
    assert verifyObject(IStsSession, session)
    assert (session.input_rate, session.output_rate) == (8000, 8000)
    assert verifyObject(IStsConnector, HttpStsConnector(MemoryReactorClock()))


def test_the_session_states_the_configured_rate():
    """The raw PCM is at STS_SAMPLE_RATE both ways: the session says so."""
    reactor, _, _, outcome = connecting(sample_rate=16000)
    iosim.ConnectionCompleter(reactor).succeedOnce().flush()
    (session,) = outcome
    assert (session.input_rate, session.output_rate) == (16000, 16000)


def test_request_carries_x_uuid_path_and_query():
    """One POST per call with X-UUID, the URL's path and query, and a chunked body."""
    session, resource, _, _, _ = open_session()
    assert isinstance(session, HttpStsSession)
    (call,) = resource.sessions
    assert call.uuid == UUID
    assert call.path == "/speech-to-speech-stream"
    assert call.args == {"from": ["2000"]}
    assert call.request.method == b"POST"
    assert call.request.requestHeaders.getRawHeaders(b"transfer-encoding") == [b"chunked"]
    assert call.violations == []


def test_request_head_is_exactly_avr_cores():
    """The header is spelled X-UUID, the Host omits default ports and the body is chunked."""
    head = request_head("https://sts.example/stream?a=1", UUID).decode()
    assert head.startswith("POST /stream?a=1 HTTP/1.1\r\nHost: sts.example\r\n")
    assert f"\r\nX-UUID: {UUID}\r\n" in head
    assert "\r\nTransfer-Encoding: chunked\r\n" in head
    assert head.endswith("\r\n\r\n")
    assert "Host: [::1]:8080\r\n" in request_head("http://[::1]:8080/", UUID).decode()


def test_caller_audio_streams_as_it_is_sent():
    """Each send_audio reaches the STS while the request is still open."""
    session, resource, _, pump, _ = open_session()
    call = resource.sessions[0]
    session.send_audio(b"\x01\x02" * 160)
    pump.flush()
    assert call.received == b"\x01\x02" * 160
    session.send_audio(b"\x03")
    pump.flush()
    assert call.chunks == [320, 1]
    assert not call.body_ended


def test_agent_audio_streams_back_while_the_request_is_open():
    """Response audio reaches the call as it arrives, any size, before the request ends (full duplex)."""
    session, resource, handler, pump, _ = open_session()
    call = resource.sessions[0]
    call.send_audio(b"\x10" * 1001, chunk_size=500)
    pump.flush()
    assert handler.audio == b"\x10" * 1001
    session.send_audio(b"more")
    call.send_audio(b"\x20" * 3)
    pump.flush()
    assert handler.audio == b"\x10" * 1001 + b"\x20" * 3
    assert call.received == b"more"
    assert handler.closed == []


def test_echo_mode_reflects_caller_audio():
    """The fake's echo mode returns each piece of caller audio."""
    session, _, handler, pump, _ = open_session(FakeHttpStsResource(echo=True))
    session.send_audio(b"abc")
    session.send_audio(b"de")
    pump.flush()
    assert handler.audio == b"abcde"


def test_dtmf_is_not_sent():
    """The legacy protocol has no DTMF channel: nothing goes on the wire."""
    session, resource, handler, pump, _ = open_session()
    session.send_dtmf("5")
    pump.flush()
    assert resource.sessions[0].received == b""
    assert handler.events == []


def test_close_finishes_the_request_and_reports_once():
    """close() ends the request body, stops the response, reports sts_closed once, leaves nothing scheduled."""
    session, resource, handler, pump, reactor = open_session()
    call = resource.sessions[0]
    session.close()
    assert handler.closed == ["closed"]
    session.close()
    session.send_audio(b"late")
    pump.flush()
    assert call.body_ended
    assert call.received == b""
    assert handler.closed == ["closed"]
    assert pump.clientIO.disconnected
    assert reactor.getDelayedCalls() == []


def test_sts_ending_the_response_ends_the_session():
    """When the STS ends its response, the session ends and the request body is finished."""
    session, resource, handler, pump, _ = open_session()
    call = resource.sessions[0]
    call.send_audio(b"bye")
    call.finish()
    pump.flush()
    assert handler.events == [("audio", b"bye"), ("closed", "the STS ended the audio stream")]
    session.send_audio(b"late")
    pump.flush()
    assert call.received == b""


def test_non_2xx_is_an_error_then_the_end():
    """An STS answering 500 produces sts_error with the status, then sts_closed."""
    session, resource, handler, pump, _ = open_session(FakeHttpStsResource(status=500))
    assert handler.events == [("error", "STS answered HTTP 500 Internal Server Error"),
                              ("closed", "STS answered HTTP 500")]
    session.send_audio(b"late")
    pump.flush()
    assert resource.sessions[0].received == b""


def test_dropped_connection_is_reported_once():
    """The STS vanishing mid-stream ends the session as a lost connection."""
    session, resource, handler, pump, _ = open_session()
    resource.sessions[0].send_audio(b"x")
    pump.flush()
    resource.sessions[0].drop()
    pump.flush()
    assert handler.events[0] == ("audio", b"x")
    assert [e[0] for e in handler.events[1:]] == ["closed"]
    assert handler.closed[0].startswith("connection lost") or handler.closed[0] == "connection closed by the STS"
    session.close()
    assert len(handler.closed) == 1


def test_fake_also_works_on_a_plain_site():
    """Served by a plain Site, the fake only sees the body when the request ends (twisted.web's buffering)."""
    session, resource, handler, pump, _ = open_session(site=lambda r, reactor: Site(r, reactor=reactor))
    assert resource.sessions == []
    session.send_audio(b"abc")
    session.close()
    pump.flush()
    (call,) = resource.sessions
    assert call.uuid == UUID
    assert call.received == b"abc"
    assert call.body_ended


def test_refused_connection_fails_readably():
    """A refused connection is a StsConnectError saying so."""
    reactor, _, handler, outcome = connecting(site=None)
    iosim.ConnectionCompleter(reactor).failOnce(Failure(ConnectionRefusedError()))
    reactor.advance(0.3)
    (failure,) = outcome
    assert failure.check(StsConnectError)
    assert failure.value.reason == "connection refused"
    assert reactor.getDelayedCalls() == []
    assert handler.events == []


def test_connect_timeout_on_the_clock():
    """No connection within the timeout fails on the injected clock and abandons the attempt."""
    reactor, _, handler, outcome = connecting(site=None, connect_timeout=2.0)
    reactor.advance(1.99)
    assert outcome == []
    reactor.advance(0.01)
    (failure,) = outcome
    assert failure.value.reason == "timed out after 2 s"
    assert reactor.connectors[0].stoppedConnecting
    assert reactor.getDelayedCalls() == []


def test_connection_closed_before_open_fails_the_attempt():
    """A TLS-less server closing at once is a connect failure for https (open waits for the handshake)."""
    reactor = MemoryReactorClock()

    class HangUp(Protocol):
        def connectionMade(self):
            self.transport.loseConnection()

    reactor.listenTCP(8443, Factory.forProtocol(HangUp))
    outcome: list = []
    HttpStsConnector(reactor).connect("https://sts.example:8443/", UUID, RecordingStsHandler()).addBoth(
        outcome.append)
    iosim.ConnectionCompleter(reactor).succeedOnce().flush()
    (failure,) = outcome
    assert failure.check(StsConnectError)
    assert reactor.getDelayedCalls() == []


def test_cancelling_the_attempt_abandons_it():
    """Cancelling the connect Deferred stops the TCP attempt and the timer."""
    reactor = MemoryReactorClock()
    d = HttpStsConnector(reactor).connect(URL, UUID, RecordingStsHandler())
    d.cancel()
    failures: list = []
    d.addErrback(failures.append)
    assert failures[0].check(CancelledError)
    assert reactor.getDelayedCalls() == []


@pytest.mark.parametrize("url", ["http://", "ftp://host/", "http://host:notaport/"])
def test_invalid_url_fails_without_connecting(url):
    """URLs that cannot be used are StsConnectErrors."""
    reactor = MemoryReactorClock()
    failures: list = []
    HttpStsConnector(reactor).connect(url, UUID, RecordingStsHandler()).addErrback(failures.append)
    assert failures[0].check(StsConnectError)
    assert reactor.tcpClients == []


def test_bad_response_ends_the_session():
    """A response the parser refuses ends the session with the reason."""
    session, _, handler, pump, _ = open_session()
    session.exchange.dataReceived(b"garbage\r\n\r\n")
    assert handler.closed == ["bad response from the STS (bad HTTP status line)"]


# -- real loopback sockets


async def _loopback(scheme, listen, connector_for):
    """Stream audio both ways through a real socket to the fake legacy STS (echo), then close."""
    from twisted.internet import reactor

    resource = FakeHttpStsResource(echo=True)
    port = listen(reactor, fake_http_sts_site(resource, reactor))
    handler = RecordingStsHandler()
    try:
        url = f"{scheme}://127.0.0.1:{port.getHost().port}/speech-to-speech-stream"
        session = await connector_for(reactor).connect(url, UUID, handler)
        call = await resource.session_opened(UUID)
        session.send_audio(b"\x01\x02" * 160)
        await handler.wait_for("audio", 320)
        assert handler.audio == b"\x01\x02" * 160
        session.close()
        await call.when_ended()
        assert call.body_ended and call.received == b"\x01\x02" * 160
        assert handler.closed == ["closed"]
    finally:
        await resource.when_disconnected()
        await port.stopListening()


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_loopback_http_stream():
    """A real http:// legacy session: X-UUID, full-duplex streaming, clean end."""
    await _loopback("http", lambda reactor, site: reactor.listenTCP(0, site, interface="127.0.0.1"),
                    lambda reactor: HttpStsConnector(reactor))


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_loopback_https_with_trusted_ca(tmp_path):
    """https:// with the configured CA and the right host: works."""
    certificates = make_certificates()
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(certificates.ca_pem)
    await _loopback(
        "https",
        lambda reactor, site: reactor.listenSSL(0, site, certificates.server_options(), interface="127.0.0.1"),
        lambda reactor: HttpStsConnector(reactor, trust_root=str(ca_file)),
    )


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_loopback_https_untrusted_certificate_is_refused():
    """https:// to a certificate the platform does not trust fails to connect, naming the certificate problem."""
    from twisted.internet import reactor

    certificates = make_certificates()
    resource = FakeHttpStsResource()
    port = reactor.listenSSL(0, fake_http_sts_site(resource, reactor), certificates.server_options(),
                             interface="127.0.0.1")
    try:
        with pytest.raises(StsConnectError, match="certificate verify failed"):
            await HttpStsConnector(reactor).connect(f"https://127.0.0.1:{port.getHost().port}/", UUID,
                                                    RecordingStsHandler())
        assert resource.sessions == []
    finally:
        await resource.when_disconnected()
        await port.stopListening()
