"""
Playbacks of the fake Asterisk, on channels (through the channel's command queue) and on bridges (one at a time,
through an ``Announcer`` pseudo-channel).

Timing follows the captures (fact 20): ``sound:hello-world`` lasts 1.40 s; a playlist reports PlaybackContinuing
between items; a missing file fails at once; an unknown scheme starts and never finishes; pause sends nothing and
unpause PlaybackStarted again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from attrs import define, field

from avr.testing.ari_applications import Applications
from avr.testing.ari_bridges import Bridges
from avr.testing.ari_clock import AsteriskClock
from avr.testing.ari_model import Bridge, Channel, Command, Playback, StoredRecording
from avr.testing.ari_params import AriHttpError, param_int, param_str
from avr.testing.ari_stasis import CommandQueue

#: Seconds each ``sound:`` lasts (measured on the capture system where known: hello-world 1.40 s, beep 0.425 s).
DEFAULT_SOUNDS: dict[str, float] = {
    "hello-world": 1.40,
    "beep": 0.425,
    "demo-congrats": 18.0,
    "tt-monkeys": 9.5,
    "vm-goodbye": 0.9,
    "silence/1": 1.0,
    "silence/2": 2.0,
    "silence/5": 5.0,
}
#: Length of one spoken digit/letter for ``digits:``/``number:``/``characters:`` (digits:42 took 1.55 s).
SAY_ITEM_SECONDS = 0.775
PLAYBACK_OPERATIONS = ("restart", "pause", "unpause", "reverse", "forward")


@define(eq=False)
class Playbacks:
    """
    Playbacks in progress by id.

    :param clock: media timing.
    :param apps: Playback* events.
    :param bridges: the announcer of bridge playbacks.
    :param commands: the queue channel playbacks run in.
    :param sounds: ``{name: seconds}`` for ``sound:`` media.
    :param spool: stored recordings, for ``recording:`` media.
    :param new_id: makes playback ids (UUID4 by default).
    """

    _clock: AsteriskClock
    _apps: Applications
    _bridges: Bridges
    _commands: CommandQueue
    sounds: Mapping[str, float]
    _spool: Mapping[str, StoredRecording]
    _new_id: Callable[[], str]
    by_id: dict[str, Playback] = field(factory=dict, init=False)

    def reset(self) -> None:
        """Forget every playback (a restart)."""
        self.by_id.clear()

    def play(self, target: Channel | Bridge, params: dict[str, Any], playback_id: str | None) -> dict:
        """``POST /channels/{id}/play[/{playbackId}]`` (after the control's checks) and ``POST /bridges/{id}/play``."""
        if param_int(params.get("skipms"), 3000) < 0:
            raise AriHttpError(400, "skipms cannot be negative")
        if param_int(params.get("offsetms"), 0) < 0:
            raise AriHttpError(400, "offsetms cannot be negative")
        media = [m for m in param_str(params.get("media")).split(",") if m]
        playback_id = playback_id or param_str(params.get("playbackId")) or None
        if not media or (playback_id and playback_id in self.by_id):
            raise AriHttpError(500, "Failed to queue media for playback")
        language = param_str(params.get("lang")) or (target.language if isinstance(target, Channel) else "en")
        pb = Playback(id=playback_id or self._new_id(), media=media, target=target, language=language,
                      skipms=param_int(params.get("skipms"), 3000))  # fmt: skip
        self.by_id[pb.id] = pb
        snapshot = pb.to_json()
        if isinstance(target, Channel):
            self._commands.enqueue(target, Command(pb, lambda: self._begin(pb),
                                                   lambda hangup: self._finish(pb, "failed" if hangup else "done"),
                                                   lambda: self._forget(pb)))  # fmt: skip
        else:
            target.play_queue.append(pb)
            if target.play_current is None:
                self._bridge_next(target)
        return snapshot

    def _forget(self, pb: Playback) -> None:
        self.by_id.pop(pb.id, None)

    def _bridge_next(self, bridge: Bridge) -> None:
        while bridge.play_current is None and bridge.play_queue:
            pb = bridge.play_current = bridge.play_queue.popleft()
            self._begin(pb)
        if bridge.play_current is None and bridge.announcer is not None:
            name, bridge.announcer = bridge.announcer, None
            self._bridges.leave_pseudo(bridge, name)

    def _released(self, pb: Playback) -> None:
        """``pb`` no longer occupies its target: the channel's next command, or the bridge's next playback."""
        target = pb.target
        if isinstance(target, Channel):
            self._commands.finished(target, pb)
        elif not target.gone:
            target.play_current = None
            self._bridge_next(target)

    def _media_length(self, uri: str) -> tuple[str, float]:
        """``("ok", seconds)``, ``("missing", 0)``, ``("endless", 0)`` (tones) or ``("unknown", 0)`` (scheme)."""
        scheme, _, rest = uri.partition(":")
        if scheme == "sound":
            seconds = self.sounds.get(rest)
            return ("ok", seconds) if seconds is not None else ("missing", 0.0)
        if scheme == "recording":
            stored = self._spool.get(rest)
            return ("ok", stored.seconds) if stored is not None else ("missing", 0.0)
        if scheme in ("digits", "characters"):
            return "ok", SAY_ITEM_SECONDS * max(len(rest), 1)
        if scheme == "number":
            return "ok", SAY_ITEM_SECONDS * max(len(rest.lstrip("-")), 1)
        if scheme == "tone":
            return "endless", 0.0
        return "unknown", 0.0

    def _begin(self, pb: Playback) -> None:
        target = pb.target
        if isinstance(target, Bridge) and target.announcer is None:
            target.announcer = self._bridges.join_pseudo(target, "Announcer")
        pb.state = "playing"
        self._play_item(pb)

    def _play_item(self, pb: Playback) -> None:
        kind, seconds = self._media_length(pb.media[pb.index])
        self._apps.media_event("PlaybackStarted", "playback", pb)
        if kind == "unknown":
            pb.stuck = True  # fact 20: never finishes, but no longer blocks the channel
            self._released(pb)
        elif kind == "missing":
            self._finish(pb, "failed")
        elif kind == "ok":
            pb.remaining = seconds
            pb.started_at = self._clock.now()
            self._clock.later(pb, seconds, self._item_done, pb)
        else:
            pb.remaining = None

    def _item_done(self, pb: Playback) -> None:
        if pb.index + 1 < len(pb.media):
            pb.state = "continuing"
            self._apps.media_event("PlaybackContinuing", "playback", pb)
            pb.index += 1
            pb.state = "playing"
            self._play_item(pb)
        else:
            self._finish(pb, "done")

    def _finish(self, pb: Playback, state: str) -> None:
        self._clock.cancel(pb)
        if self.by_id.pop(pb.id, None) is None:
            return
        pb.state = state
        self._apps.media_event("PlaybackFinished", "playback", pb)
        self._released(pb)

    def stop(self, pb: Playback) -> None:
        """``DELETE /playbacks/{id}``: PlaybackFinished ``done`` (a queued one is just dropped)."""
        if pb.state != "queued":
            self._finish(pb, "done")
            return
        self._forget(pb)
        target = pb.target
        if isinstance(target, Bridge):
            if pb in target.play_queue:
                target.play_queue.remove(pb)
        else:
            self._commands.withdraw(target, pb)

    def control(self, pb: Playback, operation: str) -> None:
        """``POST /playbacks/{id}/control``: pause gives no event, unpause sends PlaybackStarted again (fact 20)."""
        if operation not in PLAYBACK_OPERATIONS:
            raise AriHttpError(400, f"Invalid operation {operation}")
        if pb.state not in ("playing", "paused") or pb.stuck:
            raise AriHttpError(409, "Can only control playing playbacks")
        now = self._clock.now()
        if operation == "pause":
            if pb.state == "playing":
                if pb.remaining is not None:
                    pb.remaining = max(pb.remaining - (now - pb.started_at), 0.0)
                self._clock.cancel(pb)
                pb.state = "paused"
            return
        if operation == "unpause":
            if pb.state == "paused":
                pb.state = "playing"
                self._apps.media_event("PlaybackStarted", "playback", pb)
                self._resume(pb)
            return
        kind, full = self._media_length(pb.media[pb.index])
        if pb.remaining is None or kind != "ok":
            return
        left = pb.remaining - (now - pb.started_at) if pb.state == "playing" else pb.remaining
        skip = pb.skipms / 1000
        left = {"restart": full, "forward": left - skip, "reverse": min(left + skip, full)}[operation]
        pb.remaining = max(left, 0.0)
        if pb.state == "playing":
            self._clock.cancel(pb)
            self._resume(pb)

    def _resume(self, pb: Playback) -> None:
        if pb.remaining is not None:
            pb.started_at = self._clock.now()
            self._clock.later(pb, pb.remaining, self._item_done, pb)

    def stop_on(self, bridge: Bridge) -> None:
        """The bridge is destroyed: its queued playbacks go, the current one finishes ``done``."""
        queued = list(bridge.play_queue)
        bridge.play_queue.clear()
        for pb in queued:
            self._forget(pb)
        current, bridge.play_current = bridge.play_current, None
        if current is not None:
            self._finish(current, "done")

    def forget_target(self, ch: Channel) -> None:
        """``ch`` is destroyed: playbacks still on it (those that never finish) go without an event."""
        for pb in [p for p in self.by_id.values() if p.target is ch]:
            self._clock.cancel(pb)
            self._forget(pb)

    def cancel_timers(self) -> None:
        """Cancel every playback's timers (stop, restart, teardown)."""
        for pb in self.by_id.values():
            self._clock.cancel(pb)
