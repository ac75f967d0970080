"""
Recordings of the fake Asterisk: live recordings of channels (through the channel's command queue) and bridges
(through a ``Recorder`` pseudo-channel), and the spool of stored recordings with their files (silence in the
recorded format; ``wav`` is RIFF PCM 16-bit mono 8 kHz like the captured file).

What the captures fixed (fact 21): RecordingStarted, then RecordingFinished ``done`` with ``duration`` in whole
seconds after stop, cancel, hangup or ``maxDurationSeconds``; a cancel leaves no stored file; pause and mute send
nothing; the checks come in Asterisk's order (fact 12).
"""

from __future__ import annotations

import struct
from typing import Any
from urllib.parse import quote

from attrs import define, field

from avr.testing.ari_applications import Applications
from avr.testing.ari_bridges import Bridges
from avr.testing.ari_clock import AsteriskClock
from avr.testing.ari_model import Bridge, Channel, Command, LiveRecording, StoredRecording
from avr.testing.ari_params import AriHttpError, param_int, param_str
from avr.testing.ari_stasis import CommandQueue

#: File extensions ``record`` accepts (``ast_get_format_for_file_ext``) and their sample rate.
RECORD_FORMATS: dict[str, int] = {
    "wav": 8000, "WAV": 8000, "wav16": 16000, "gsm": 8000, "ulaw": 8000, "alaw": 8000, "sln": 8000,
    "raw": 8000, "sln12": 12000, "sln16": 16000, "sln24": 24000, "sln32": 32000, "sln44": 44100,
    "sln48": 48000, "g722": 16000, "g729": 8000, "ogg": 8000,
}  # fmt: skip
MIME_TYPES = {"wav": "audio/wav", "wav16": "audio/wav", "WAV": "audio/wav", "gsm": "audio/gsm",
              "ulaw": "audio/basic", "alaw": "audio/x-alaw-basic", "ogg": "audio/ogg"}  # fmt: skip


def wav_bytes(seconds: float, rate: int = 8000) -> bytes:
    """
    A valid RIFF/WAVE file (PCM 16-bit mono) of ``seconds`` of silence, as Asterisk's ``wav`` format writes it.

    :param seconds: length of the audio.
    :param rate: sample rate (8000 for ``wav``, 16000 for ``wav16``).
    """
    data = bytes(2 * int(round(max(seconds, 0.0) * rate)))
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    return header + fmt + b"data" + struct.pack("<I", len(data)) + data


def recording_bytes(fmt: str, seconds: float) -> bytes:
    """
    The file content of a recording of ``seconds`` in format ``fmt`` (silence).

    :param fmt: a `RECORD_FORMATS` key.
    :param seconds: length of the audio.
    """
    rate = RECORD_FORMATS.get(fmt, 8000)
    if fmt in ("wav", "wav16", "WAV"):
        return wav_bytes(seconds, rate)
    samples = int(round(max(seconds, 0.0) * rate))
    if fmt == "ulaw":
        return b"\xff" * samples
    if fmt == "alaw":
        return b"\xd5" * samples
    return bytes(2 * samples)


def recording_mime(fmt: str) -> str:
    """The ``Content-Type`` of ``GET /recordings/stored/{name}/file`` for format ``fmt``."""
    return MIME_TYPES.get(fmt, "application/octet-stream")


def check_limits(params: dict[str, Any]) -> None:
    """400 for a negative ``maxDurationSeconds`` or ``maxSilenceSeconds`` (checked before anything else)."""
    for name, label in (("maxDurationSeconds", "max_duration_seconds"), ("maxSilenceSeconds", "max_silence_seconds")):
        if param_int(params.get(name), 0) < 0:
            raise AriHttpError(400, f"{label} cannot be negative")


def _check_name(name: str) -> None:
    if name.startswith("/") or ".." in name.split("/"):
        raise AriHttpError(400, "Recording name invalid")


@define(eq=False)
class Recordings:
    """
    Live recordings by name, and the spool of stored ones (`stored`).

    :param clock: recording time.
    :param apps: Recording* events.
    :param bridges: the recorder of bridge recordings.
    :param commands: the queue channel recordings run in.
    """

    _clock: AsteriskClock
    _apps: Applications
    _bridges: Bridges
    _commands: CommandQueue
    live: dict[str, LiveRecording] = field(factory=dict, init=False)
    #: the spool: kept across restarts
    stored: dict[str, StoredRecording] = field(factory=dict, init=False)

    def reset(self) -> None:
        """Forget the live recordings (a restart; the spool stays)."""
        self.live.clear()

    def record(self, target: Channel | Bridge, params: dict[str, Any]) -> tuple[dict, str]:
        """
        ``POST /channels/{id}/record`` (after the control's check) and ``POST /bridges/{id}/record``.

        :return: the LiveRecording and its ``Location``.
        """
        check_limits(params)
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
        _check_name(name)
        if name in self.live or (name in self.stored and if_exists == "fail"):
            raise AriHttpError(409, f"Recording '{name}' already exists and can not be overwritten")
        rec = LiveRecording(name=name, format=fmt, target=target, max_duration=param_int(params.get(
            "maxDurationSeconds"), 0), if_exists=if_exists, terminate_on=terminate_on)  # fmt: skip
        self.live[name] = rec
        if isinstance(target, Channel):
            self._commands.enqueue(target, Command(rec, lambda: self._begin(rec), lambda _hangup: self._finish(rec),
                                                   lambda: self._forget(rec)))  # fmt: skip
        else:
            target.recorders[name] = self._bridges.join_pseudo(target, "Recorder")
            self._begin(rec)
        return rec.to_json(), f"/ari/recordings/live/{quote(name, safe='')}"

    def _forget(self, rec: LiveRecording) -> None:
        self.live.pop(rec.name, None)

    def _begin(self, rec: LiveRecording) -> None:
        rec.state = "recording"
        rec.resumed_at = self._clock.now()
        self._apps.media_event("RecordingStarted", "recording", rec)
        self._schedule_max_duration(rec)

    def _schedule_max_duration(self, rec: LiveRecording) -> None:
        if rec.max_duration > 0:
            self._clock.later(rec, max(rec.max_duration - rec.active, 0.0), self._finish, rec)

    def _pause_clock(self, rec: LiveRecording) -> None:
        if rec.resumed_at is not None:
            rec.active += self._clock.now() - rec.resumed_at
            rec.resumed_at = None

    def _finish(self, rec: LiveRecording, cancelled: bool = False) -> None:
        """RecordingFinished ``done`` (after stop, cancel, hangup or maxDurationSeconds; fact 21)."""
        if self.live.get(rec.name) is not rec:
            return
        self._clock.cancel(rec)
        self._pause_clock(rec)
        rec.state = "done"
        rec.duration = int(rec.active + 1e-9)
        if cancelled:
            self.stored.pop(rec.name, None)  # the file being written is deleted, appended-to or not
        else:
            seconds = rec.active
            old = self.stored.get(rec.name)
            if rec.if_exists == "append" and old is not None and old.format == rec.format:
                seconds += old.seconds
            self.add_stored(rec.name, rec.format, seconds)
        del self.live[rec.name]
        self._apps.media_event("RecordingFinished", "recording", rec)
        target = rec.target
        if isinstance(target, Channel):
            self._commands.finished(target, rec)
        elif not target.gone:
            name = target.recorders.pop(rec.name, None)
            if name:
                self._bridges.leave_pseudo(target, name)

    def stop(self, rec: LiveRecording, cancel: bool) -> None:
        """``POST /recordings/live/{name}/stop`` (keep) or ``DELETE /recordings/live/{name}`` (discard)."""
        self._finish(rec, cancelled=cancel)

    def control(self, rec: LiveRecording, operation: str) -> None:
        """pause, unpause, mute, unmute (no events; fact 21; the fake records silence either way)."""
        if rec.state not in ("recording", "paused"):
            raise AriHttpError(409, "Recording not in session")
        if operation == "pause" and rec.state == "recording":
            self._pause_clock(rec)
            self._clock.cancel(rec)
            rec.state = "paused"
        elif operation == "unpause" and rec.state == "paused":
            rec.state = "recording"
            rec.resumed_at = self._clock.now()
            self._schedule_max_duration(rec)

    def dtmf(self, ch: Channel, digit: str) -> None:
        """``ch`` received ``digit``: its recordings with a matching ``terminateOn`` stop."""
        for rec in [r for r in self.live.values() if r.target is ch and r.state == "recording"]:
            if rec.terminate_on == "any" or rec.terminate_on == digit:
                self._finish(rec)

    def stop_on(self, bridge: Bridge) -> None:
        """The bridge is destroyed: its recordings finish."""
        for rec in [r for r in self.live.values() if r.target is bridge]:
            self._finish(rec)

    def cancel_timers(self) -> None:
        """Cancel every live recording's timers (stop, restart, teardown)."""
        for rec in self.live.values():
            self._clock.cancel(rec)

    # ----------------------------------------------------------------------------------------------------------------
    # The spool

    def add_stored(self, name: str, fmt: str, seconds: float, data: bytes | None = None) -> None:
        """Put a recording file in the spool (``data`` defaults to ``seconds`` of silence in ``fmt``)."""
        self.stored[name] = StoredRecording(name, fmt, data if data is not None else recording_bytes(fmt, seconds),
                                            seconds)  # fmt: skip

    def copy_stored(self, name: str, params: dict[str, Any]) -> dict:
        """``POST /recordings/stored/{name}/copy``."""
        source = self.stored.get(name)
        if source is None:
            raise AriHttpError(404, "Recording not found")
        dest = param_str(params.get("destinationRecordingName"))
        if not dest:
            raise AriHttpError(400, "Missing parameter destinationRecordingName")
        _check_name(dest)
        if dest in self.stored:
            raise AriHttpError(409, "A recording with the same name already exists on the system")
        self.stored[dest] = StoredRecording(dest, source.format, source.data, source.seconds)
        return self.stored[dest].to_json()
