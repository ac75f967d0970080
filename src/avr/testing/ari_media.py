"""
Media of the fake Asterisk: playbacks, recordings and DTMF, and the per-channel Stasis command queue they run on
(one command at a time, in order, as ``stasis_app_control`` does). Mixed into `avr.testing.ari_engine.AsteriskEngine`.

Timing follows the captures: ``sound:hello-world`` lasts 1.40 s; a playlist reports PlaybackContinuing between
items; an unknown file fails at once; an unknown scheme starts and never finishes (facts 20-22). DTMF digits are
reported when they end: 100 ms of quiet, then per digit ``duration`` then ``between`` (``ast_dtmf_stream``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from attrs import define, field

from avr.testing.ari_model import (
    RECORD_FORMATS,
    SAY_ITEM_SECONDS,
    AriHttpError,
    Bridge,
    Channel,
    LiveRecording,
    Playback,
    StoredRecording,
    param_int,
    param_str,
    recording_bytes,
)

if TYPE_CHECKING:
    from avr.testing.ari_engine import AsteriskEngine

DTMF_DIGITS = frozenset("0123456789ABCDabcd*#")
PLAYBACK_OPERATIONS = ("restart", "pause", "unpause", "reverse", "forward")


def valid_dtmf(char: str) -> bool:
    """Whether ``char`` is a DTMF digit Asterisk sends (``w``/``W`` are pauses, anything else is skipped)."""
    return char in DTMF_DIGITS


def dtmf_schedule(digits: str, before: int, between: int, duration: int, after: int) -> tuple[list, float]:
    """
    When each digit of ``digits`` ends, relative to the start, and how long the whole send takes.

    :param before: ms before the first digit; ``between`` and ``duration`` are per digit; ``after`` ms at the end.
    :return: ``([(seconds, digit), ...], total seconds)``.
    """
    t = max(before, 0) / 1000 + 0.1
    ends = []
    for char in digits:
        if char == "w":
            t += 0.5
        elif char == "W":
            t += 1.0
        elif valid_dtmf(char):
            t += max(duration, 0) / 1000
            ends.append((t, char))
            t += max(between, 0) / 1000
    return ends, t + max(after, 0) / 1000


@define(eq=False)
class Command:
    """One entry of a channel's Stasis command queue."""

    kind: str
    obj: Any
    interruptible: bool = True
    timers: list = field(factory=list)


class MediaMixin:
    """Playback, recording and DTMF operations (see the module docstring)."""

    # ----------------------------------------------------------------------------------------------------------------
    # The command queue

    def _enqueue(self: AsteriskEngine, ch: Channel, cmd: Command) -> None:
        state = ch.stasis
        assert state is not None
        state.queue.append(cmd)
        if state.current is None:
            self._next_command(ch)

    def _next_command(self: AsteriskEngine, ch: Channel) -> None:
        state = ch.stasis
        while state is not None and state.current is None and state.queue:
            cmd = state.current = state.queue.popleft()
            if cmd.kind == "playback":
                self._playback_begin(cmd.obj)
            elif cmd.kind == "record":
                self._recording_begin(cmd.obj)
            else:
                self._dtmf_command_begin(ch, cmd)
            state = ch.stasis

    def _command_done(self: AsteriskEngine, ch: Channel, cmd: Command) -> None:
        state = ch.stasis
        if state is None or state.current is not cmd:
            return
        state.current = None
        if state.pending_end is not None:
            cause, state.pending_end = state.pending_end, None
            ch.ending = False
            self._end_channel(ch, cause)
            return
        self._next_command(ch)

    def _abort_commands(self: AsteriskEngine, ch: Channel, *, hangup: bool) -> None:
        """The channel leaves Stasis: queued commands are dropped, the running one is interrupted."""
        state = ch.stasis
        if state is None:
            return
        queued = list(state.queue)
        state.queue.clear()
        current, state.current = state.current, None
        for cmd in queued:
            if cmd.kind == "playback":
                self.playbacks.pop(cmd.obj.id, None)
            elif cmd.kind == "record":
                self.live_recordings.pop(cmd.obj.name, None)
        if current is None:
            return
        self._cancel_timers(current)
        if current.kind == "playback":
            self._playback_finish(current.obj, "failed" if hangup else "done")
        elif current.kind == "record":
            self._recording_finish(current.obj, cancelled=False)

    def _release(self: AsteriskEngine, target: Any, obj: Any) -> None:
        """A playback or recording ended: free its channel's queue, or its bridge's announcer/recorder."""
        if isinstance(target, Channel):
            state = target.stasis
            if state is not None and state.current is not None and state.current.obj is obj:
                self._command_done(target, state.current)
        elif isinstance(target, Bridge) and not target.gone:
            if isinstance(obj, Playback):
                target.play_current = None
                self._bridge_next_playback(target)
            else:
                name = target.recorders.pop(obj.name, None)
                if name:
                    self._pseudo_leave(target, name)

    # ----------------------------------------------------------------------------------------------------------------
    # Playbacks

    def play(self: AsteriskEngine, target: Any, params: dict[str, Any], playback_id: str | None) -> dict:
        """``POST /channels/{id}/play[/{playbackId}]`` and ``POST /bridges/{id}/play[/{playbackId}]``."""
        if isinstance(target, Channel):
            self.control(target)
            self.check_state(target)
        if param_int(params.get("skipms"), 3000) < 0:
            raise AriHttpError(400, "skipms cannot be negative")
        if param_int(params.get("offsetms"), 0) < 0:
            raise AriHttpError(400, "offsetms cannot be negative")
        media = [m for m in param_str(params.get("media")).split(",") if m]
        playback_id = playback_id or param_str(params.get("playbackId")) or None
        if not media or (playback_id and playback_id in self.playbacks):
            raise AriHttpError(500, "Failed to queue media for playback")
        language = param_str(params.get("lang")) or (target.language if isinstance(target, Channel) else "en")
        pb = Playback(id=playback_id or self._uuid(), media=media, target=target, language=language,
                      skipms=param_int(params.get("skipms"), 3000))
        self.playbacks[pb.id] = pb
        snapshot = pb.to_json()
        if isinstance(target, Channel):
            self._enqueue(target, Command("playback", pb))
        else:
            target.play_queue.append(pb)
            if target.play_current is None:
                self._bridge_next_playback(target)
        return snapshot

    def _bridge_next_playback(self: AsteriskEngine, bridge: Bridge) -> None:
        while bridge.play_current is None and bridge.play_queue:
            pb = bridge.play_current = bridge.play_queue.popleft()
            self._playback_begin(pb)
        if bridge.play_current is None and bridge.announcer is not None:
            name, bridge.announcer = bridge.announcer, None
            self._pseudo_leave(bridge, name)

    def _media_length(self: AsteriskEngine, uri: str) -> tuple[str, float]:
        """``("ok", seconds)``, ``("missing", 0)``, ``("endless", 0)`` (tones) or ``("unknown", 0)`` (scheme)."""
        scheme, _, rest = uri.partition(":")
        if scheme == "sound":
            seconds = self.sounds.get(rest)
            return ("ok", seconds) if seconds is not None else ("missing", 0.0)
        if scheme == "recording":
            stored = self.stored.get(rest)
            return ("ok", stored.seconds) if stored is not None else ("missing", 0.0)
        if scheme in ("digits", "characters"):
            return "ok", SAY_ITEM_SECONDS * max(len(rest), 1)
        if scheme == "number":
            return "ok", SAY_ITEM_SECONDS * max(len(rest.lstrip("-")), 1)
        if scheme == "tone":
            return "endless", 0.0
        return "unknown", 0.0

    def _emit_playback(self: AsteriskEngine, event_type: str, pb: Playback) -> None:
        if isinstance(pb.target, Bridge):
            self.emit(event_type, [("playback", pb)], bridges=[pb.target])
        else:
            self.emit(event_type, [("playback", pb)], channels=[pb.target])

    def _playback_begin(self: AsteriskEngine, pb: Playback) -> None:
        target = pb.target
        if isinstance(target, Bridge) and target.announcer is None:
            target.announcer = f"Announcer/ARI-{self._next_unreal():08x};2"
            self._pseudo_join(target, target.announcer)
        pb.state = "playing"
        self._playback_item(pb)

    def _playback_item(self: AsteriskEngine, pb: Playback) -> None:
        kind, seconds = self._media_length(pb.media[pb.index])
        self._emit_playback("PlaybackStarted", pb)
        if kind == "unknown":
            pb.stuck = True  # fact 20: never finishes, but no longer blocks the channel
            self._release(pb.target, pb)
        elif kind == "missing":
            self._playback_finish(pb, "failed")
        elif kind == "ok":
            pb.remaining = seconds
            pb.started_at = self.clock.seconds()
            self._later(pb, seconds, self._playback_item_done, pb)
        else:
            pb.remaining = None

    def _playback_item_done(self: AsteriskEngine, pb: Playback) -> None:
        if pb.index + 1 < len(pb.media):
            pb.state = "continuing"
            self._emit_playback("PlaybackContinuing", pb)
            pb.index += 1
            pb.state = "playing"
            self._playback_item(pb)
        else:
            self._playback_finish(pb, "done")

    def _playback_finish(self: AsteriskEngine, pb: Playback, state: str) -> None:
        self._cancel_timers(pb)
        if self.playbacks.pop(pb.id, None) is None:
            return
        pb.state = state
        self._emit_playback("PlaybackFinished", pb)
        self._release(pb.target, pb)

    def playback_stop(self: AsteriskEngine, pb: Playback) -> None:
        """``DELETE /playbacks/{id}``: PlaybackFinished ``done`` (a queued one is just dropped)."""
        if pb.state == "queued":
            self.playbacks.pop(pb.id, None)
            target = pb.target
            if isinstance(target, Bridge):
                if pb in target.play_queue:
                    target.play_queue.remove(pb)
            elif target.stasis is not None:
                for cmd in list(target.stasis.queue):
                    if cmd.obj is pb:
                        target.stasis.queue.remove(cmd)
            return
        self._playback_finish(pb, "done")

    def playback_control(self: AsteriskEngine, pb: Playback, operation: str) -> None:
        """``POST /playbacks/{id}/control``: pause gives no event, unpause sends PlaybackStarted again (fact 20)."""
        if operation not in PLAYBACK_OPERATIONS:
            raise AriHttpError(400, f"Invalid operation {operation}")
        if pb.state not in ("playing", "paused") or pb.stuck:
            raise AriHttpError(409, "Can only control playing playbacks")
        now = self.clock.seconds()
        if operation == "pause":
            if pb.state == "playing":
                if pb.remaining is not None:
                    pb.remaining = max(pb.remaining - (now - pb.started_at), 0.0)
                self._cancel_timers(pb)
                pb.state = "paused"
            return
        if operation == "unpause":
            if pb.state == "paused":
                pb.state = "playing"
                self._emit_playback("PlaybackStarted", pb)
                self._resume_playback(pb)
            return
        kind, full = self._media_length(pb.media[pb.index])
        if pb.remaining is None or kind != "ok":
            return
        left = pb.remaining - (now - pb.started_at) if pb.state == "playing" else pb.remaining
        skip = pb.skipms / 1000
        left = {"restart": full, "forward": left - skip, "reverse": min(left + skip, full)}[operation]
        pb.remaining = max(left, 0.0)
        if pb.state == "playing":
            self._cancel_timers(pb)
            self._resume_playback(pb)

    def _resume_playback(self: AsteriskEngine, pb: Playback) -> None:
        if pb.remaining is None:
            return
        pb.started_at = self.clock.seconds()
        self._later(pb, pb.remaining, self._playback_item_done, pb)

    def _stop_bridge_media(self: AsteriskEngine, bridge: Bridge) -> None:
        queued = list(bridge.play_queue)
        bridge.play_queue.clear()
        for pb in queued:
            self.playbacks.pop(pb.id, None)
        current, bridge.play_current = bridge.play_current, None
        if current is not None:
            self._playback_finish(current, "done")
        for rec in [r for r in self.live_recordings.values() if r.target is bridge]:
            self._recording_finish(rec, cancelled=False)

    # ----------------------------------------------------------------------------------------------------------------
    # Recordings

    def record(self: AsteriskEngine, target: Any, params: dict[str, Any]) -> tuple[dict, str]:
        """
        ``POST /channels/{id}/record`` and ``POST /bridges/{id}/record`` (checks in Asterisk's order).

        :return: the LiveRecording and its ``Location``.
        """
        if param_int(params.get("maxDurationSeconds"), 0) < 0:
            raise AriHttpError(400, "max_duration_seconds cannot be negative")
        if param_int(params.get("maxSilenceSeconds"), 0) < 0:
            raise AriHttpError(400, "max_silence_seconds cannot be negative")
        if isinstance(target, Channel):
            self.control(target)
        terminate_on = param_str(params.get("terminateOn")) or "none"
        if terminate_on not in ("none", "any", "*", "#"):
            raise AriHttpError(400, "terminateOn invalid")
        if_exists = param_str(params.get("ifExists")) or "fail"
        if if_exists not in ("fail", "overwrite", "append"):
            raise AriHttpError(400, "ifExists invalid")
        fmt = param_str(params.get("format"))
        if fmt not in RECORD_FORMATS:
            raise AriHttpError(422, "specified format is unknown on this system")
        name = param_str(params.get("name"))
        if not name:
            raise AriHttpError(500, "Error parsing request")
        if name.startswith("/") or ".." in name.split("/"):
            raise AriHttpError(400, "Recording name invalid")
        if name in self.live_recordings or (name in self.stored and if_exists == "fail"):
            raise AriHttpError(409, f"Recording '{name}' already exists and can not be overwritten")
        max_duration = param_int(params.get("maxDurationSeconds"), 0)
        rec = LiveRecording(name=name, format=fmt, target=target, max_duration=max_duration, if_exists=if_exists,
                            terminate_on=terminate_on)  # fmt: skip
        self.live_recordings[name] = rec
        if isinstance(target, Channel):
            self._enqueue(target, Command("record", rec))
        else:
            target.recorders[name] = f"Recorder/ARI-{self._next_unreal():08x};2"
            self._pseudo_join(target, target.recorders[name])
            self._recording_begin(rec)
        return rec.to_json(), f"/ari/recordings/live/{quote(name, safe='')}"

    def _emit_recording(self: AsteriskEngine, event_type: str, rec: LiveRecording) -> None:
        if isinstance(rec.target, Bridge):
            self.emit(event_type, [("recording", rec)], bridges=[rec.target])
        else:
            self.emit(event_type, [("recording", rec)], channels=[rec.target])

    def _recording_begin(self: AsteriskEngine, rec: LiveRecording) -> None:
        rec.state = "recording"
        rec.resumed_at = self.clock.seconds()
        self._emit_recording("RecordingStarted", rec)
        self._schedule_max_duration(rec)

    def _schedule_max_duration(self: AsteriskEngine, rec: LiveRecording) -> None:
        if rec.max_duration > 0:
            self._later(rec, max(rec.max_duration - rec.active, 0.0), self._recording_finish, rec, False)

    def _recording_finish(self: AsteriskEngine, rec: LiveRecording, cancelled: bool) -> None:
        """RecordingFinished ``done`` (after stop, cancel, hangup or maxDurationSeconds; fact 21)."""
        if self.live_recordings.get(rec.name) is not rec:
            return
        self._cancel_timers(rec)
        if rec.resumed_at is not None:
            rec.active += self.clock.seconds() - rec.resumed_at
            rec.resumed_at = None
        rec.state = "done"
        rec.duration = int(rec.active + 1e-9)
        if cancelled:
            self.stored.pop(rec.name, None)  # the file being written is deleted, appended-to or not
        else:
            self._store(rec)
        del self.live_recordings[rec.name]
        self._emit_recording("RecordingFinished", rec)
        self._release(rec.target, rec)

    def _store(self: AsteriskEngine, rec: LiveRecording) -> None:
        seconds = rec.active
        old = self.stored.get(rec.name)
        if rec.if_exists == "append" and old is not None and old.format == rec.format:
            seconds += old.seconds
        self.stored[rec.name] = StoredRecording(rec.name, rec.format, recording_bytes(rec.format, seconds), seconds)

    def recording_stop(self: AsteriskEngine, rec: LiveRecording, cancel: bool) -> None:
        """``POST /recordings/live/{name}/stop`` (keep) or ``DELETE /recordings/live/{name}`` (discard)."""
        self._recording_finish(rec, cancelled=cancel)

    def recording_control(self: AsteriskEngine, rec: LiveRecording, operation: str) -> None:
        """pause, unpause, mute, unmute (no events; fact 21)."""
        if rec.state not in ("recording", "paused"):
            raise AriHttpError(409, "Recording not in session")
        now = self.clock.seconds()
        if operation == "pause" and rec.state == "recording":
            if rec.resumed_at is not None:
                rec.active += now - rec.resumed_at
                rec.resumed_at = None
            self._cancel_timers(rec)
            rec.state = "paused"
        elif operation == "unpause" and rec.state == "paused":
            rec.state = "recording"
            rec.resumed_at = now
            self._schedule_max_duration(rec)
        elif operation in ("mute", "unmute"):
            rec.muted = operation == "mute"

    def add_stored(self: AsteriskEngine, name: str, fmt: str, seconds: float, data: bytes | None = None) -> None:
        """Put a recording file in the spool (as if recorded earlier)."""
        self.stored[name] = StoredRecording(name, fmt, data if data is not None else recording_bytes(fmt, seconds),
                                            seconds)  # fmt: skip

    def stored_copy(self: AsteriskEngine, name: str, params: dict[str, Any]) -> dict:
        """``POST /recordings/stored/{name}/copy``."""
        source = self.stored.get(name)
        if source is None:
            raise AriHttpError(404, "Recording not found")
        dest = param_str(params.get("destinationRecordingName"))
        if not dest:
            raise AriHttpError(400, "Missing parameter destinationRecordingName")
        if dest.startswith("/") or ".." in dest.split("/"):
            raise AriHttpError(400, "Recording name invalid")
        if dest in self.stored:
            raise AriHttpError(409, "A recording with the same name already exists on the system")
        self.stored[dest] = StoredRecording(dest, source.format, source.data, source.seconds)
        return self.stored[dest].to_json()

    # ----------------------------------------------------------------------------------------------------------------
    # DTMF

    def send_dtmf(self: AsteriskEngine, ch: Channel, params: dict[str, Any]) -> None:
        """``POST /channels/{id}/dtmf``: 204 at once; the digits are played in the channel's command queue."""
        self.control(ch)
        self.check_state(ch)
        dtmf = param_str(params.get("dtmf"))
        if not dtmf:
            raise AriHttpError(400, "DTMF is required")
        spec = (dtmf, param_int(params.get("before"), 0), param_int(params.get("between"), 100),
                param_int(params.get("duration"), 100), param_int(params.get("after"), 0))  # fmt: skip
        self._enqueue(ch, Command("dtmf", spec, interruptible=False))

    def _dtmf_command_begin(self: AsteriskEngine, ch: Channel, cmd: Command) -> None:
        digits, before, between, duration, after = cmd.obj
        receiver = ch.peer if ch.tech == "Local" and ch.peer is not None else None
        total = self._dtmf_stream(ch, receiver, digits, before, between, duration, after, owner=cmd)
        self._later(cmd, total, self._command_done, ch, cmd)

    def _dtmf_stream(self: AsteriskEngine, sender: Channel, receiver: Channel | None, digits: str, before: int,
                     between: int, duration: int, after: int, *, owner: Any) -> float:  # fmt: skip
        """Schedule the digits (timers on ``owner``); returns how long the send takes."""
        ends, total = dtmf_schedule(digits, before, between, duration, after)
        for offset, digit in ends:
            self._later(owner, offset, self._dtmf_digit_sent, sender, receiver, digit, duration)
        return total

    def _dtmf_digit_sent(self: AsteriskEngine, sender: Channel, receiver: Channel | None, digit: str,
                         duration: int) -> None:  # fmt: skip
        if receiver is not None:
            if receiver.alive:
                self.dtmf_received(receiver, digit, duration)
            return
        if sender.audiosocket is not None:
            try:
                sender.audiosocket.send_dtmf(digit)
            except Exception:
                self.log.failure("Sending DTMF on the fake AudioSocket connection failed")
            return
        self.sent_dtmf.setdefault(sender.id, []).append(digit)
        if self.dtmf_loopback and sender.alive:
            self.dtmf_received(sender, digit, duration)

    def dtmf_received(self: AsteriskEngine, ch: Channel, digit: str, duration_ms: int = 100) -> None:
        """``ch`` received one digit (at its end): ChannelDtmfReceived, and recordings with ``terminateOn`` stop."""
        self.emit("ChannelDtmfReceived", [("digit", digit), ("duration_ms", duration_ms), ("channel", ch)],
                  channels=[ch])  # fmt: skip
        for rec in [r for r in self.live_recordings.values() if r.target is ch and r.state == "recording"]:
            if rec.terminate_on == "any" or rec.terminate_on == digit:
                self._recording_finish(rec, cancelled=False)

    def remote_dtmf(self: AsteriskEngine, ch: Channel, digits: str, duration_ms: int, between_ms: int) -> None:
        """The far end of ``ch`` presses ``digits`` (each reported when it ends)."""
        t = 0.0
        for char in digits:
            if valid_dtmf(char):
                t += duration_ms / 1000
                self._later(ch, t, self.dtmf_received, ch, char, duration_ms)
                t += between_ms / 1000
