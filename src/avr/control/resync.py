"""
Resynchronisation with Asterisk after every (re)connect of the events socket: events sent while nobody listened are
lost, so the model re-reads ``GET /channels`` and ``GET /bridges`` and reconciles.

* A call whose channel is gone is ended (``call.ended`` with cause ``null`` and a ``note``). An inbound call whose
  channel left the app is ended too; an originated one is still tracked until it is destroyed.
* A channel in the Stasis app that the model does not know appears as an inbound call (``call.created`` with
  ``resynced: true``), and gets the inbound policy if it is not answered. Its call id is derived from its channel id
  (`avr.control.records.call_id_for`), so a call found again after an avr restart has the id it had before.
  Leftover avr media channels and temporary bridges are removed.
* Tracked bridges that are gone are destroyed in the model; members are reconciled; a Stasis bridge holding some
  of our calls that the model does not know (made before avr restarted) is adopted.
* Playbacks and live recordings that no longer exist are reported finished with status/state ``unknown``.
"""

from __future__ import annotations

from attrs import define, field
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from avr.ari.errors import AriError, AriUnavailable
from avr.control.ari_link import AriLink
from avr.control.bridges import Bridges
from avr.control.call_registry import CallRegistry
from avr.control.channels import Channels, channel_in_app
from avr.control.media_leg import MediaLegs
from avr.control.playbacks import Playbacks
from avr.control.recordings import Recordings
from avr.control.tasks import TaskGroup

#: Seconds before a failed resync is tried again (while connected).
RESYNC_RETRY = 5.0


@define(eq=False)
class Resync:
    """
    Reconciles the model with Asterisk after each connect of the events socket (`start`).

    :param registry: the calls, and where the events go.
    :param ari: the way to Asterisk (and whether it is connected).
    :param tasks: runs the resync and its retry timer.
    :param clock: answer times of calls found answered.
    :param app: the Stasis application name.
    """

    registry: CallRegistry
    ari: AriLink
    tasks: TaskGroup
    clock: IReactorTime
    app: str
    channels: Channels
    bridges: Bridges
    legs: MediaLegs
    playbacks: Playbacks
    recordings: Recordings
    _resyncing: bool = field(default=False, init=False)
    _again: bool = field(default=False, init=False)
    _retry: IDelayedCall | None = field(default=None, init=False)
    #: While the resync's GETs are in flight: ids of channels and bridges that ARI events mentioned meanwhile.
    _seen: set[str] | None = field(default=None, init=False)
    log = Logger()

    def start(self) -> None:
        """Resynchronise now (once more after the running one, if one is running)."""
        if self.tasks.stopped or self.ari.client is None:
            return
        self.cancel_retry()
        if self._resyncing:
            self._again = True
            return
        self._resyncing = True
        self.tasks.spawn(self._loop(), "resynchronising with Asterisk")

    def cancel_retry(self) -> None:
        """No retry of a failed resync is wanted (ARI is down: the next connect resynchronises)."""
        self.tasks.cancel(self._retry)
        self._retry = None
    async def _loop(self) -> None:
        try:
            while True:
                self._again = False
                try:
                    await self._resync()
                except (AriError, AriUnavailable) as e:
                    self.log.warn("Cannot resynchronise with Asterisk ({error}); retrying in {delay:g} s", error=e,
                                  delay=RESYNC_RETRY)
                    if self.ari.connected and not self.tasks.stopped:
                        self._retry = self.tasks.later(RESYNC_RETRY, self.start)
                    return
                if not self._again:
                    return
        finally:
            self._resyncing = False

    async def _resync(self) -> None:
        ari = self.ari.require()
        # The answers describe Asterisk as it was when it sent them: a call or bridge created, or mentioned by an
        # event, after that point is newer than the answer and must not be judged by it.
        known = {c.channel_id for c in self.registry} | {b.id for b in self.bridges}
        self._seen = set()
        try:
            channels = [c for c in await ari.request("GET", "/channels") or [] if isinstance(c, dict) and "id" in c]
            bridges = [b for b in await ari.request("GET", "/bridges") or [] if isinstance(b, dict) and "id" in b]
            newer = ({c.channel_id for c in self.registry} | {b.id for b in self.bridges}) - known | self._seen
        finally:
            self._seen = None
        if self.tasks.stopped:
            return
        by_id = {str(c["id"]): c for c in channels}
        self._resync_calls(by_id, newer)
        self._resync_bridges(bridges, newer)
        await self.playbacks.resync()
        await self.recordings.resync()
        self.log.info("Resynchronised with Asterisk: {calls} active calls, {bridges} bridges",
                      calls=len(self.registry.active()), bridges=len(self.bridges))

    def note(self, event: dict) -> None:
        """Remember the channels and bridges an ARI event mentions while a resync waits for its answers."""
        if self._seen is None:
            return
        for key in ("channel", "bridge", "peer", "replace_channel"):
            item = event.get(key)
            if isinstance(item, dict) and "id" in item:
                self._seen.add(str(item["id"]))

    def _resync_calls(self, by_id: dict[str, dict], newer: set[str]) -> None:
        for call in self.registry:
            if call.ended or call.pending or call.channel_id in newer:
                continue
            channel = by_id.get(call.channel_id)
            if channel is None:
                self.registry.end_call(call, None, "Unknown", note="the channel was gone when ARI reconnected")
                continue
            in_app = channel_in_app(channel, self.app)
            if call.in_stasis and not in_app and not call.subscribed:
                self.registry.end_call(call, None, "Unknown", note="left the Stasis application")
                continue
            call.in_stasis = in_app
            if channel.get("state") == "Up" and call.answered_at is None:
                call.answered_at = self.clock.seconds()
            self.registry.refresh(call)
        for channel_id, channel in by_id.items():
            if self.registry.by_channel(channel_id) is not None or not channel_in_app(channel, self.app):
                continue
            if self.legs.is_media_channel(channel_id) or self.channels.is_abandoned(channel_id):
                if not self.legs.owns_channel(channel_id):
                    self.ari.hang_up_quietly(channel_id)
                continue
            if not self.channels.caller_allowed(channel):
                self.ari.hang_up_quietly(channel_id)
                continue
            args = str((channel.get("dialplan") or {}).get("app_data") or "").split(",")[1:]
            self.channels.inbound(channel, args, resynced=True)

    def _resync_bridges(self, bridges: list[dict], newer: set[str]) -> None:
        by_id = {str(b["id"]): b for b in bridges}
        live = {c.channel_id: c for c in self.registry.active()}
        where: dict[str, str] = {}
        for ari_bridge in bridges:
            for channel_id in ari_bridge.get("channels") or []:
                where[str(channel_id)] = str(ari_bridge["id"])
        for channel_id, call in live.items():
            call.ari_bridge_id = where.get(channel_id)
        for bridge in list(self.bridges):
            if bridge.id in newer:
                continue
            found = by_id.get(bridge.id)
            if found is None:
                self.bridges.gone(bridge)
                continue
            members = [live[str(c)] for c in found.get("channels") or [] if str(c) in live]
            member_ids = {c.id for c in members}
            for call_id in list(bridge.calls):
                if call_id not in member_ids:
                    self.bridges.member_left(bridge, call_id)
            for member in members:
                if bridge.id in self.bridges:
                    self.bridges.member_entered(bridge, member)
        for bridge_id, ari_bridge in by_id.items():
            if bridge_id in self.bridges:
                continue
            if self.legs.is_temporary_bridge(bridge_id):
                if self.legs.is_leftover_bridge(bridge_id):
                    self.ari.destroy_bridge_quietly(bridge_id)
                continue
            members = [live[str(c)] for c in ari_bridge.get("channels") or [] if str(c) in live]
            if members and ari_bridge.get("bridge_class") == "stasis":
                self.bridges.adopt(ari_bridge, members)
