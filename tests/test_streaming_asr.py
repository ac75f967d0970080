"""
asterisk-api's streaming ASR client (avr.speech.streaming_asr) against the fake Qwen3-ASR server, in memory
(iosim, task.Clock) and over loopback: the config/flush/reset messages, transcriptions, reconnects, stop.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel
from twisted.test import iosim

from avr.speech.streaming_asr import AsrError, StreamingAsrSession, Transcription, asr_dialer
from avr.testing.asr import BUFFER_SIZE, FakeAsrServerFactory

URL = "ws://asr.example:8100/ws/transcribe"
SPEECH = b"\x10\x00" * (BUFFER_SIZE // 2)  # 450 ms that is not silence


class Net:
    """Joins each connection the session dials to a new connection of the fake server, in memory."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.server = FakeAsrServerFactory(clock)
        self.pumps: list[iosim.IOPump] = []
        self.refuse = False
        self.dials = 0

    def dial(self, factory: Any) -> Deferred:
        self.dials += 1
        if self.refuse:
            return fail(ConnectionRefusedError("Connection refused"))
        client = factory.buildProtocol(None)
        server = self.server.buildProtocol(None)
        self.pumps.append(iosim.connect(server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client),
                                        greet=False, clock=self.clock))
        return client.when_opened()

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()

    @property
    def connection(self) -> Any:
        return self.server.connections[-1]


def session(language: str = "English", **kwargs: Any) -> tuple[StreamingAsrSession, Net, list, list]:
    clock = Clock()
    net = Net(clock)
    results: list[Transcription] = []
    lost: list[str] = []
    asr = StreamingAsrSession("call-1", URL, language, clock, net.dial, results.append, lost.append, **kwargs)
    return asr, net, results, lost


def run(net: Net, coroutine: Any) -> list:
    outcome: list = []
    Deferred.fromCoroutine(coroutine).addBoth(outcome.append)
    net.flush()
    return outcome


def test_config_first_then_audio_partials_and_one_final_at_stop() -> None:
    """config, binary audio, a partial per 450 ms, flush at stop answered by is_final — delivered once (D9)."""
    asr, net, results, _ = session()
    assert run(net, asr.start()) == [None]
    server = net.connection
    assert server.actions == [{"action": "config", "language": "English"}]
    asr.send_audio(SPEECH[:6400])
    asr.send_audio(SPEECH[6400:])
    net.flush()
    assert bytes(server.received_audio) == SPEECH
    assert results == [Transcription("w1 w2 w3 w4", is_partial=True, is_final=False)]
    asr.send_audio(SPEECH[:3200])
    stopped = run(net, asr.stop())
    assert stopped == [None]
    assert server.actions[-1] == {"action": "flush"}
    assert results[1:] == [Transcription("w1 w2 w3 w4 w5", is_partial=False, is_final=True)]
    assert server.closed.called and not net.clock.getDelayedCalls()


def test_auto_language_sends_no_config_and_reset_is_sent() -> None:
    """ASR_LANGUAGE=auto: no config message (the server detects per chunk); reset clears the server's window."""
    asr, net, _, _ = session("auto")
    run(net, asr.start())
    asr.reset()
    net.flush()
    assert net.connection.actions == [{"action": "reset"}]
    assert net.connection.sent[-1] == {"status": "buffer_reset"}


def test_a_failed_start_never_retries() -> None:
    """The first connection fails: start fails with asterisk-api's text; no orphan reconnect loop (D10)."""
    asr, net, _, lost = session()
    net.refuse = True
    outcome = run(net, asr.start())
    assert outcome[0].check(AsrError)
    assert str(outcome[0].value).startswith("Failed to start ASR: ")
    net.clock.advance(60)
    assert net.dials == 1 and lost == [] and not net.clock.getDelayedCalls()
    asr.send_audio(SPEECH)
    assert asr.dropped == 1


def test_reconnects_after_a_drop_and_resends_config() -> None:
    """The server drops: audio meanwhile is dropped; 2 s later a new connection, config again, audio flows."""
    asr, net, results, _ = session()
    run(net, asr.start())
    net.connection.drop()
    net.flush()
    asr.send_audio(SPEECH)
    assert asr.dropped == 1
    net.clock.advance(1.9)
    assert net.dials == 1
    net.clock.advance(0.1)
    net.flush()
    assert net.dials == 2 and len(net.server.connections) == 1
    server = net.connection
    assert server.actions == [{"action": "config", "language": "English"}]
    asr.send_audio(SPEECH)
    net.flush()
    assert bytes(server.received_audio) == SPEECH and results[-1].is_partial


@pytest.mark.logs_errors("giving up after 10 reconnect attempts")
def test_gives_up_after_ten_failed_reconnects() -> None:
    """The server stays away: ten attempts 2 s apart, then on_lost once and nothing more."""
    asr, net, _, lost = session()
    run(net, asr.start())
    net.refuse = True
    net.connection.drop()
    net.flush()
    for _ in range(10):
        net.clock.advance(2)
    assert net.dials == 11 and len(lost) == 1 and "10 reconnect attempts failed" in lost[0]
    net.clock.advance(60)
    assert net.dials == 11 and not net.clock.getDelayedCalls()


def test_stop_during_an_outage_cancels_the_reconnect() -> None:
    """Stopping while a reconnect is pending: no attempt follows."""
    asr, net, _, _ = session()
    run(net, asr.start())
    net.connection.drop()
    net.flush()
    assert run(net, asr.stop()) == [None]
    net.clock.advance(60)
    assert net.dials == 1


def test_stop_waits_at_most_the_flush_timeout() -> None:
    """A server that never answers the flush: the session closes after 2 s anyway."""
    asr, net, results, _ = session()
    run(net, asr.start())
    server = net.connection
    server.onMessage = lambda payload, binary: None  # deaf from now on
    outcome = run(net, asr.stop())
    assert outcome == []
    net.clock.advance(1.9)
    net.flush()
    assert outcome == []
    net.clock.advance(0.1)
    net.flush()
    assert outcome == [None] and results == [] and server.closed.called


def test_server_messages_that_are_not_transcriptions(log_events: list[LogEvent]) -> None:
    """status and error messages (both shapes) are logged; garbage is ignored with a warning; flags default false."""
    asr, net, results, _ = session()
    run(net, asr.start())
    server = net.connection
    server.send_raw(b'{"code": "WEBSOCKET_ERROR", "message": "model crashed", "statusCode": 500}')
    server.send_raw(b'{"error": "bad audio"}')
    server.send_raw(b"not json")
    server.send_raw(b"[1, 2]")
    server.send_raw(b'{"text": "hello"}')
    server.send_raw(b"\x00\x01", binary=True)
    net.flush()
    assert results == [Transcription("hello", False, False)]
    warnings = [e["log_format"] for e in log_events if e["log_level"] == LogLevel.warn]
    assert sum("ASR error" in w for w in warnings) == 2
    assert sum("ignoring a message" in w for w in warnings) == 2
    assert any("ASR status" in e["log_format"] and e.get("status") == "configured" for e in log_events)


def test_audio_is_dropped_while_the_socket_is_full() -> None:
    """The transport says its buffers are full (pauseProducing): audio is dropped and counted, not queued."""
    asr, net, _, _ = session()
    run(net, asr.start())
    client = net.pumps[0].client
    client.pauseProducing()
    asr.send_audio(SPEECH)
    client.resumeProducing()
    asr.send_audio(SPEECH)
    net.flush()
    assert asr.dropped == 1 and bytes(net.connection.received_audio) == SPEECH


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_over_loopback() -> None:
    """A real socket to the fake server: config, audio, partial, flush, final, closed."""
    from twisted.internet import reactor

    server = FakeAsrServerFactory(reactor)
    port = reactor.listenTCP(0, server, interface="127.0.0.1")
    results: list[Transcription] = []
    got_partial: Deferred = Deferred()

    def collect(result: Transcription) -> None:
        results.append(result)
        if result.is_partial and not got_partial.called:
            got_partial.callback(None)

    asr = StreamingAsrSession("call-1", f"ws://127.0.0.1:{port.getHost().port}/ws/transcribe", "English", reactor,
                              asr_dialer(reactor), collect)
    try:
        await asr.start()
        asr.send_audio(SPEECH)
        await got_partial.addTimeout(5, reactor)
        await asr.stop()
        assert [r.is_final for r in results] == [False, True]
        assert server.gone and server.gone[0].actions == [{"action": "config", "language": "English"},
                                                          {"action": "flush"}]
    finally:
        await port.stopListening()
