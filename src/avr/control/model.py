"""
`CallControl`: the in-memory model of calls and bridges behind the call-control REST API, kept in step with
Asterisk by the ARI events (`IAriEventListener`) and driving Asterisk through ARI REST (`IAriClient`).

Identity: a call's API id is its ARI channel id. It needs no mapping table, stays the same across a resync or an
avr restart (``GET /channels`` gives the same ids), and can be used with Asterisk's own tools. For calls avr
originates, avr chooses the id (a UUID4) and registers the call before asking Asterisk, so events that arrive
before Asterisk's response (they usually do) are never mistaken for an unknown channel.

Call states (`avr.control.records.STATES`): outbound ``dialing`` → ``ringing`` → ``answered``; inbound ``ringing``
→ ``answered``; ``answered`` ⇄ ``bridged`` (in a bridge made through the API or a transfer); any → ``ended``.
``call.state_changed`` is published only on a real change; the end is ``call.ended`` (not a state change), exactly
once per call, with the Q.850 cause. Playback and recording are events, not states. Ended calls stay readable
through `get_call` for ``retention`` seconds.

Events published (``{"type", "callId" | "bridgeId", "timestamp", "data"}``): ``call.created`` (data: the call),
``call.state_changed`` (``previousState``, ``state``, plus ``answeredAt`` / ``bridgeId``), ``call.ended``
(``previousState``, ``cause``, ``causeText``, ``endedAt``, maybe ``dialStatus``, ``hangupReason``, ``note``),
``call.dtmf`` (``digit``, ``durationMs``), ``call.transferred``, ``call.transfer_failed``, ``playback.started``,
``playback.finished`` (``playbackId``, ``kind``, ``status``: done/failed/stopped/unknown, maybe ``error``),
``recording.started``, ``recording.finished`` (``name``, ``format``, ``state``, ``duration``), ``bridge.created``
(data: the bridge), ``bridge.destroyed``, ``bridge.channel_entered`` and ``bridge.channel_left`` (``callId``).

Every operation is a coroutine (``async def``); wrap it with ``Deferred.fromCoroutine`` at the HTTP boundary.
"""

from __future__ import annotations

from typing import Any, Callable

from zope.interface import implementer

from avr.control.resync import ResyncOps
from avr.control.transfer import TransferOps
from avr.interfaces import IAriEventListener, ICallControl


@implementer(ICallControl, IAriEventListener)
class CallControl(TransferOps, ResyncOps):
    """
    Call control over ARI. See the module documentation; the constructor's parameters are those of
    `avr.control.core.ControlCore` (``ari``, ``clock``, ``sink``, ``app``, ``inbound_policy``, ``injector``,
    ``audiosocket_address``, ``retention``, ...).

    Operations (all ``async``; failures are `avr.control.errors.ControlError` subclasses or
    `avr.ari.errors.AriError` carrying Asterisk's status): `list_calls`, `get_call`, `originate`, `answer`,
    `hangup`, `send_dtmf`, `play`, `stop_playback`, `play_pcm`, `record`, `stop_recording`, `cancel_recording`,
    `transfer`, `create_bridge`, `list_bridges`, `get_bridge`, `destroy_bridge`, `add_to_bridge`,
    `remove_from_bridge`, `list_recordings`, `get_recording`, `recording_file`, `copy_recording`,
    `delete_recording`, `list_endpoints`. Synchronous: `status`, `snapshot`, `stop`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handlers: dict[str, list[Callable[[dict], None]]] = {}
        for table in (self.legs.handlers, self.channels.handlers, self.bridges.handlers, self.playbacks.handlers,
                      self.recordings.handlers):
            for type_, handler in table.items():
                self._handlers.setdefault(type_, []).append(handler)

    def ari_connected(self) -> None:
        """The events socket is up: mark ARI connected and resynchronise from REST."""
        self.link.up()
        self._start_resync()

    def ari_event(self, event: dict) -> None:
        """Apply one ARI event to the model (unknown types and channels are ignored)."""
        self.note_resync_event(event)
        if self.tasks.stopped:
            return
        for handler in self._handlers.get(event.get("type", ""), ()):
            try:
                handler(event)
            except Exception:
                self.log.failure("Call control cannot apply an ARI {type} event", type=event.get("type"))

    def ari_disconnected(self, reason: str) -> None:
        """The events socket dropped: mark ARI disconnected (calls are kept; the next connect resynchronises)."""
        self.link.down(reason)
        self.tasks.cancel(self._resync_retry)
        self._resync_retry = None

    # -- calls --------------------------------------------------------------------------------------------------

    async def list_calls(self) -> list[dict]:
        """See `Channels.list_calls`."""
        return await self.channels.list_calls()

    async def get_call(self, call_id: str) -> dict:
        """See `Channels.get_call`."""
        return await self.channels.get_call(call_id)

    async def list_endpoints(self) -> list[dict]:
        """See `Channels.list_endpoints`."""
        return await self.channels.list_endpoints()

    async def originate(self, endpoint: str, caller_id: str | None = None, timeout: int = 30,
                        variables: dict | None = None, context: str | None = None, extension: str | None = None,
                        priority: int | None = None) -> dict:
        """See `Channels.originate`."""
        return await self.channels.originate(endpoint, caller_id, timeout, variables, context, extension, priority)

    async def answer(self, call_id: str) -> dict:
        """See `Channels.answer`."""
        return await self.channels.answer(call_id)

    async def hangup(self, call_id: str, reason: str = "normal") -> dict:
        """See `Channels.hangup`."""
        return await self.channels.hangup(call_id, reason)

    async def send_dtmf(self, call_id: str, dtmf: str, between: int | None = None,
                        duration: int | None = None) -> dict:
        """See `Channels.send_dtmf`."""
        return await self.channels.send_dtmf(call_id, dtmf, between, duration)

    # -- recordings -----------------------------------------------------------------------------------------------

    async def record(self, call_id: str, name: str | None = None, format: str = "wav", max_duration: int = 300,
                     beep: bool = False, if_exists: str = "fail") -> dict:
        """See `Recordings.record`."""
        return await self.recordings.record(call_id, name, format, max_duration, beep, if_exists)

    async def stop_recording(self, name: str) -> dict:
        """See `Recordings.stop_recording`."""
        return await self.recordings.stop_recording(name)

    async def cancel_recording(self, name: str) -> dict:
        """See `Recordings.cancel_recording`."""
        return await self.recordings.cancel_recording(name)

    async def list_recordings(self) -> list[dict]:
        """See `Recordings.list_recordings`."""
        return await self.recordings.list_recordings()

    async def get_recording(self, name: str) -> dict:
        """See `Recordings.get_recording`."""
        return await self.recordings.get_recording(name)

    async def recording_file(self, name: str) -> Any:
        """See `Recordings.recording_file`."""
        return await self.recordings.recording_file(name)

    async def copy_recording(self, name: str, destination: str) -> dict:
        """See `Recordings.copy_recording`."""
        return await self.recordings.copy_recording(name, destination)

    async def delete_recording(self, name: str) -> dict:
        """See `Recordings.delete_recording`."""
        return await self.recordings.delete_recording(name)

    # -- bridges --------------------------------------------------------------------------------------------------

    async def create_bridge(self, name: str | None = None) -> dict:
        """See `Bridges.create_bridge`."""
        return await self.bridges.create_bridge(name)

    async def list_bridges(self) -> list[dict]:
        """See `Bridges.list_bridges`."""
        return await self.bridges.list_bridges()

    async def get_bridge(self, bridge_id: str) -> dict:
        """See `Bridges.get_bridge`."""
        return await self.bridges.get_bridge(bridge_id)

    async def destroy_bridge(self, bridge_id: str) -> dict:
        """See `Bridges.destroy_bridge`."""
        return await self.bridges.destroy_bridge(bridge_id)

    async def add_to_bridge(self, bridge_id: str, call_id: str) -> dict:
        """See `Bridges.add_to_bridge`."""
        return await self.bridges.add_to_bridge(bridge_id, call_id)

    async def remove_from_bridge(self, bridge_id: str, call_id: str) -> dict:
        """See `Bridges.remove_from_bridge`."""
        return await self.bridges.remove_from_bridge(bridge_id, call_id)

    # -- playback -------------------------------------------------------------------------------------------------

    async def play(self, call_id: str, media: list[str]) -> dict:
        """See `Playbacks.play`."""
        return await self.playbacks.play(call_id, media)

    async def stop_playback(self, call_id: str, playback_id: str) -> dict:
        """See `Playbacks.stop_playback`."""
        return await self.playbacks.stop_playback(call_id, playback_id)

    async def play_pcm(self, call_id: str, pcm: bytes, rate: int) -> dict:
        """See `Playbacks.play_pcm`."""
        return await self.playbacks.play_pcm(call_id, pcm, rate)
