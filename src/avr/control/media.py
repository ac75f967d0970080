"""
Playback: ARI media (`MediaOps.play`) and uploaded PCM through an externalMedia AudioSocket leg
(`MediaOps.play_pcm`). Both answer once the audio has started; ``playback.started`` and ``playback.finished``
(``status`` ``done``, ``failed`` or ``stopped``) are published once each, in that order.
"""

from __future__ import annotations

import uuid
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredLock, TimeoutError, succeed
from twisted.python.failure import Failure

from avr.ari.client import path_segment
from avr.ari.errors import AriError
from avr.control.core import ControlCore
from avr.control.call_registry import require_stasis
from avr.control.errors import Conflict, Invalid, NotFound, Timeout, Unavailable
from avr.control.records import (
    MEDIA_CHANNEL_PREFIX,
    MEDIA_SCHEMES,
    SLIN_FORMATS,
    TEMP_BRIDGE_PREFIX,
    CallRecord,
    Playback,
)


def check_media(media: Any) -> list[str]:
    """``media`` (one URI or a list) as a list of playable URIs, else `Invalid`."""
    items = [media] if isinstance(media, str) else media
    if not isinstance(items, list) or not items or len(items) > 100:
        raise Invalid("media must be a media URI or a list of 1 to 100 of them")
    for item in items:
        if not isinstance(item, str) or not 0 < len(item) <= 1024 or "," in item or item.strip() != item:
            raise Invalid("each media URI must be a non-empty string without commas or surrounding spaces")
        if not item.startswith(MEDIA_SCHEMES):
            raise Invalid(f"unsupported media {item!r}: use one of the schemes {', '.join(MEDIA_SCHEMES)}")
    return list(items)


class MediaOps(ControlCore):
    """Playback operations and the playback events."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pcm_locks: dict[str, DeferredLock] = {}

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
        ari = self.link.require()
        playback = Playback(self._new_id(), call.id, "media", self.clock.seconds(), media=items)
        self._playbacks[playback.id] = playback
        try:
            await ari.request("POST", f"/channels/{path_segment(call.id)}/play/{path_segment(playback.id)}",
                              {"media": items})
        except BaseException:
            if not playback.finished:
                self._playbacks.pop(playback.id, None)
            raise
        if not playback.finished:
            playback.state = "playing"
        self._playback_started(playback)
        return playback.to_dict()

    async def stop_playback(self, call_id: str, playback_id: str) -> dict:
        """
        Stop a running playback of the call (`play` or `play_pcm`); ``playback.finished`` follows with ``status``
        ``stopped``.

        :return: the playback. :raises NotFound: unknown call, or no such running playback on it.
        """
        self.registry.require(call_id)
        playback = self._playbacks.get(playback_id)
        if playback is None or playback.call_id != call_id:
            raise NotFound(f"Playback {playback_id} not found (or already finished)")
        playback.stop_requested = True
        if playback.kind == "pcm":
            if playback.played is not None and not playback.played.called:
                playback.played.cancel()
            return playback.to_dict()
        try:
            await self.link.require().request("DELETE", f"/playbacks/{path_segment(playback.id)}")
        except AriError as e:
            if e.status != 404:
                raise
            self._playback_finished(playback, "stopped")
        return playback.to_dict()

    def _playback_started(self, playback: Playback) -> None:
        if playback.started_published:
            return
        playback.started_published = True
        call = self.registry.find(playback.call_id)
        data = playback.to_dict()
        data.pop("callId")
        data["state"] = "playing"
        self.registry.publish("playback.started", data, call)

    def _playback_finished(self, playback: Playback, status: str, error: str | None = None) -> None:
        if playback.finished:
            return
        self._playback_started(playback)
        playback.finished = True
        playback.state = status
        self._playbacks.pop(playback.id, None)
        data: dict[str, Any] = {"playbackId": playback.id, "kind": playback.kind, "status": status}
        if error:
            data["error"] = error
        self.registry.publish("playback.finished", data, self.registry.find(playback.call_id))

    def _ari_playback(self, event: dict) -> Playback | None:
        playback = self._playbacks.get((event.get("playback") or {}).get("id"))
        return playback if playback is not None and playback.kind == "media" else None

    def _on_playback_started(self, event: dict) -> None:
        playback = self._ari_playback(event)
        if playback is not None and not playback.finished:
            playback.state = "playing"
            self._playback_started(playback)

    def _on_playback_finished(self, event: dict) -> None:
        playback = self._ari_playback(event)
        if playback is None:
            return
        if (event.get("playback") or {}).get("state") == "failed":
            self._playback_finished(playback, "failed")
        else:
            self._playback_finished(playback, "stopped" if playback.stop_requested else "done")

    def _call_gone(self, call: CallRecord) -> None:
        super()._call_gone(call)
        self._pcm_locks.pop(call.id, None)
        for playback in [p for p in self._playbacks.values() if p.call_id == call.id]:
            if playback.kind == "pcm":
                if playback.played is not None and not playback.played.called:
                    playback.played.cancel()  # _pcm_ended cleans up and reports
            else:
                self._playback_finished(playback, "failed", "the call ended")

    # -- uploaded PCM -------------------------------------------------------------------------------------------

    async def play_pcm(self, call_id: str, pcm: bytes, rate: int) -> dict:
        """
        Play uploaded audio (PCM16LE mono at ``rate``) to the call through an ARI externalMedia AudioSocket channel
        that Asterisk opens to avr: ``injector.expect`` is armed, the media channel created (app, ``external_host``
        = the AudioSocket address, ``encapsulation=audiosocket``, ``transport=tcp``, ``format`` = slin at ``rate``,
        ``data`` = the UUID), and once it is in Stasis it is bridged with the call. If the call is already in a
        bridge, the media channel joins THAT bridge (everyone in it hears the audio, and the call is never pulled
        out); otherwise a temporary mixing bridge holds the call and the media channel. Afterwards the media
        channel is hung up and a temporary bridge destroyed.

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
        if self.injector is None or not self.audiosocket_address:
            raise Unavailable("Uploaded audio playback is not available (no AudioSocket server address)")
        call = self.registry.live(call_id)
        self.link.require_connected()
        require_stasis(call)
        if call.answered_at is None:
            raise Conflict(f"Call {call_id} is not answered")
        lock = self._pcm_locks.setdefault(call.id, DeferredLock())
        await lock.acquire()
        try:
            return await self._play_pcm(call, bytes(pcm), rate)
        finally:
            lock.release()

    async def _play_pcm(self, call: CallRecord, pcm: bytes, rate: int) -> dict:
        assert self.injector is not None
        if call.ended:
            raise Conflict(f"Call {call.id} has ended")
        media_uuid = str(uuid.uuid4())
        channel_id = MEDIA_CHANNEL_PREFIX + media_uuid
        playback = Playback(media_uuid, call.id, "pcm", self.clock.seconds(), rate=rate,
                            duration_ms=len(pcm) // 2 * 1000 // rate, media_channel=channel_id)
        self._playbacks[playback.id] = playback
        self._internal[channel_id] = False
        in_stasis = self._wait_stasis(channel_id)
        lead_in = b"\x00\x00" * int(rate * self.pcm_lead_in)
        played = playback.played = self.injector.expect(media_uuid, lead_in + pcm, rate)
        played.addBoth(self._pcm_ended, playback)
        try:
            await self._pcm_setup(call, playback, in_stasis)
        except BaseException as e:
            if not in_stasis.called:
                in_stasis.cancel()
            self._pcm_release(playback)
            if isinstance(e, (TimeoutError, CancelledError)):
                raise Timeout("The media channel for the uploaded audio did not start in time") from None
            raise
        playback.state = "playing"
        self._playback_started(playback)
        return playback.to_dict()

    async def _pcm_setup(self, call: CallRecord, playback: Playback, in_stasis: Deferred) -> None:
        ari = self.link.require()
        assert playback.media_channel is not None and playback.rate is not None
        await ari.request("POST", "/channels/externalMedia", {
            "app": self.app, "external_host": self.audiosocket_address, "encapsulation": "audiosocket",
            "transport": "tcp", "format": SLIN_FORMATS[playback.rate], "data": playback.id,
            "channelId": playback.media_channel,
        })
        await in_stasis
        self._pcm_check(call, playback)
        target = call.ari_bridge_id
        if target is not None:
            await ari.request("POST", f"/bridges/{path_segment(target)}/addChannel",
                              {"channel": playback.media_channel})
            playback.bridge_id = target
            if target in self._temp_bridges:
                self._temp_bridges[target].add(playback.id)
        else:
            bridge_id = TEMP_BRIDGE_PREFIX + playback.id
            self._temp_bridges[bridge_id] = {playback.id}
            playback.bridge_id, playback.temp_bridge = bridge_id, True
            await ari.request("POST", f"/bridges/{path_segment(bridge_id)}", {"type": "mixing", "name": bridge_id})
            self._pcm_check(call, playback)
            await ari.request("POST", f"/bridges/{path_segment(bridge_id)}/addChannel",
                              {"channel": [call.id, playback.media_channel]})
            if not call.ended:
                call.ari_bridge_id = bridge_id
        self._pcm_check(call, playback)

    def _pcm_check(self, call: CallRecord, playback: Playback) -> None:
        if call.ended:
            raise Conflict(f"Call {call.id} ended before the uploaded audio started")
        if playback.played is not None and playback.played.called:
            raise Conflict(f"The playback connection ended before the audio started ({playback.error})")

    def _pcm_ended(self, result: Any, playback: Playback) -> None:
        """The injector finished (``None``), failed or was cancelled; report it once the setup is done."""
        if isinstance(result, Failure):
            playback.error = "stopped" if result.check(CancelledError) else str(result.value) or "failed"
        if playback.state != "playing" or playback.finished:
            return None
        self._pcm_release(playback)
        if playback.error is None:
            self._playback_finished(playback, "done")
        elif playback.stop_requested:
            self._playback_finished(playback, "stopped")
        else:
            error = "the call ended" if playback.error == "stopped" else playback.error
            self._playback_finished(playback, "failed", error)
        return None

    def _pcm_release(self, playback: Playback) -> None:
        """Hang up the media channel and destroy a temporary bridge nobody else uses (idempotent)."""
        if playback.played is not None and not playback.played.called:
            playback.played.cancel()
        if playback.media_channel is not None:
            channel, playback.media_channel = playback.media_channel, None
            self._internal.pop(channel, None)
            self.link.hang_up_quietly(channel)
        if playback.bridge_id is not None:
            bridge_id, playback.bridge_id = playback.bridge_id, None
            users = self._temp_bridges.get(bridge_id)
            if users is not None:
                users.discard(playback.id)
                if not users:
                    del self._temp_bridges[bridge_id]
                    self.link.destroy_bridge_quietly(bridge_id)
        if playback.state != "playing":
            self._playbacks.pop(playback.id, None)

    def _wait_stasis(self, channel_id: str) -> Deferred:
        if self._internal.get(channel_id):
            return succeed(None)
        d: Deferred = Deferred()
        self._stasis_waiters.setdefault(channel_id, []).append(d)

        def forget(result: Any) -> Any:
            waiters = self._stasis_waiters.get(channel_id)
            if waiters is not None and d in waiters:
                waiters.remove(d)
                if not waiters:
                    del self._stasis_waiters[channel_id]
            return result

        d.addBoth(forget)
        return self.tasks.wait(d, self.setup_timeout)

    def _on_channel_left_bridge(self, event: dict) -> None:
        """A call left a temporary playback bridge (moved elsewhere): its audio there can no longer be heard."""
        bridge_id = (event.get("bridge") or {}).get("id")
        call_id = (event.get("channel") or {}).get("id")
        for playback_id in list(self._temp_bridges.get(bridge_id, ())):
            playback = self._playbacks.get(playback_id)
            if playback is not None and playback.call_id == call_id and playback.state == "playing":
                playback.stop_requested = True
                if playback.played is not None and not playback.played.called:
                    playback.played.cancel()
