"""
Bridges made through the API (and by transfers): create, list, destroy, add and remove calls, and the ARI bridge
events.

Asterisk never sends ``BridgeCreated`` for bridges created over ARI and often no ``BridgeDestroyed`` either (only
while the app is still subscribed to the bridge), so ``bridge.created`` and ``bridge.destroyed`` are published by
avr itself, exactly once each. Membership follows ``ChannelEnteredBridge``/``ChannelLeftBridge`` (which come before
Asterisk's 204) and the 204 itself, whichever comes first; ``bridge.channel_entered``/``bridge.channel_left`` are
published once per change. Only calls are members: avr's media channels never appear.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from attrs import define, field
from twisted.internet.interfaces import IReactorTime

from avr.ari.client import path_segment
from avr.ari.errors import AriError
from avr.control.ari_link import AriLink
from avr.control.call_registry import CallRegistry, require_stasis
from avr.control.errors import Conflict, NotFound
from avr.control.records import Bridge, CallRecord


@define(eq=False)
class Bridges:
    """
    The bridges made through the API (kind ``user``) or by transfers (kind ``transfer``), and their members.

    :param registry: the calls, and where the events go.
    :param ari: the way to Asterisk.
    :param clock: creation times.
    :param new_id: makes the ids of new bridges.
    """

    registry: CallRegistry
    ari: AriLink
    clock: IReactorTime
    new_id: Callable[[], str]
    _bridges: dict[str, Bridge] = field(factory=dict, init=False)

    @property
    def handlers(self) -> dict[str, Callable[[dict], None]]:
        """The ARI events this component applies, by type."""
        return {
            "ChannelEnteredBridge": self._on_channel_entered_bridge,
            "ChannelLeftBridge": self._on_channel_left_bridge,
            "BridgeDestroyed": self._on_bridge_destroyed,
        }

    def __iter__(self) -> Iterator[Bridge]:
        return iter(list(self._bridges.values()))

    def __len__(self) -> int:
        return len(self._bridges)

    def __contains__(self, bridge_id: object) -> bool:
        return bridge_id in self._bridges
    async def create_bridge(self, name: str | None = None) -> dict:
        """Create a mixing bridge (id chosen by avr). :return: the bridge. ``bridge.created`` is published."""
        return (await self.create(name, "user")).to_dict()

    async def create(self, name: str | None, kind: str) -> Bridge:
        """Create a mixing bridge of ``kind`` in Asterisk and track it (``bridge.created`` is published)."""
        ari = self.ari.require()
        bridge = Bridge(self.new_id(), name, self.clock.seconds(), kind)
        await ari.request("POST", f"/bridges/{path_segment(bridge.id)}", {"type": "mixing", "name": name})
        self._bridges[bridge.id] = bridge
        self.registry.publish("bridge.created", bridge.to_dict(), bridge_id=bridge.id)
        return bridge

    async def list_bridges(self) -> list[dict]:
        """The bridges made through the API or by transfers (avr's temporary playback bridges are not listed)."""
        return [b.to_dict() for b in self._bridges.values()]

    async def get_bridge(self, bridge_id: str) -> dict:
        """One bridge. :raises NotFound:"""
        return self.require(bridge_id).to_dict()

    def require(self, bridge_id: str) -> Bridge:
        """A tracked bridge. :raises NotFound:"""
        bridge = self._bridges.get(bridge_id)
        if bridge is None:
            raise NotFound(f"Bridge {bridge_id} not found")
        return bridge

    async def destroy_bridge(self, bridge_id: str) -> dict:
        """
        Destroy a bridge; the calls in it stay up (state ``answered``). ``bridge.channel_left`` for each, then
        ``bridge.destroyed``. :raises NotFound:
        """
        bridge = self.require(bridge_id)
        try:
            await self.ari.require().request("DELETE", f"/bridges/{path_segment(bridge.id)}")
        except AriError as e:
            if e.status != 404:
                raise
        self.gone(bridge)
        return {"id": bridge.id, "status": "destroyed"}

    async def add_to_bridge(self, bridge_id: str, call_id: str) -> dict:
        """
        Put a call into a bridge (out of any other bridge it was in). Adding a member again is a no-op.

        :return: the bridge. :raises NotFound: bridge or call. :raises Conflict: ended, not in Stasis, or being
            transferred.
        """
        bridge = self.require(bridge_id)
        call = self.registry.live(call_id)
        if call.id in bridge.calls:
            return bridge.to_dict()
        require_stasis(call)
        if call.transfer_pending:
            raise Conflict(f"Call {call_id} is being transferred")
        await self.ari.require().request("POST", f"/bridges/{path_segment(bridge.id)}/addChannel",
                                         {"channel": call.channel_id})
        if bridge.id in self._bridges and not call.ended:
            self.member_entered(bridge, call)
        return bridge.to_dict()

    async def remove_from_bridge(self, bridge_id: str, call_id: str) -> dict:
        """Take a call out of a bridge (it stays up). :return: the bridge. :raises NotFound, Conflict:"""
        bridge = self.require(bridge_id)
        call = self.registry.require(call_id)
        if call.id not in bridge.calls:
            raise Conflict(f"Call {call_id} is not in bridge {bridge_id}")
        await self.ari.require().request("POST", f"/bridges/{path_segment(bridge.id)}/removeChannel",
                                         {"channel": call.channel_id})
        self.member_left(bridge, call.id)
        return bridge.to_dict()

    # -- membership ---------------------------------------------------------------------------------------------

    def member_entered(self, bridge: Bridge, call: CallRecord) -> None:
        """``call`` is in ``bridge`` now (out of any other bridge of ours): published once."""
        call.ari_bridge_id = bridge.id
        if call.id in bridge.calls:
            return
        previous = self._bridges.get(call.bridge_id) if call.bridge_id is not None else None
        if previous is not None and previous is not bridge:
            self.member_left(previous, call.id)
        bridge.calls.append(call.id)
        bridge.channels[call.id] = call.channel_id
        call.bridge_id = bridge.id
        call.ari_bridge_id = bridge.id
        self.registry.publish("bridge.channel_entered", {"callId": call.id}, bridge_id=bridge.id)
        self.registry.refresh(call)

    def member_left(self, bridge: Bridge, call_id: str) -> None:
        """``call_id`` left ``bridge``: published once; a transfer bridge left with one party is destroyed."""
        if call_id not in bridge.calls:
            return
        bridge.calls.remove(call_id)
        bridge.channels.pop(call_id, None)
        call = self.registry.find(call_id)
        if call is not None:
            if call.bridge_id == bridge.id:
                call.bridge_id = None
            if call.ari_bridge_id == bridge.id:
                call.ari_bridge_id = None
        self.registry.publish("bridge.channel_left", {"callId": call_id}, bridge_id=bridge.id)
        if call is not None:
            self.registry.refresh(call)
        if bridge.kind == "transfer" and len(bridge.calls) < 2 and bridge.id in self._bridges:
            # A transfer bridge exists for its two parties: once one has gone, the other stays up on its own.
            self.ari.destroy_bridge_quietly(bridge.id)
            self.gone(bridge)

    def gone(self, bridge: Bridge) -> None:
        """``bridge`` no longer exists: its members leave, then ``bridge.destroyed`` is published."""
        if self._bridges.get(bridge.id) is not bridge:
            return
        del self._bridges[bridge.id]
        for call_id in list(bridge.calls):
            self.member_left(bridge, call_id)
        self.registry.publish("bridge.destroyed", {"id": bridge.id, "name": bridge.name, "kind": bridge.kind},
                              bridge_id=bridge.id)

    def call_ended(self, call: CallRecord) -> None:
        """The ended ``call`` leaves its bridge."""
        bridge = self._bridges.get(call.bridge_id) if call.bridge_id is not None else None
        if bridge is not None:
            self.member_left(bridge, call.id)

    # -- events -------------------------------------------------------------------------------------------------

    def _bridge_event(self, event: dict) -> tuple[str | None, CallRecord | None]:
        bridge_id = (event.get("bridge") or {}).get("id")
        channel_id = (event.get("channel") or {}).get("id")
        call = self.registry.by_channel(channel_id)
        return (bridge_id if isinstance(bridge_id, str) else None), call

    def _on_channel_entered_bridge(self, event: dict) -> None:
        bridge_id, call = self._bridge_event(event)
        if bridge_id is None or call is None or call.ended:
            return
        call.ari_bridge_id = bridge_id
        bridge = self._bridges.get(bridge_id)
        if bridge is not None:
            self.member_entered(bridge, call)

    def _on_channel_left_bridge(self, event: dict) -> None:
        bridge_id, call = self._bridge_event(event)
        if bridge_id is None or call is None:
            return
        if call.ari_bridge_id == bridge_id:
            call.ari_bridge_id = None
        bridge = self._bridges.get(bridge_id)
        if bridge is not None:
            self.member_left(bridge, call.id)

    def _on_bridge_destroyed(self, event: dict) -> None:
        bridge_id, _ = self._bridge_event(event)
        bridge = self._bridges.get(bridge_id) if bridge_id is not None else None
        if bridge is not None:
            self.gone(bridge)
        for call in self.registry:
            if call.ari_bridge_id == bridge_id:
                call.ari_bridge_id = None

    def adopt(self, ari_bridge: dict[str, Any], members: list[CallRecord]) -> None:
        """Track a bridge found at resync that holds some of our calls (made before avr restarted)."""
        bridge = Bridge(str(ari_bridge["id"]), ari_bridge.get("name") or None, self.clock.seconds(), "user")
        self._bridges[bridge.id] = bridge
        data = bridge.to_dict()
        data["resynced"] = True
        self.registry.publish("bridge.created", data, bridge_id=bridge.id)
        for call in members:
            self.member_entered(bridge, call)
