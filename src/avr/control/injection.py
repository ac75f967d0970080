"""
Uploaded audio played into Asterisk through an AudioSocket connection that Asterisk opens to avr (an ARI
externalMedia channel whose ``data`` is a fresh UUID): `PcmInjector` expects that UUID in the admissions registry,
and `InjectedPlayback` feeds the connection, paced, then hangs it up.
"""

from __future__ import annotations

from attrs import define
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from avr.admissions import Admissions
from avr.frames import audio_kind_for_rate
from avr.interfaces import IAdmission, IAudioInjector, IAudioSocketLeg, ICallSink
from avr.playout import FrameTicker, PlaybackQueue, frame_bytes_for_rate


@implementer(IAdmission, ICallSink)
@define(eq=False)
class InjectedPlayback:
    """Feeds announced PCM to one AudioSocket connection, paced, then hangs it up (see `PcmInjector.expect`)."""

    uuid: str
    pcm: bytes
    rate: int
    done: Deferred[None]
    ticker: FrameTicker
    leg: IAudioSocketLeg | None = None
    _audio_kind: int = 0
    _queue: PlaybackQueue | None = None
    #: Frames sent more than 20 ms after their slot (`avr.playout.Player`).
    late_frames: int = 0
    kind = "playback"
    log = Logger()

    def admit(self, leg: IAudioSocketLeg) -> ICallSink:
        """The connection arrived: start playing (`IAdmission.admit`)."""
        self.leg = leg
        self._audio_kind = audio_kind_for_rate(self.rate)
        self._queue = PlaybackQueue(frame_bytes_for_rate(self.rate), max_frames=2**31)
        self._queue.feed(self.pcm)
        self.pcm = b""
        self.ticker.add(self)
        return self

    def expired(self, reason: Failure) -> None:
        """No connection came in time, or the server is shutting down: the playback fails with ``reason``."""
        if reason.check(TimeoutError):
            reason = Failure(TimeoutError(f"no AudioSocket connection for playback {self.uuid}"))
        self.stop(reason)

    def play_frame(self) -> bool:
        """Send the next frame; after the last one, hang up and report success. :return: whether a frame was sent."""
        assert self._queue is not None and self.leg is not None
        frame = self._queue.next_frame()
        if frame is not None:
            self.leg.send_audio(self._audio_kind, frame)
            return True
        if self._queue.idle:
            self._finish(None)
        return False

    def missed(self, ticks: int) -> None:
        """Ticks skipped under overload only delay the end of an uploaded recording: all of it is still played."""

    def stop(self, reason: Failure | None) -> None:
        """Stop early (cancelled, or the connection dropped)."""
        self._finish(reason)

    def _finish(self, result: Failure | None) -> None:
        self.ticker.discard(self)
        if self.leg is not None and self.leg.connected:
            self.leg.hang_up()
        if self.done.called:
            return
        if result is None:
            self.done.callback(None)
        else:
            self.done.errback(result)

    def caller_audio(self, kind: int, payload: bytes) -> None:
        """Audio from the media channel is not needed."""

    def caller_dtmf(self, digit: str) -> None:
        """DTMF on the media channel is not needed."""

    def caller_gone(self, reason: str) -> None:
        if not self.done.called:
            self.stop(Failure(ConnectionError(f"playback connection ended early: {reason}")))


@implementer(IAudioInjector)
@define(eq=False)
class PcmInjector:
    """
    Plays PCM through the AudioSocket connection that arrives with an announced UUID (`IAudioInjector`).

    :param admissions: where the playbacks wait for their connection.
    :param ticker: paces the frames.
    :param timeout: seconds an announced playback waits for its AudioSocket connection.
    """

    admissions: Admissions
    ticker: FrameTicker
    timeout: float = 10.0

    def expect(self, uuid: str, pcm: bytes, rate: int) -> Deferred[None]:
        """See `IAudioInjector.expect`."""
        audio_kind_for_rate(rate)  # validates the rate

        def cancel(d: Deferred[None]) -> None:
            self.admissions.withdraw(uuid, playback)
            playback.stop(Failure(CancelledError(f"playback {uuid} cancelled")))

        done: Deferred[None] = Deferred(cancel)
        playback = InjectedPlayback(uuid=uuid, pcm=pcm, rate=rate, done=done, ticker=self.ticker)
        self.admissions.expect(uuid, playback, self.timeout)
        return done
