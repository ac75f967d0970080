"""
Playback: ARI media (`Playbacks.play`) and uploaded PCM through a media leg (`Playbacks.play_pcm`, see
`avr.control.media_leg`). Both answer once the audio has started; ``playback.started`` and ``playback.finished``
(``status`` ``done``, ``failed`` or ``stopped``) are published once each, in that order.
"""

from __future__ import annotations

from typing import Any, Callable

from attrs import define, field
from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.interfaces import IReactorTime

from avr.ari.client import path_segment
from avr.ari.errors import AriError
from avr.control.ari_link import AriLink
from avr.control.call_registry import CallRegistry, require_stasis
from avr.control.errors import Conflict, Invalid, NotFound, Unavailable
from avr.control.media_leg import MediaLeg, MediaLegs
from avr.control.records import MEDIA_SCHEMES, SLIN_FORMATS, CallRecord, Playback
from avr.interfaces import IAudioInjector


def check_media(media: Any) -> list[str]:
    """
    ``media`` (one URI or a list) as a non-empty list of URIs that make one ARI playlist and that Asterisk plays
    to the end (another scheme is accepted but never finishes, and a comma would split a URI), else `Invalid`.
    """
    items = [media] if isinstance(media, str) else media
    if not isinstance(items, list) or not items:
        raise Invalid("media must be a media URI or a non-empty list of them")
    for item in items:
        if not isinstance(item, str) or not item or "," in item or item.strip() != item:
            raise Invalid("each media URI must be a non-empty string without commas or surrounding spaces")
        if not item.startswith(MEDIA_SCHEMES):
            raise Invalid(f"unsupported media {item!r}: use one of the schemes {', '.join(MEDIA_SCHEMES)}")
    return list(items)


@define(eq=False)
class Playbacks:
    """
    What is playing to calls.

    :param registry: the calls, and where the events go.
    :param ari: the way to Asterisk.
    :param clock: creation times.
    :param legs: opens the media legs that carry uploaded audio.
    :param injector: plays PCM through the AudioSocket connection of a leg (``None``: `play_pcm` is unavailable).
    :param new_id: makes the ids of ARI playbacks.
    :param pcm_lead_in: seconds of silence played before uploaded audio, so that the moment between Asterisk
        connecting the media channel and avr bridging it (when Asterisk drops what it receives) loses no audio.
    """

    registry: CallRegistry
    ari: AriLink
    clock: IReactorTime
    legs: MediaLegs
    injector: IAudioInjector | None
    new_id: Callable[[], str]
    pcm_lead_in: float = 0.3
    _playbacks: dict[str, Playback] = field(factory=dict, init=False)
    #: The legs of uploaded-audio playbacks, by playback id (= the leg's UUID).
    _legs: dict[str, MediaLeg] = field(factory=dict, init=False)
    #: One uploaded-audio setup at a time per call.
    _locks: dict[str, DeferredLock] = field(factory=dict, init=False)
    #: `when_finished` waiters, by playback id.
    _finish_waiters: dict[str, list[Deferred]] = field(factory=dict, init=False)

    @property
    def handlers(self) -> dict[str, Callable[[dict], None]]:
        """The ARI events this component applies, by type."""
        return {"PlaybackStarted": self._on_playback_started, "PlaybackFinished": self._on_playback_finished}

    async def play(self, call_id: str, media: list[str]) -> dict:
        """
        Play ARI media to the call: one ARI playback whose media is the comma-joined list (a playlist).

        :param media: URIs with a scheme of `avr.control.records.MEDIA_SCHEMES` (``sound:hello-world``, ...).
        :return: the playback (``playbackId``), once Asterisk accepted it (201). Its end is the
            ``playback.finished`` event (``failed`` for a missing file).
        :raises Invalid: bad media. :raises NotFound, Conflict: unknown, ended or not-in-Stasis call.
        """
        items = check_media(media)
        call = self.registry.live(call_id)
        require_stasis(call)
        ari = self.ari.require()
        playback = Playback(self.new_id(), call.id, "media", self.clock.seconds(), media=items)
        self._playbacks[playback.id] = playback
        try:
            await ari.request("POST", f"/channels/{path_segment(call.channel_id)}/play/{path_segment(playback.id)}",
                              {"media": items})
        except BaseException:
            if not playback.finished:
                self._playbacks.pop(playback.id, None)
            raise
        if not playback.finished:
            playback.state = "playing"
        self._started(playback)
        return playback.to_dict()

    async def stop_playback(self, call_id: str, playback_id: str) -> dict:
        """
        Stop a running playback of the call (`play` or `play_pcm`); ``playback.finished`` follows with ``status``
        ``stopped``.

        :return: the playback. :raises NotFound: unknown call, or no such running playback on it.
        """
        call = self.registry.require(call_id)
        playback = self._playbacks.get(playback_id)
        if playback is None or playback.call_id != call.id:
            raise NotFound(f"Playback {playback_id} not found (or already finished)")
        playback.stop_requested = True
        leg = self._legs.get(playback.id)
        if leg is not None:
            leg.stop()
            return playback.to_dict()
        try:
            await self.ari.require().request("DELETE", f"/playbacks/{path_segment(playback.id)}")
        except AriError as e:
            if e.status != 404:
                raise
            self._finished(playback, "stopped")
        return playback.to_dict()

    async def play_pcm(self, call_id: str, pcm: bytes, rate: int) -> dict:
        """
        Play uploaded audio (PCM16LE mono at ``rate``) to the call through a media leg (format slin at ``rate``)
        whose AudioSocket connection ``injector.expect`` feeds. Calls are given one such setup at a time.

        :return: the playback (``playbackId``, ``durationMs``) once the audio is bridged; its end is the
            ``playback.finished`` event. Stop it early with `stop_playback`.
        :raises Invalid: empty or odd-length PCM, unsupported rate. :raises Unavailable: no injector/address, ARI
            down. :raises NotFound, Conflict: unknown, ended, unanswered or not-in-Stasis call.
        :raises Timeout: the media channel did not come up in time.
        """
        if rate not in SLIN_FORMATS:
            raise Invalid(f"rate must be one of {', '.join(map(str, SLIN_FORMATS))}")
        if not isinstance(pcm, (bytes, bytearray)) or not pcm or len(pcm) % 2:
            raise Invalid("pcm must be non-empty 16-bit samples (an even number of bytes)")
        if self.injector is None or not self.legs.address:
            raise Unavailable("Uploaded audio playback is not available (no AudioSocket server address)")
        call = self.registry.live(call_id)
        self.ari.require_connected()
        require_stasis(call)
        if call.answered_at is None:
            raise Conflict(f"Call {call_id} is not answered")
        lock = self._locks.setdefault(call.id, DeferredLock())
        await lock.acquire()
        try:
            return await self._play_pcm(call, bytes(pcm), rate)
        finally:
            lock.release()

    async def _play_pcm(self, call: CallRecord, pcm: bytes, rate: int) -> dict:
        injector = self.injector
        assert injector is not None
        if call.ended:
            raise Conflict(f"Call {call.id} has ended")
        leg = self.legs.open(call, SLIN_FORMATS[rate], "the uploaded audio", self._leg_ended)
        playback = Playback(leg.uuid, call.id, "pcm", self.clock.seconds(), rate=rate,
                            duration_ms=len(pcm) // 2 * 1000 // rate)
        self._playbacks[playback.id] = playback
        self._legs[playback.id] = leg
        audio = b"\x00\x00" * int(rate * self.pcm_lead_in) + pcm
        try:
            await leg.start(lambda uuid: injector.expect(uuid, audio, rate))
        except BaseException:
            self._playbacks.pop(playback.id, None)
            self._legs.pop(playback.id, None)
            raise
        playback.state = "playing"
        self._started(playback)
        return playback.to_dict()

    def _leg_ended(self, leg: MediaLeg) -> None:
        self._legs.pop(leg.uuid, None)
        playback = self._playbacks.get(leg.uuid)
        if playback is None:
            return
        if leg.error is None:
            self._finished(playback, "done")
        elif leg.stopped:
            self._finished(playback, "stopped")
        else:
            self._finished(playback, "failed", leg.error)

    # -- events ---------------------------------------------------------------------------------------------------

    def _started(self, playback: Playback) -> None:
        if playback.started_published:
            return
        playback.started_published = True
        data = playback.to_dict()
        data.pop("callId")
        data["state"] = "playing"
        self.registry.publish("playback.started", data, self.registry.find(playback.call_id))

    def when_finished(self, playback_id: str) -> Deferred[tuple[str, str | None]]:
        """
        A Deferred firing with ``(status, error)`` once the playback has finished (``status`` as in its
        ``playback.finished``: done, failed, stopped, unknown); at once with ``("unknown", None)`` for a playback
        that is not running.
        """
        if playback_id not in self._playbacks:
            return succeed(("unknown", None))
        waiters = self._finish_waiters.setdefault(playback_id, [])
        d: Deferred[tuple[str, str | None]] = Deferred(lambda d: waiters.remove(d) if d in waiters else None)
        waiters.append(d)
        return d

    def _finished(self, playback: Playback, status: str, error: str | None = None) -> None:
        if playback.finished:
            return
        self._started(playback)
        playback.finished = True
        playback.state = status
        self._playbacks.pop(playback.id, None)
        waiters = self._finish_waiters.pop(playback.id, [])
        data: dict[str, Any] = {"playbackId": playback.id, "kind": playback.kind, "status": status}
        if error:
            data["error"] = error
        self.registry.publish("playback.finished", data, self.registry.find(playback.call_id))
        for waiter in waiters:
            waiter.callback((status, error))

    def _ari_playback(self, event: dict) -> Playback | None:
        playback = self._playbacks.get(str((event.get("playback") or {}).get("id")))
        return playback if playback is not None and playback.kind == "media" else None

    def _on_playback_started(self, event: dict) -> None:
        playback = self._ari_playback(event)
        if playback is not None and not playback.finished:
            playback.state = "playing"
            self._started(playback)

    def _on_playback_finished(self, event: dict) -> None:
        playback = self._ari_playback(event)
        if playback is None:
            return
        if (event.get("playback") or {}).get("state") == "failed":
            self._finished(playback, "failed")
        else:
            self._finished(playback, "stopped" if playback.stop_requested else "done")

    def call_ended(self, call: CallRecord) -> None:
        """The ARI playbacks of the ended ``call`` failed (its uploaded audio ends with its media legs)."""
        self._locks.pop(call.id, None)
        for playback in [p for p in self._playbacks.values() if p.call_id == call.id and p.kind == "media"]:
            self._finished(playback, "failed", "the call ended")

    async def resync(self) -> None:
        """After a reconnect: ARI playbacks that Asterisk no longer has are reported finished (``unknown``)."""
        for playback in [p for p in self._playbacks.values() if p.kind == "media" and p.state == "playing"]:
            if await self.ari.gone(f"/playbacks/{path_segment(playback.id)}"):
                self._finished(playback, "unknown")
