"""Tests for avr.audiosocket: the AudioSocket server protocol."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, LogLevel, formatEvent
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from avr.admissions import Admissions
from avr.audiosocket import AudioSocketFactory, AudioSocketProtocol, CallRefused
from avr.calls import CallManager
from avr.frames import HANGUP_FRAME, Kind, encode_dtmf, encode_frame, encode_uuid
from avr.interfaces import IAudioSocketLeg, ICallRouter, ICallSink
from avr.observers import WebhookObserver
from avr.playout import FrameTicker
from avr.testing.asterisk import Continuous, connect_simulated_asterisk
from avr.testing.webhooks import FakeWebhooks
from fakes import FakeStsConnector

UUID = "b5768917-0f8e-47b3-89df-6b961073e64d"
AUDIO = bytes(range(256)) + bytes(64)


@implementer(ICallSink)
class FakeSink:
    """Records what the leg delivers; optionally fails or hangs up on audio."""

    def __init__(self, leg: Any = None, fail_on_audio: bool = False, hang_up_on_audio: bool = False) -> None:
        self.leg = leg
        self.fail_on_audio = fail_on_audio
        self.hang_up_on_audio = hang_up_on_audio
        self.audio: list[tuple[int, bytes]] = []
        self.dtmf: list[str] = []
        self.gone: list[str] = []
        self.ended: Deferred[str] = Deferred()

    def caller_audio(self, kind: int, payload: bytes) -> None:
        """Record (and maybe fail, or hang up)."""
        self.audio.append((kind, payload))
        if self.fail_on_audio:
            raise RuntimeError("boom")
        if self.hang_up_on_audio:
            self.leg.hang_up()

    def caller_dtmf(self, digit: str) -> None:
        """Record."""
        self.dtmf.append(digit)

    def caller_gone(self, reason: str) -> None:
        """Record and fire ``ended``."""
        self.gone.append(reason)
        self.ended.callback(reason)


@implementer(ICallRouter)
class FakeRouter:
    """Hands out FakeSinks, or refuses/fails when told to."""

    def __init__(self, refuse: str | None = None, fail: bool = False, **sink_options: Any) -> None:
        self.refuse = refuse
        self.fail = fail
        self.sink_options = sink_options
        self.legs: list[Any] = []
        self.sinks: list[FakeSink] = []

    def attach(self, leg: IAudioSocketLeg) -> ICallSink:
        """Record the leg; return a new sink."""
        self.legs.append(leg)
        if self.refuse is not None:
            raise CallRefused(self.refuse)
        if self.fail:
            raise KeyError("router bug")
        sink = FakeSink(leg, **self.sink_options)
        self.sinks.append(sink)
        return sink


class RecordingSocket:
    """Records socket options set on it."""

    def __init__(self) -> None:
        self.options: dict[tuple[int, int], int] = {}

    def setsockopt(self, level: int, option: int, value: int) -> None:
        """Record."""
        self.options[level, option] = value


class RecordingTransport(StringTransport):
    """A StringTransport that keeps each write separately and supports setTcpNoDelay and setTcpKeepAlive."""

    def __init__(self) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 40001))
        self.writes: list[bytes] = []
        self.no_delay = False
        self.keep_alive = False
        self.handle = RecordingSocket()

    def setTcpKeepAlive(self, enabled: bool) -> None:
        """Record SO_KEEPALIVE."""
        self.keep_alive = enabled

    def getHandle(self) -> RecordingSocket:
        """The 'socket'."""
        return self.handle

    def write(self, data: bytes) -> None:
        """Record one write."""
        self.writes.append(data)
        super().write(data)

    def setTcpNoDelay(self, enabled: bool) -> None:
        """Record TCP_NODELAY."""
        self.no_delay = enabled


def connect(router: FakeRouter | None = None, **options: Any) -> tuple[AudioSocketProtocol, RecordingTransport, Clock,
                                                                        FakeRouter]:
    """A protocol from a factory with a Clock, connected to a RecordingTransport."""
    clock = Clock()
    router = router or FakeRouter()
    factory = AudioSocketFactory(router, clock, **options)
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
    transport = RecordingTransport()
    protocol.makeConnection(transport)
    return protocol, transport, clock, router


def lose(protocol: AudioSocketProtocol, error: Exception | None = None) -> None:
    """Deliver connectionLost (a clean FIN by default)."""
    protocol.connectionLost(Failure(error or ConnectionDone()))


def warnings_logged(events: list[LogEvent]) -> list[str]:
    """Formatted events at warn level or above."""
    return [formatEvent(e) for e in events if e.get("log_level") in (LogLevel.warn, LogLevel.error, LogLevel.critical)]


def test_interfaces_verified() -> None:
    """The real leg and the test fakes provide their interfaces."""
    protocol, _, _, router = connect()
    verifyObject(IAudioSocketLeg, protocol)
    verifyObject(ICallRouter, router)
    verifyObject(ICallSink, FakeSink())


def test_connection_sets_nodelay_and_arms_uuid_timer() -> None:
    """TCP_NODELAY is set and one UUID timer is pending; nothing is written."""
    protocol, transport, clock, _ = connect()
    assert transport.no_delay is True
    assert len(clock.getDelayedCalls()) == 1
    assert transport.value() == b""
    assert protocol.connected and protocol.uuid is None


def test_uuid_attaches_and_frames_reach_the_sink() -> None:
    """UUID → attach(leg) with the lower-case UUID; then audio and DTMF go to the sink; nothing is sent back."""
    protocol, transport, clock, router = connect()
    protocol.dataReceived(encode_uuid(UUID.upper()))
    assert router.legs == [protocol] and protocol.uuid == UUID
    assert [c.getTime() for c in clock.getDelayedCalls()] == [1.0]  # the UUID timer is gone; the idle check is due
    protocol.dataReceived(encode_frame(Kind.SLIN8, AUDIO) + encode_frame(Kind.SLIN16, b"\x01\x02\x03"))
    protocol.dataReceived(encode_dtmf("1") + encode_dtmf("#") + encode_dtmf("a"))
    sink = router.sinks[0]
    assert sink.audio == [(Kind.SLIN8, AUDIO), (Kind.SLIN16, b"\x01\x02\x03")]
    assert sink.dtmf == ["1", "#", "A"]
    assert sink.gone == [] and transport.value() == b""


def test_byte_by_byte_stream() -> None:
    """UUID and audio arriving one byte per read are handled like whole frames."""
    protocol, _, _, router = connect()
    data = encode_uuid(UUID) + encode_frame(Kind.SLIN8, AUDIO) + encode_dtmf("5")
    for i in range(len(data)):
        protocol.dataReceived(data[i:i + 1])
    assert router.sinks[0].audio == [(Kind.SLIN8, AUDIO)] and router.sinks[0].dtmf == ["5"]


def test_empty_audio_is_ignored_and_bad_dtmf_is_skipped(log_events: list[LogEvent]) -> None:
    """Zero-length audio carries nothing and is dropped; a non-DTMF byte is logged and skipped; the call goes on."""
    protocol, _, _, router = connect()
    protocol.dataReceived(encode_uuid(UUID) + b"\x10\x00\x00" + encode_dtmf("x") + encode_dtmf("9"))
    sink = router.sinks[0]
    assert sink.audio == [] and sink.dtmf == ["9"] and sink.gone == []
    assert any("DTMF byte 0x78" in t for t in warnings_logged(log_events))


def test_first_frame_must_be_the_uuid(log_events: list[LogEvent]) -> None:
    """Audio before the UUID: logged, only 0x00 is sent, the connection closes, no call is attached."""
    protocol, transport, clock, router = connect()
    protocol.dataReceived(encode_frame(Kind.SLIN8, AUDIO) + encode_uuid(UUID))
    assert transport.writes == [HANGUP_FRAME] and transport.disconnecting
    assert router.legs == [] and clock.getDelayedCalls() == []
    assert any("first frame is SLIN8 (0x10)" in t for t in warnings_logged(log_events))
    lose(protocol)
    assert not protocol.connected


@pytest.mark.parametrize("header", [b"\x10\x01\x40", b"\x12\x02\x80", b"\x03\x00\x01", b"\x00\x00\x05"],
                         ids=["slin8", "slin16", "dtmf", "hangup"])
def test_a_first_header_of_another_kind_is_refused_as_soon_as_it_arrives(
        header: bytes, log_events: list[LogEvent]) -> None:
    """
    An audio, DTMF or hang-up header as the first thing on the connection: refused when its 3 bytes are in, not
    when its payload completes (or at the UUID timeout, if the payload never comes).
    """
    protocol, transport, clock, router = connect()
    protocol.dataReceived(header[:2])
    assert transport.writes == [] and not transport.disconnecting
    protocol.dataReceived(header[2:])
    assert transport.writes == [HANGUP_FRAME] and transport.disconnecting
    assert router.legs == [] and clock.getDelayedCalls() == []
    assert any("not the UUID (0x01)" in t and "closing" in t for t in warnings_logged(log_events))
    protocol.dataReceived(encode_uuid(UUID))
    assert router.legs == []


def test_uuid_timeout_closes_the_connection(log_events: list[LogEvent]) -> None:
    """No UUID within uuid_timeout seconds: the connection is closed with a logged reason."""
    protocol, transport, clock, router = connect(uuid_timeout=3.0)
    clock.advance(2.999)
    assert not transport.disconnecting
    clock.advance(0.002)
    assert transport.disconnecting and transport.writes == [HANGUP_FRAME]
    assert any("sent no UUID within 3.0 s" in t for t in warnings_logged(log_events))
    lose(protocol)
    assert router.legs == [] and clock.getDelayedCalls() == []


def test_connections_get_tcp_keep_alive() -> None:
    """SO_KEEPALIVE is on, with probes after 60 s of silence (not the kernel's 2 hours) where that can be tuned."""
    _, transport, _, _ = connect()
    assert transport.keep_alive is True
    if hasattr(socket, "TCP_KEEPIDLE"):
        assert transport.handle.options == {
            (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE): 60,
            (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL): 10,
            (socket.IPPROTO_TCP, socket.TCP_KEEPCNT): 6,
        }


def _frames_every_20_ms(clock: Clock, seconds: float, send: Any) -> None:
    for _ in range(round(seconds / 0.02)):
        send()
        clock.advance(0.02)


def _run(clock: Clock, seconds: float) -> None:
    """Let ``seconds`` pass in 1 ms steps, as a running reactor would."""
    for _ in range(round(seconds / 0.001)):
        clock.advance(0.001)


def test_a_call_with_no_frame_for_the_idle_timeout_is_hung_up_and_ended(log_events: list[LogEvent]) -> None:
    """
    Audio every 20 ms keeps a call; once Asterisk goes quiet, the call is hung up (0x00) and ended with a logged
    reason between idle_timeout and idle_timeout plus one check (timeout / 4) later.
    """
    protocol, transport, clock, router = connect(idle_timeout=3)
    protocol.dataReceived(encode_uuid(UUID))
    _frames_every_20_ms(clock, 10, lambda: protocol.dataReceived(encode_frame(Kind.SLIN8, AUDIO)))
    sink = router.sinks[0]
    assert sink.gone == [] and len(sink.audio) == 500
    protocol.dataReceived(encode_frame(Kind.SLIN8, AUDIO))
    _run(clock, 2.999)
    assert sink.gone == [] and not transport.disconnecting
    _run(clock, 0.75)
    assert sink.gone == ["no frame either way for 3 s (AUDIOSOCKET_IDLE_TIMEOUT)"]
    assert transport.writes == [HANGUP_FRAME] and transport.disconnecting
    assert any(f"Call {UUID}: no frame to or from Asterisk for 3 s; hanging up" in t
               for t in warnings_logged(log_events))
    lose(protocol)
    assert sink.gone == ["no frame either way for 3 s (AUDIOSOCKET_IDLE_TIMEOUT)"]
    assert clock.getDelayedCalls() == []


def test_audio_sent_to_asterisk_keeps_a_call_whose_caller_is_silent() -> None:
    """
    An avr-made externalMedia leg playing uploaded audio hears nothing while its bridge is silent: the frames avr
    sends count as activity, as they do for Asterisk's own AudioSocket() timeout.
    """
    protocol, transport, clock, router = connect(idle_timeout=3)
    protocol.dataReceived(encode_uuid(UUID))
    _frames_every_20_ms(clock, 10, lambda: protocol.send_audio(Kind.SLIN16, bytes(640)))
    assert router.sinks[0].gone == [] and len(transport.writes) == 500
    _run(clock, 3.75)
    assert router.sinks[0].gone != [] and transport.writes[-1] == HANGUP_FRAME


def test_a_byte_now_and_then_does_not_keep_a_call(log_events: list[LogEvent]) -> None:
    """A slowloris peer trickling one byte every half second (never a whole frame) is ended like a silent one."""
    protocol, _, clock, router = connect(idle_timeout=3)
    protocol.dataReceived(encode_uuid(UUID))
    trickle = iter(encode_frame(Kind.SLIN8, AUDIO))
    for _ in range(8):
        protocol.dataReceived(bytes((next(trickle),)))
        clock.advance(0.5)
    assert router.sinks[0].gone == ["no frame either way for 3 s (AUDIOSOCKET_IDLE_TIMEOUT)"]


def test_a_reactor_stall_longer_than_the_timeout_ends_no_call() -> None:
    """
    The check counts its own runs, not elapsed time: after the reactor was held up (the calls' frames wait unread in
    their sockets) it runs once, so a stall never ends calls that were streaming.
    """
    protocol, _, clock, router = connect(idle_timeout=3)
    protocol.dataReceived(encode_uuid(UUID))
    _run(clock, 0.5)
    clock.advance(10)
    protocol.dataReceived(encode_frame(Kind.SLIN8, AUDIO))
    _frames_every_20_ms(clock, 5, lambda: protocol.dataReceived(encode_frame(Kind.SLIN8, AUDIO)))
    assert router.sinks[0].gone == []


def test_idle_timeout_zero_never_ends_a_call_and_arms_nothing() -> None:
    """AUDIOSOCKET_IDLE_TIMEOUT=0: a silent call lasts (keep-alive still watches the peer); no check is scheduled."""
    protocol, transport, clock, router = connect(idle_timeout=0)
    protocol.dataReceived(encode_uuid(UUID))
    assert clock.getDelayedCalls() == []
    clock.advance(3600)
    assert router.sinks[0].gone == [] and not transport.disconnecting and transport.keep_alive


def test_one_idle_check_serves_every_call_and_stops_with_the_last() -> None:
    """One periodic check for all calls, not a timer per call: it runs while calls are watched, then stops."""
    clock = Clock()
    factory = AudioSocketFactory(FakeRouter(), clock, idle_timeout=30)
    protocols = []
    for n in range(3):
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001 + n))
        protocol.makeConnection(RecordingTransport())
        protocol.dataReceived(encode_uuid(f"b5768917-0f8e-47b3-89df-6b961073e64{n}"))
        protocols.append(protocol)
    assert len(factory.idle) == 3 and len(clock.getDelayedCalls()) == 1
    assert clock.getDelayedCalls()[0].getTime() == 1.0  # checked every second: ended at most 1 s late
    lose(protocols[0])
    protocols[1].hang_up()
    assert len(factory.idle) == 1 and len(clock.getDelayedCalls()) == 1
    lose(protocols[2])
    assert len(factory.idle) == 0 and clock.getDelayedCalls() == []


def test_an_idle_call_ends_like_any_other_end() -> None:
    """Through the real call manager: the idle end closes the STS session and sends call_ended exactly once."""
    clock = Clock()
    sts, webhooks = FakeStsConnector(), FakeWebhooks()
    manager = CallManager(clock=clock, connector=sts, observer=WebhookObserver(webhooks), ticker=FrameTicker(clock),
                          admissions=Admissions(clock), sts_url="ws://sts.example:6030")
    factory = AudioSocketFactory(manager, clock, idle_timeout=5)
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
    transport = RecordingTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(encode_uuid(UUID))
    session = sts.open(UUID)
    _run(clock, 6)
    assert session.closed and len(manager) == 0
    assert webhooks.types(UUID) == ["call_started", "call_ended"]
    assert transport.writes == [HANGUP_FRAME]
    lose(protocol)
    assert webhooks.types(UUID) == ["call_started", "call_ended"] and clock.getDelayedCalls() == []


def test_eof_before_uuid_is_quiet(log_events: list[LogEvent]) -> None:
    """The AudioSocket() app on an unanswered channel connects and closes: no warning, no call, no timer left."""
    protocol, transport, clock, router = connect()
    lose(protocol)
    assert router.legs == [] and clock.getDelayedCalls() == []
    assert warnings_logged(log_events) == []
    assert transport.value() == b""


def test_hangup_frame_ends_the_call_once() -> None:
    """0x00 from the peer: caller_gone('hangup frame'), the connection closes without sending anything."""
    protocol, transport, _, router = connect()
    protocol.dataReceived(encode_uuid(UUID) + HANGUP_FRAME + encode_frame(Kind.SLIN8, AUDIO))
    sink = router.sinks[0]
    assert sink.gone == ["hangup frame"] and sink.audio == []
    assert transport.disconnecting and transport.value() == b""
    assert not protocol.connected
    lose(protocol)
    assert sink.gone == ["hangup frame"]


def test_error_frame_is_logged_and_ends_the_call(log_events: list[LogEvent]) -> None:
    """0xff with code 0x01: the code is logged, the call ends, the connection closes."""
    protocol, transport, _, router = connect()
    protocol.dataReceived(encode_uuid(UUID) + b"\xff\x00\x01\x01")
    assert router.sinks[0].gone == ["error frame (code 0x01)"]
    assert transport.disconnecting
    assert any("error frame (code 0x01)" in t for t in warnings_logged(log_events))


def test_eof_after_uuid_reports_caller_gone_once() -> None:
    """Asterisk hangs up by closing the socket: caller_gone('connection lost: …') exactly once."""
    protocol, _, _, router = connect()
    protocol.dataReceived(encode_uuid(UUID))
    lose(protocol)
    lose(protocol)
    (reason,) = router.sinks[0].gone
    assert reason.startswith("connection lost: ") and "cleanly" in reason
    assert not protocol.connected


def test_reset_after_uuid_reports_caller_gone() -> None:
    """A reset is reported with its message."""
    protocol, _, _, router = connect()
    protocol.dataReceived(encode_uuid(UUID))
    lose(protocol, ConnectionLost("Connection reset by peer"))
    assert router.sinks[0].gone[0].startswith("connection lost:") and "reset" in router.sinks[0].gone[0]


def test_malformed_frame_sends_hangup_and_ends_the_call(log_events: list[LogEvent]) -> None:
    """A bad frame: the reason is logged, 0x00 is sent, the connection closes, caller_gone gets the reason."""
    protocol, transport, _, router = connect()
    protocol.dataReceived(encode_uuid(UUID) + encode_frame(Kind.SLIN8, AUDIO) + b"\x02\x00\x00")
    sink = router.sinks[0]
    assert sink.audio == [(Kind.SLIN8, AUDIO)]  # frames before the bad one are still delivered
    assert transport.writes == [HANGUP_FRAME] and transport.disconnecting
    assert sink.gone == ["malformed frame: unknown message kind 0x02"]
    protocol.dataReceived(encode_frame(Kind.SLIN8, AUDIO))
    lose(protocol)
    assert sink.gone == ["malformed frame: unknown message kind 0x02"] and len(sink.audio) == 1
    assert any("unknown message kind 0x02" in t for t in warnings_logged(log_events))


def test_oversize_audio_is_malformed() -> None:
    """An audio frame over max_payload ends the call with a clear reason."""
    protocol, transport, _, router = connect(max_payload=640)
    protocol.dataReceived(encode_uuid(UUID) + b"\x10\x02\x81")
    assert router.sinks[0].gone == ["malformed frame: SLIN8 (0x10) audio payload of 641 bytes exceeds the limit of 640"]
    assert transport.writes == [HANGUP_FRAME]


def test_malformed_before_uuid_closes_without_a_call() -> None:
    """Garbage instead of a UUID: 0x00 and close, no call."""
    protocol, transport, _, router = connect()
    protocol.dataReceived(b"GET / HTTP/1.1\r\n")
    assert transport.writes == [HANGUP_FRAME] and transport.disconnecting and router.legs == []


def test_send_audio_writes_exactly_one_frame_per_call() -> None:
    """Each send_audio is a single write holding header + payload."""
    protocol, transport, _, _ = connect()
    protocol.dataReceived(encode_uuid(UUID))
    protocol.send_audio(Kind.SLIN8, AUDIO)
    protocol.send_audio(Kind.SLIN16, b"\x01\x02")
    protocol.send_audio(Kind.SLIN8, bytes(65535))
    assert transport.writes == [encode_frame(Kind.SLIN8, AUDIO), b"\x12\x00\x02\x01\x02",
                                encode_frame(Kind.SLIN8, bytes(65535))]


@pytest.mark.parametrize("kind,pcm", [(Kind.DTMF, b"1"), (Kind.HANGUP, b"\x00"), (Kind.UUID, bytes(16)),
                                      (Kind.ERROR, b"\x01"), (0x02, b"\x00\x00"), (Kind.SLIN8, b""),
                                      (Kind.SLIN8, bytes(65536))])
def test_send_audio_refuses_what_asterisk_would_reject(kind: int, pcm: bytes) -> None:
    """Only audio kinds with 1..65535 bytes may be sent (anything else makes Asterisk reset the call)."""
    protocol, transport, _, _ = connect()
    protocol.dataReceived(encode_uuid(UUID))
    with pytest.raises(ValueError):
        protocol.send_audio(kind, pcm)
    assert transport.writes == []


def test_send_audio_after_the_end_is_a_no_op() -> None:
    """Once the connection is lost, send_audio writes nothing."""
    protocol, transport, _, _ = connect()
    protocol.dataReceived(encode_uuid(UUID))
    lose(protocol)
    protocol.send_audio(Kind.SLIN8, AUDIO)
    assert transport.writes == []


def test_hang_up_is_idempotent_and_does_not_report_caller_gone() -> None:
    """hang_up writes 0x00 once and closes; the call that hung up is not told the caller left."""
    protocol, transport, _, router = connect()
    protocol.dataReceived(encode_uuid(UUID))
    protocol.hang_up()
    protocol.hang_up()
    assert transport.writes == [HANGUP_FRAME] and transport.disconnecting and not protocol.connected
    protocol.send_audio(Kind.SLIN8, AUDIO)
    protocol.dataReceived(encode_frame(Kind.SLIN8, AUDIO))
    lose(protocol)
    protocol.hang_up()
    assert transport.writes == [HANGUP_FRAME]
    assert router.sinks[0].gone == [] and router.sinks[0].audio == []


def test_hang_up_from_the_sink_stops_delivery() -> None:
    """A sink that hangs up on the first audio frame gets no more frames from the same read."""
    protocol, transport, _, router = connect(FakeRouter(hang_up_on_audio=True))
    protocol.dataReceived(encode_uuid(UUID) + encode_frame(Kind.SLIN8, AUDIO) * 3)
    assert len(router.sinks[0].audio) == 1
    assert transport.writes == [HANGUP_FRAME]


def test_refused_call_is_logged_and_closed(log_events: list[LogEvent]) -> None:
    """CallRefused from the router: the reason is logged, the connection closes, nothing reaches a sink."""
    protocol, transport, _, router = connect(FakeRouter(refuse="UUID not registered"))
    protocol.dataReceived(encode_uuid(UUID) + encode_frame(Kind.SLIN8, AUDIO))
    assert router.legs == [protocol] and router.sinks == []
    assert transport.writes == [HANGUP_FRAME] and transport.disconnecting
    assert any(f"call {UUID} refused: UUID not registered" in t for t in warnings_logged(log_events))
    lose(protocol)


@pytest.mark.logs_errors(r"the router failed; closing")
def test_router_failure_closes_only_that_connection(log_events: list[LogEvent]) -> None:
    """An unexpected router exception is logged as a failure and closes the connection."""
    protocol, transport, _, _ = connect(FakeRouter(fail=True))
    protocol.dataReceived(encode_uuid(UUID))
    assert transport.disconnecting
    assert any(e.get("log_failure") is not None for e in log_events)


@pytest.mark.logs_errors(r"the call failed on an inbound frame; hanging up")
def test_sink_failure_ends_only_its_call(log_events: list[LogEvent]) -> None:
    """A sink raising on audio: logged, that call is hung up and told it is over; another connection carries on."""
    clock = Clock()
    router = FakeRouter()
    factory = AudioSocketFactory(router, clock)
    protocols, transports = [], []
    for port in (40001, 40002):
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        transport = RecordingTransport()
        protocol.makeConnection(transport)
        protocols.append(protocol)
        transports.append(transport)
    protocols[0].dataReceived(encode_uuid(UUID))
    protocols[1].dataReceived(encode_uuid("43bd824e-4838-4b39-8b7c-b0b7484576fa"))
    router.sinks[0].fail_on_audio = True
    protocols[0].dataReceived(encode_frame(Kind.SLIN8, AUDIO) * 2)
    protocols[1].dataReceived(encode_frame(Kind.SLIN8, AUDIO) * 2)
    assert router.sinks[0].gone == ["internal error"] and len(router.sinks[0].audio) == 1
    assert transports[0].writes == [HANGUP_FRAME] and transports[0].disconnecting
    assert len(router.sinks[1].audio) == 2 and router.sinks[1].gone == [] and not transports[1].disconnecting
    assert any(e.get("log_failure") is not None for e in log_events)


def test_factory_tracks_connections_and_hangs_up_all() -> None:
    """The factory knows the open connections and can hang them all up."""
    protocol, transport, _, _ = connect()
    factory = protocol.factory
    assert factory.connections == {protocol}
    factory.hang_up_all()
    assert transport.writes == [HANGUP_FRAME]
    lose(protocol)
    assert factory.connections == set()


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_loopback_call_with_simulated_asterisk() -> None:
    """Over real loopback TCP: a simulated SIP-like caller streams 10 frames and hangs up; the server echoes them."""
    from twisted.internet import reactor

    class EchoRouter(FakeRouter):
        def attach(self, leg: IAudioSocketLeg) -> ICallSink:
            sink = super().attach(leg)
            original = sink.caller_audio

            def echo(kind: int, payload: bytes) -> None:
                original(kind, payload)
                leg.send_audio(kind, payload)

            sink.caller_audio = echo  # type: ignore[method-assign]
            return sink

    router = EchoRouter()
    port = reactor.listenTCP(0, AudioSocketFactory(router, reactor), interface="127.0.0.1")
    asterisk = None
    try:
        plan = Continuous.from_pcm(bytes(range(256)) * 10, duration=0.2, dtmf=((0.05, "7"),))
        asterisk, done = await connect_simulated_asterisk(reactor, "127.0.0.1", port.getHost().port, plan,
                                                          uuid=UUID)
        reason = await done.addTimeout(5, reactor)
        assert reason == "caller hung up"
        sink = router.sinks[0]
        gone = await sink.ended.addTimeout(5, reactor)
        assert gone.startswith("connection lost") and sink.gone == [gone]
        assert router.legs[0].uuid == UUID
        assert len(sink.audio) == 10 and sink.dtmf == ["7"]
        assert asterisk.violations == []
        assert sum(1 for _, f in asterisk.received if f.kind == Kind.SLIN8) >= 1
    finally:
        if asterisk is not None and asterisk.connected:
            asterisk.transport.abortConnection()
        await port.stopListening()
    assert reactor.getDelayedCalls() == []  # no timer left behind (UUID timeout, pacing, connect timeout)


def test_a_read_that_looks_like_a_whole_frame_is_not_taken_as_one_while_a_frame_is_pending() -> None:
    """
    The one-frame-per-read shortcut applies only at a frame boundary: the rest of a split frame can look exactly
    like a whole audio frame, and must still be read as the rest of the pending one.
    """
    protocol, _, _, router = connect()
    protocol.dataReceived(encode_uuid(UUID))
    payload = bytearray(range(200))
    payload[10:13] = b"\x10\x00\xbb"  # bytes 13.. of the frame read as a header announcing the 187 bytes that follow
    frame = encode_frame(Kind.SLIN8, bytes(payload))
    protocol.dataReceived(frame[:13])
    protocol.dataReceived(frame[13:])
    protocol.dataReceived(encode_frame(Kind.SLIN8, AUDIO))  # one whole frame at a boundary: the shortcut
    assert router.sinks[0].audio == [(Kind.SLIN8, bytes(payload)), (Kind.SLIN8, AUDIO)]
    assert router.sinks[0].gone == []
