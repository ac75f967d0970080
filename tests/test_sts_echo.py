"""The built-in echo agent used when no STS_URL is configured."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from zope.interface.verify import verifyObject

from avr.interfaces import IStsConnector, IStsSession
from avr.sts.echo import EchoStsConnector, EchoStsSession
from avr.testing.sts import RecordingStsHandler

UUID = "935652e3-1a2b-4c3d-8e9f-0123456789ab"


def open_echo(delay=0.0, **connector_kwargs):
    """An echo session on a Clock, with a recording handler."""
    clock = Clock()
    handler = RecordingStsHandler()
    sessions: list = []
    with capturedLogs() as events:
        EchoStsConnector(clock, delay=delay, **connector_kwargs).connect(None, UUID, handler).addCallback(
            sessions.append)
    return sessions[0], handler, clock, events


def test_providers_implement_the_interfaces():
    """The echo connector is an IStsConnector and its session an IStsSession."""
    session, *_ = open_echo()
    assert isinstance(session, EchoStsSession)
    assert verifyObject(IStsSession, session)
    assert verifyObject(IStsConnector, EchoStsConnector(Clock()))


def test_the_echo_comes_back_at_the_rate_it_went_in():
    """The session's input and output rates are both the configured one (STS_SAMPLE_RATE)."""
    assert (open_echo()[0].input_rate, open_echo()[0].output_rate) == (8000, 8000)
    session, *_ = open_echo(sample_rate=16000)
    assert (session.input_rate, session.output_rate) == (16000, 16000)


def test_connect_fires_at_once_and_logs_the_echo_agent():
    """The session is ready immediately; the log says the echo agent is in use, once, naming the call."""
    _, _, _, events = open_echo()
    lines = [e for e in events if "echo agent" in e["log_format"]]
    assert len(lines) == 1
    assert lines[0]["call_id"] == UUID


def test_caller_audio_comes_straight_back():
    """Every chunk of caller audio is handed back as agent audio, unchanged and in order."""
    session, handler, _, _ = open_echo()
    session.send_audio(b"\x01\x02" * 160)
    session.send_audio(b"\x03")
    assert handler.events == [("audio", b"\x01\x02" * 160), ("audio", b"\x03")]


def test_dtmf_is_ignored():
    """DTMF produces nothing."""
    session, handler, _, _ = open_echo()
    session.send_dtmf("5")
    assert handler.events == []


def test_close_reports_closed_once_and_stops_echoing():
    """close() reports sts_closed('closed') once; audio after it is not echoed."""
    session, handler, _, _ = open_echo()
    session.close()
    session.close()
    session.send_audio(b"late")
    assert handler.events == [("closed", "closed")]


def test_delayed_echo_uses_the_clock_and_close_cancels_pending():
    """With a delay, audio comes back that much later on the injected clock; close() cancels what is pending."""
    session, handler, clock, _ = open_echo(delay=0.5)
    session.send_audio(b"a")
    clock.advance(0.25)
    session.send_audio(b"b")
    clock.advance(0.25)
    assert handler.audio == b"a"
    clock.advance(0.25)
    assert handler.audio == b"ab"
    session.send_audio(b"c")
    session.close()
    assert clock.getDelayedCalls() == []
    clock.advance(1)
    assert handler.events == [("audio", b"a"), ("audio", b"b"), ("closed", "closed")]
