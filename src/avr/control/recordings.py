"""
Recordings: recording a call (live recordings, with ``recording.started``/``recording.finished`` events) and the
stored recordings on the Asterisk host (list, get, download, copy, delete).

Recording names are limited to letters, digits, ``.``, ``_`` and ``-`` (no sub-directories), so a name can never
point outside Asterisk's recording directory.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from attrs import define, field
from twisted.internet.interfaces import IReactorTime

from avr.ari.client import path_segment
from avr.ari.errors import AriError
from avr.control.ari_link import AriLink
from avr.control.call_registry import CallRegistry, require_stasis
from avr.control.errors import Conflict, Invalid, NotFound
from avr.control.records import RECORDING_NAME, CallRecord, Recording

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")



def check_name(value: Any, what: str = "name") -> str:
    """``value`` if it is a recording name (`avr.control.records.RECORDING_NAME`), else `Invalid`."""
    if not isinstance(value, str) or not RECORDING_NAME.fullmatch(value):
        raise Invalid(f"{what} must be 1-200 letters, digits, '.', '_' or '-' (not starting with '.' or '-')")
    return value


def _not_found(error: AriError, name: str) -> Exception:
    if error.status == 404:
        return NotFound(f"Recording {name} not found")
    if error.status == 409:
        return Conflict(error.message)
    return error


@define(eq=False)
class Recordings:
    """
    Live recordings of calls (by name) and the stored recordings on the Asterisk host.

    :param registry: the calls recorded, and where the events go.
    :param ari: the way to Asterisk.
    :param clock: makes the default names unique.
    """

    registry: CallRegistry
    ari: AriLink
    clock: IReactorTime
    _live: dict[str, Recording] = field(factory=dict, init=False)

    @property
    def handlers(self) -> dict[str, Callable[[dict], None]]:
        """The ARI events this component applies, by type."""
        return {
            "RecordingStarted": self._on_recording_started,
            "RecordingFinished": self._on_recording_finished,
            "RecordingFailed": self._on_recording_failed,
        }

    async def record(self, call_id: str, name: str | None = None, format: str = "wav", max_duration: int = 300,
                     beep: bool = False, if_exists: str = "fail") -> dict:
        """
        Record what the call's channel hears from the far end (ARI channel recording).

        :param name: recording name (default ``call-<id>-<epoch ms>``).
        :param format: file format Asterisk writes (``wav``, ``gsm``, ``ulaw``, ``alaw``, ``sln``, ``sln16``, ...;
            an unknown one gets Asterisk's 422).
        :param max_duration: seconds (0 = no limit).
        :param if_exists: ``fail``, ``overwrite`` or ``append``.
        :return: the live recording once Asterisk accepted it; ``recording.finished`` reports the end.
        :raises Conflict: the name is in use (or exists, with ``fail``).
        """
        if name is not None:
            check_name(name)
        call = self.registry.live(call_id)
        require_stasis(call)
        ari = self.ari.require()
        if name is None:
            name = f"call-{_UNSAFE.sub('-', call.id)}-{int(self.clock.seconds() * 1000)}"
        if name in self._live:
            raise Conflict(f"Recording {name} is already in progress")
        recording = Recording(name, call.id, format, self.clock.seconds())
        self._live[name] = recording
        try:
            await ari.request("POST", f"/channels/{path_segment(call.channel_id)}/record", {
                "name": name, "format": format, "maxDurationSeconds": max_duration, "beep": beep,
                "ifExists": if_exists, "terminateOn": "none"})
        except AriError as e:
            if not recording.started_published:
                self._live.pop(name, None)
            if e.status == 409:
                raise Conflict(e.message) from None
            raise
        except BaseException:
            if not recording.started_published:
                self._live.pop(name, None)
            raise
        if name not in call.recordings:
            call.recordings.append(name)
        if not recording.finished:
            recording.state = "recording"
        self._started(recording)
        return recording.to_dict()

    async def stop_recording(self, name: str) -> dict:
        """Stop a live recording and keep the file (``recording.finished`` follows). :raises NotFound:"""
        return await self._end_live_recording(name, "POST", "/stop", "stopped")

    async def cancel_recording(self, name: str) -> dict:
        """Stop a live recording and discard the file. :raises NotFound:"""
        return await self._end_live_recording(name, "DELETE", "", "cancelled")

    async def _end_live_recording(self, name: str, method: str, suffix: str, status: str) -> dict:
        check_name(name)
        try:
            await self.ari.require().request(method, f"/recordings/live/{path_segment(name)}{suffix}")
        except AriError as e:
            raise _not_found(e, name) from None
        return {"name": name, "status": status}

    async def list_recordings(self) -> list[dict]:
        """The stored recordings: ``[{"name", "format"}]``."""
        stored = await self.ari.require().request("GET", "/recordings/stored")
        return [{"name": r.get("name"), "format": r.get("format")} for r in stored or [] if isinstance(r, dict)]

    async def get_recording(self, name: str) -> dict:
        """One stored recording: ``{"name", "format"}``. :raises NotFound:"""
        check_name(name)
        try:
            stored = await self.ari.require().request("GET", f"/recordings/stored/{path_segment(name)}")
        except AriError as e:
            raise _not_found(e, name) from None
        return {"name": stored.get("name", name), "format": stored.get("format")}

    async def recording_file(self, name: str) -> Any:
        """
        The stored recording's file.

        :return: the treq response, body unread (stream it; its ``Content-Type`` is Asterisk's, e.g. audio/wav).
        :raises NotFound:
        """
        check_name(name)
        try:
            return await self.ari.require().stream(f"/recordings/stored/{path_segment(name)}/file")
        except AriError as e:
            raise _not_found(e, name) from None

    async def copy_recording(self, name: str, destination: str) -> dict:
        """Copy a stored recording. :return: ``{"name", "format"}`` of the copy. :raises NotFound, Conflict:"""
        check_name(name)
        check_name(destination, "destination")
        try:
            copy = await self.ari.require().request("POST", f"/recordings/stored/{path_segment(name)}/copy",
                                                    {"destinationRecordingName": destination})
        except AriError as e:
            raise _not_found(e, name) from None
        return {"name": (copy or {}).get("name", destination), "format": (copy or {}).get("format")}

    async def delete_recording(self, name: str) -> dict:
        """Delete a stored recording. :raises NotFound:"""
        check_name(name)
        try:
            await self.ari.require().request("DELETE", f"/recordings/stored/{path_segment(name)}")
        except AriError as e:
            raise _not_found(e, name) from None
        return {"name": name, "status": "deleted"}

    # -- events -------------------------------------------------------------------------------------------------

    def _started(self, recording: Recording) -> None:
        if recording.started_published:
            return
        recording.started_published = True
        self.registry.publish("recording.started", {"name": recording.name, "format": recording.format},
                              self.registry.find(recording.call_id))

    def _finished(self, recording: Recording, state: str, duration: Any = None, cause: Any = None) -> None:
        if recording.finished:
            return
        self._started(recording)
        recording.finished = True
        recording.state = state
        self._live.pop(recording.name, None)
        data: dict[str, Any] = {"name": recording.name, "format": recording.format, "state": state,
                                "duration": duration}
        if cause:
            data["cause"] = cause
        self.registry.publish("recording.finished", data, self.registry.find(recording.call_id))

    def _ari_recording(self, event: dict) -> tuple[Recording | None, dict]:
        live = event.get("recording") or {}
        return self._live.get(str(live.get("name"))), live

    def _on_recording_started(self, event: dict) -> None:
        recording, _ = self._ari_recording(event)
        if recording is not None and not recording.finished:
            recording.state = "recording"
            self._started(recording)

    def _on_recording_finished(self, event: dict) -> None:
        recording, live = self._ari_recording(event)
        if recording is not None:
            self._finished(recording, str(live.get("state") or "done"), live.get("duration"),
                           live.get("cause"))

    def _on_recording_failed(self, event: dict) -> None:
        recording, live = self._ari_recording(event)
        if recording is not None:
            self._finished(recording, "failed", live.get("duration"), live.get("cause"))

    def call_ended(self, call: CallRecord) -> None:
        """The recordings of the ended ``call`` are over (their state is ``unknown``: Asterisk may still report it)."""
        for recording in [r for r in self._live.values() if r.call_id == call.id]:
            self._finished(recording, "unknown")

    async def resync(self) -> None:
        """After a reconnect: live recordings that Asterisk no longer has are reported finished (``unknown``)."""
        for recording in [r for r in self._live.values() if r.state == "recording"]:
            if await self.ari.gone(f"/recordings/live/{path_segment(recording.name)}"):
                self._finished(recording, "unknown")
