"""
Resynchronisation with Asterisk after every (re)connect of the events socket: events sent while nobody listened are
lost, so the model re-reads ``GET /channels`` and ``GET /bridges`` and reconciles.

* A call whose channel is gone is ended (``call.ended`` with cause ``null`` and a ``note``). An inbound call whose
  channel left the app is ended too; an originated one is still tracked until it is destroyed.
* A channel in the Stasis app that the model does not know appears as an inbound call (``call.created`` with
  ``resynced: true``), and gets the inbound policy if it is not answered. Leftover avr media channels and temporary
  bridges are removed.
* Tracked bridges that are gone are destroyed in the model; members are reconciled; a Stasis bridge holding some
  of our calls that the model does not know (made before avr restarted) is adopted.
* Playbacks and live recordings that no longer exist are reported finished with status/state ``unknown``.
"""

from __future__ import annotations

from typing import Any

from avr.ari.errors import AriError, AriUnavailable
from avr.control.channels import channel_in_app
from avr.control.core import ControlCore

#: Seconds before a failed resync is tried again (while connected).
RESYNC_RETRY = 5.0


class ResyncOps(ControlCore):
    """The resync after each connect."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resyncing = False
        self._resync_again = False
        self._resync_retry: Any = None
        #: While the resync's GETs are in flight: ids of channels and bridges that ARI events mentioned meanwhile.
        self._seen_during_resync: set[str] | None = None

    def _start_resync(self) -> None:
        if self.tasks.stopped or self.link.client is None:
            return
        self.tasks.cancel(self._resync_retry)
        self._resync_retry = None
        if self._resyncing:
            self._resync_again = True
            return
        self._resyncing = True
        self.tasks.spawn(self._resync_loop(), "resynchronising with Asterisk")

    async def _resync_loop(self) -> None:
        try:
            while True:
                self._resync_again = False
                try:
                    await self._resync()
                except (AriError, AriUnavailable) as e:
                    self.log.warn("Cannot resynchronise with Asterisk ({error}); retrying in {delay:g} s", error=e,
                                  delay=RESYNC_RETRY)
                    if self.link.connected and not self.tasks.stopped:
                        self._resync_retry = self.tasks.later(RESYNC_RETRY, self._start_resync)
                    return
                if not self._resync_again:
                    return
        finally:
            self._resyncing = False

    async def _resync(self) -> None:
        ari = self.link.require()
        # The answers describe Asterisk as it was when it sent them: a call or bridge created, or mentioned by an
        # event, after that point is newer than the answer and must not be judged by it.
        known = {c.id for c in self.registry} | {b.id for b in self.bridges}
        self._seen_during_resync = set()
        try:
            channels = [c for c in await ari.request("GET", "/channels") or [] if isinstance(c, dict) and "id" in c]
            bridges = [b for b in await ari.request("GET", "/bridges") or [] if isinstance(b, dict) and "id" in b]
            newer = ({c.id for c in self.registry} | {b.id for b in self.bridges}) - known | self._seen_during_resync
        finally:
            self._seen_during_resync = None
        if self.tasks.stopped:
            return
        by_id = {str(c["id"]): c for c in channels}
        self._resync_calls(by_id, newer)
        self._resync_bridges(bridges, newer)
        await self.playbacks.resync()
        await self.recordings.resync()
        self.log.info("Resynchronised with Asterisk: {calls} active calls, {bridges} bridges",
                      calls=self.status()["activeCalls"], bridges=len(self.bridges))

    def note_resync_event(self, event: dict) -> None:
        """Remember the channels and bridges an ARI event mentions while a resync waits for its answers."""
        if self._seen_during_resync is None:
            return
        for key in ("channel", "bridge", "peer", "replace_channel"):
            item = event.get(key)
            if isinstance(item, dict) and "id" in item:
                self._seen_during_resync.add(str(item["id"]))

    def _resync_calls(self, by_id: dict[str, dict], newer: set[str]) -> None:
        for call in self.registry:
            if call.ended or call.pending or call.id in newer:
                continue
            channel = by_id.get(call.id)
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
            if channel_id in self.registry or not channel_in_app(channel, self.app):
                continue
            if self.legs.is_media_channel(channel_id) or self.channels.is_abandoned(channel_id):
                if not self.legs.owns_channel(channel_id):
                    self.link.hang_up_quietly(channel_id)
                continue
            args = str((channel.get("dialplan") or {}).get("app_data") or "").split(",")[1:]
            self.channels.inbound(channel, args, resynced=True)

    def _resync_bridges(self, bridges: list[dict], newer: set[str]) -> None:
        by_id = {str(b["id"]): b for b in bridges}
        live = {c.id: c for c in self.registry.active()}
        where: dict[str, str] = {}
        for ari_bridge in bridges:
            for channel_id in ari_bridge.get("channels") or []:
                where[str(channel_id)] = str(ari_bridge["id"])
        for call in live.values():
            call.ari_bridge_id = where.get(call.id)
        for bridge in list(self.bridges):
            if bridge.id in newer:
                continue
            ari_bridge = by_id.get(bridge.id)
            if ari_bridge is None:
                self.bridges.gone(bridge)
                continue
            members = [str(c) for c in ari_bridge.get("channels") or [] if str(c) in live]
            for call_id in list(bridge.calls):
                if call_id not in members:
                    self.bridges.member_left(bridge, call_id)
            for call_id in members:
                if bridge.id in self.bridges:
                    self.bridges.member_entered(bridge, live[call_id])
        for bridge_id, ari_bridge in by_id.items():
            if bridge_id in self.bridges:
                continue
            if self.legs.is_temporary_bridge(bridge_id):
                if self.legs.is_leftover_bridge(bridge_id):
                    self.link.destroy_bridge_quietly(bridge_id)
                continue
            members = [live[str(c)] for c in ari_bridge.get("channels") or [] if str(c) in live]
            if members and ari_bridge.get("bridge_class") == "stasis":
                self.bridges.adopt(ari_bridge, members)
