"""
Media legs: ARI ``externalMedia`` AudioSocket channels that Asterisk opens back to avr's own AudioSocket server,
each joined to a call. Uploaded-audio playback uses them; anything else that needs the call's audio can.

Lifecycle of one `MediaLeg` (`MediaLegs.open`, then `MediaLeg.start`):

1. ``connect(uuid)``, given by the owner, arms what handles the AudioSocket connection that will arrive with the
   leg's UUID (today `avr.interfaces.IAudioInjector.expect`) and returns a Deferred of that work's end; cancelling
   it ends the work.
2. ``POST /channels/externalMedia`` with ``channelId`` ``avr-media-<uuid>``, ``data`` = the UUID, the ``format``,
   ``external_host`` = avr's AudioSocket address, ``encapsulation=audiosocket`` and ``transport=tcp``.
3. Wait (at most ``setup_timeout``) for the channel to enter Stasis.
4. Join the call's current bridge (everyone in it is joined with the leg, and the call is never pulled out), or
   else a temporary mixing bridge ``avr-tmp-<uuid>`` holding the call and the leg (shared by the call's next legs).
5. Release (`MediaLeg.release`, idempotent): the work is cancelled if still running, the channel hung up, and a
   temporary bridge destroyed once no leg uses it.

A leg ends when its work ends (done or failed), when it is stopped (`MediaLeg.stop`; also when the call leaves its
temporary bridge, and at shutdown) or aborted (`MediaLeg.abort`; when the call ends). A started leg is released
then, and its owner's ``on_end(leg)`` is called once; ``leg.error`` and ``leg.stopped`` tell how it ended.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable

from attrs import define, field
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from avr.ari.client import path_segment
from avr.control.ari_link import AriLink
from avr.control.call_registry import CallRegistry
from avr.control.errors import Conflict, Timeout
from avr.control.records import MEDIA_CHANNEL_PREFIX, TEMP_BRIDGE_PREFIX, CallRecord, MediaLegRecord
from avr.control.tasks import TaskGroup


@define(eq=False)
class MediaLeg:
    """
    One externalMedia channel joined to ``call``. Made by `MediaLegs.open`.

    :ivar what: what the leg carries, for error messages (``the uploaded audio``).
    :ivar error: why the work ended, or ``None`` when it completed.
    :ivar stopped: the leg was asked to stop (by its owner, by the call leaving its temporary bridge, at shutdown).
    """

    legs: MediaLegs
    call: CallRecord
    format: str
    what: str
    on_end: Callable[[MediaLeg], None]
    uuid: str = field(factory=lambda: str(uuid.uuid4()))
    #: Another channel of the call to join instead of the call itself (a snoop channel capturing its audio):
    #: always in a temporary bridge of its own, the call's bridges untouched.
    join_channel: str | None = None
    bridge_id: str | None = field(default=None, init=False)
    work: Deferred | None = field(default=None, init=False)
    started: bool = field(default=False, init=False)
    ended: bool = field(default=False, init=False)
    stopped: bool = field(default=False, init=False)
    error: str | None = field(default=None, init=False)
    _channel_open: bool = field(default=True, init=False)
    _abort_reason: str | None = field(default=None, init=False)

    @property
    def channel_id(self) -> str:
        """The ARI id of the leg's channel."""
        return MEDIA_CHANNEL_PREFIX + self.uuid

    @property
    def joined(self) -> str:
        """The channel the leg is joined with: the call's, or `join_channel`."""
        return self.join_channel or self.call.channel_id

    async def start(self, connect: Callable[[str], Deferred]) -> None:
        """
        Arm ``connect(uuid)``, create the channel, wait for Stasis and join the bridge.

        :raises Timeout: the channel did not enter Stasis in time. :raises Conflict: the call ended, or the work
            ended, before the leg was joined. :raises AriError: Asterisk refused a step. The leg is released then.
        """
        in_stasis = self.legs.wait_stasis(self.channel_id)
        self.work = connect(self.uuid)
        self.work.addBoth(self._work_ended)
        try:
            await self._join(in_stasis)
        except BaseException as e:
            in_stasis.cancel()
            in_stasis.addErrback(lambda _: None)  # nobody waits for it any more
            self.release()
            if isinstance(e, (TimeoutError, CancelledError)):
                raise Timeout(f"The media channel for {self.what} did not start in time") from None
            raise
        self.started = True

    async def _join(self, in_stasis: Deferred) -> None:
        ari = self.legs.ari.require()
        call = self.call
        await ari.request("POST", "/channels/externalMedia", {
            "app": self.legs.app, "external_host": self.legs.address, "encapsulation": "audiosocket",
            "transport": "tcp", "format": self.format, "data": self.uuid, "channelId": self.channel_id,
        })
        await in_stasis
        self._check()
        target = call.ari_bridge_id if self.join_channel is None else None
        if target is not None:
            await ari.request("POST", f"/bridges/{path_segment(target)}/addChannel", {"channel": self.channel_id})
            self.bridge_id = target
            self.legs.use_bridge(target, self)
        else:
            bridge_id = TEMP_BRIDGE_PREFIX + self.uuid
            self.bridge_id = bridge_id
            self.legs.use_bridge(bridge_id, self, temporary=True)
            await ari.request("POST", f"/bridges/{path_segment(bridge_id)}", {"type": "mixing", "name": bridge_id})
            self._check()
            await ari.request("POST", f"/bridges/{path_segment(bridge_id)}/addChannel",
                              {"channel": [self.joined, self.channel_id]})
            if not call.ended and self.join_channel is None:
                call.ari_bridge_id = bridge_id
        self._check()

    def _check(self) -> None:
        if self.call.ended:
            raise Conflict(f"Call {self.call.id} ended before {self.what} started")
        if self.work is not None and self.work.called:
            raise Conflict(f"The AudioSocket connection for {self.what} ended before it started ({self.error})")

    def stop(self) -> None:
        """End the leg on request: its work is cancelled (``stopped`` is set)."""
        self.stopped = True
        self._cancel_work()

    def abort(self, reason: str) -> None:
        """End the leg because of ``reason`` (e.g. the call ended): its work is cancelled, ``error`` is ``reason``."""
        self._abort_reason = reason
        self._cancel_work()

    def _cancel_work(self) -> None:
        if self.work is not None and not self.work.called:
            self.work.cancel()

    def _work_ended(self, result: Any) -> None:
        if isinstance(result, Failure):
            cancelled = result.check(CancelledError) is not None
            self.error = self._abort_reason or str(result.value) or ("cancelled" if cancelled else "failed")
        if not self.started or self.ended:
            return None  # start() sees it and fails
        self.ended = True
        self.release()
        self.on_end(self)
        return None

    def release(self) -> None:
        """Cancel the work, hang up the channel and leave the bridge (a temporary one nobody uses is destroyed)."""
        self._cancel_work()
        if self._channel_open:
            self._channel_open = False
            self.legs.channel_released(self)
        if self.bridge_id is not None:
            bridge_id, self.bridge_id = self.bridge_id, None
            self.legs.leave_bridge(bridge_id, self)


@define(eq=False)
class MediaLegs:
    """
    The media legs: their channels (so that their ARI events are told apart from calls'), the waits for those
    channels to enter Stasis, and the temporary bridges they made. Each leg is in the call registry while its
    channel exists (`MediaLegRecord`).

    :param registry: the call registry.
    :param ari: the way to Asterisk.
    :param tasks: the Stasis waits and the clean-up requests.
    :param app: the Stasis application the channels are created in.
    :param address: ``host:port`` where Asterisk reaches avr's AudioSocket server (``None``: no legs possible).
    :param setup_timeout: seconds for a channel to enter Stasis.
    """

    registry: CallRegistry
    ari: AriLink
    tasks: TaskGroup
    app: str
    address: str | None
    setup_timeout: float = 10.0
    #: The legs' channels: id -> in Stasis yet.
    _channels: dict[str, bool] = field(factory=dict, init=False)
    _waiters: dict[str, list[Deferred]] = field(factory=dict, init=False)
    #: Temporary bridges: id -> the legs in it.
    _temporary: dict[str, set[MediaLeg]] = field(factory=dict, init=False)
    _legs: set[MediaLeg] = field(factory=set, init=False)
    log = Logger()

    @property
    def handlers(self) -> dict[str, Callable[[dict], None]]:
        """The ARI events this component applies, by type."""
        return {
            "StasisStart": self._on_stasis_start,
            "ChannelDestroyed": self._on_channel_destroyed,
            "ChannelLeftBridge": self._on_channel_left_bridge,
        }

    def open(self, call: CallRecord, format: str, what: str, on_end: Callable[[MediaLeg], None],
             join_channel: str | None = None) -> MediaLeg:
        """
        A new leg for ``call`` carrying audio in ARI ``format`` (``slin16``, ...); `MediaLeg.start` it.

        :param join_channel: a channel to join instead of the call's (see `MediaLeg.join_channel`).
        """
        leg = MediaLeg(self, call, format, what, on_end, join_channel=join_channel)
        self._channels[leg.channel_id] = False
        self._legs.add(leg)
        self.registry.add(MediaLegRecord(leg.channel_id, leg.uuid, call.id, self.registry.clock.seconds()))
        return leg

    def claim(self, channel_id: str) -> None:
        """``channel_id`` (named with `MEDIA_CHANNEL_PREFIX`) is a channel avr is about to make for a call other
        than a leg's (a snoop): its StasisStart is awaited with `wait_stasis`, not hung up as a leftover."""
        self._channels.setdefault(channel_id, False)

    def release(self, channel_id: str) -> None:
        """A `claim` ed channel is done with: it is hung up."""
        if self._channels.pop(channel_id, None) is not None:
            self.ari.hang_up_quietly(channel_id)

    def is_media_channel(self, channel_id: str) -> bool:
        """``channel_id`` is a media leg's channel, or one avr made before it restarted."""
        return channel_id in self._channels or channel_id.startswith(MEDIA_CHANNEL_PREFIX)

    def owns_channel(self, channel_id: str) -> bool:
        """``channel_id`` is the channel of a leg in progress."""
        return channel_id in self._channels

    def is_leftover_bridge(self, bridge_id: str) -> bool:
        """``bridge_id`` is a temporary bridge avr made but no leg uses (left from before a restart)."""
        return bridge_id.startswith(TEMP_BRIDGE_PREFIX) and bridge_id not in self._temporary

    def is_temporary_bridge(self, bridge_id: str) -> bool:
        """``bridge_id`` is named like avr's temporary bridges."""
        return bridge_id.startswith(TEMP_BRIDGE_PREFIX)

    def call_ended(self, call: CallRecord) -> None:
        """The legs of the ended ``call`` end (``error``: the call ended)."""
        for leg in [leg for leg in self._legs if leg.call is call]:
            leg.abort("the call ended")

    def stop(self) -> None:
        """Shutting down: every leg is stopped (and released)."""
        for leg in list(self._legs):
            leg.stop()

    # -- what the legs use ----------------------------------------------------------------------------------------

    def wait_stasis(self, channel_id: str) -> Deferred:
        """A Deferred firing once ``channel_id`` is in Stasis (failing if it is hung up or after the timeout)."""
        if self._channels.get(channel_id):
            return succeed(None)
        d: Deferred = Deferred()
        self._waiters.setdefault(channel_id, []).append(d)

        def forget(result: Any) -> Any:
            waiters = self._waiters.get(channel_id)
            if waiters is not None and d in waiters:
                waiters.remove(d)
                if not waiters:
                    del self._waiters[channel_id]
            return result

        d.addBoth(forget)
        return self.tasks.wait(d, self.setup_timeout)

    def channel_released(self, leg: MediaLeg) -> None:
        """``leg`` is done with its channel: it is hung up."""
        self._channels.pop(leg.channel_id, None)
        self._legs.discard(leg)
        record = self.registry.lookup(leg.channel_id)
        if isinstance(record, MediaLegRecord):
            record.ended = True
            self.registry.forget(record)
        self.ari.hang_up_quietly(leg.channel_id)

    def use_bridge(self, bridge_id: str, leg: MediaLeg, temporary: bool = False) -> None:
        """``leg`` joins ``bridge_id`` (a new temporary bridge when ``temporary``)."""
        if temporary:
            self._temporary[bridge_id] = {leg}
        elif bridge_id in self._temporary:
            self._temporary[bridge_id].add(leg)

    def leave_bridge(self, bridge_id: str, leg: MediaLeg) -> None:
        """``leg`` left ``bridge_id``: a temporary bridge no leg uses any more is destroyed."""
        users = self._temporary.get(bridge_id)
        if users is None:
            return
        users.discard(leg)
        if not users:
            del self._temporary[bridge_id]
            self.ari.destroy_bridge_quietly(bridge_id)

    # -- events ---------------------------------------------------------------------------------------------------

    def _on_stasis_start(self, event: dict) -> None:
        channel_id = (event.get("channel") or {}).get("id")
        if not isinstance(channel_id, str) or not self.is_media_channel(channel_id):
            return
        if channel_id not in self._channels:
            self.log.info("Hanging up leftover media channel {id}", id=channel_id)
            self.ari.hang_up_quietly(channel_id)
            return
        self._channels[channel_id] = True
        for waiter in self._waiters.pop(channel_id, []):
            if not waiter.called:
                waiter.callback(None)

    def _on_channel_destroyed(self, event: dict) -> None:
        channel_id = (event.get("channel") or {}).get("id")
        if not isinstance(channel_id, str) or not self.is_media_channel(channel_id):
            return
        self._channels.pop(channel_id, None)
        for waiter in self._waiters.pop(channel_id, []):
            if not waiter.called:
                waiter.errback(Conflict(f"media channel {channel_id} was hung up"))

    def _on_channel_left_bridge(self, event: dict) -> None:
        # The call left a temporary bridge (moved elsewhere): what its legs there carry can no longer be heard.
        bridge_id = (event.get("bridge") or {}).get("id")
        channel_id = (event.get("channel") or {}).get("id")
        for leg in list(self._temporary.get(bridge_id, ()) if isinstance(bridge_id, str) else ()):
            if leg.joined == channel_id and leg.started:
                leg.stop()
