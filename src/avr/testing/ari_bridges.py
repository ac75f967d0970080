"""
Bridges of the fake Asterisk: create, add and remove channels, destroy, and their members' ``BRIDGEPEER``.

What the captures fixed (fact 23): creating a bridge sends no BridgeCreated; addChannel sends ChannelEnteredBridge
per channel; with two or more members every member's ``BRIDGEPEER`` is set (the others' names, newest first); a
member that leaves with a non-empty ``BRIDGEPEER`` has it cleared before ChannelLeftBridge; BridgeDestroyed is sent
only while an application is still subscribed to the bridge (a channel entering subscribes its app, leaving through
removeChannel or destroy unsubscribes it, a hangup in the bridge does not). Announcer and recorder pseudo-channels
of bridge playbacks and recordings are members too (they count for ``BRIDGEPEER`` and the technology).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import define, field

from avr.testing.ari_applications import Applications
from avr.testing.ari_channels import Channels
from avr.testing.ari_clock import AsteriskClock
from avr.testing.ari_model import Bridge, Channel
from avr.testing.ari_params import AriHttpError, param_str

BRIDGE_TYPES = frozenset({"mixing", "holding", "dtmf_events", "proxy_media", "video_sfu", "video_single", "sdp_label"})


@define(eq=False)
class Bridges:
    """
    Bridges by id.

    :param clock: creation times.
    :param apps: bridge events and subscriptions.
    :param channels: ``BRIDGEPEER`` updates.
    :param new_id: makes bridge ids (UUID4 by default: fact 14).
    :param stop_media: stops a bridge's playbacks and recordings when it is destroyed.
    """

    _clock: AsteriskClock
    _apps: Applications
    _channels: Channels
    _new_id: Callable[[], str]
    _stop_media: Callable[[Bridge], None]
    by_id: dict[str, Bridge] = field(factory=dict, init=False)

    def reset(self) -> None:
        """Forget every bridge (a restart)."""
        self.by_id.clear()

    def create(self, params: dict[str, Any], bridge_id: str | None = None) -> dict:
        """``POST /bridges`` and ``POST /bridges/{bridgeId}`` (no BridgeCreated event: fact 23)."""
        bridge_id = bridge_id or param_str(params.get("bridgeId")) or None
        types = [t.strip() for t in (param_str(params.get("type")) or "mixing").split(",") if t.strip()]
        if not types or any(t not in BRIDGE_TYPES for t in types):
            raise AriHttpError(500, f"Unable to create bridge. Possible duplicate bridge id '{bridge_id or '(null)'}'")
        if bridge_id and bridge_id in self.by_id:
            raise AriHttpError(409, f"Bridge with id '{bridge_id}' already exists")
        bridge = Bridge(id=bridge_id or self._new_id(), name=param_str(params.get("name")), types=types,
                        creationtime=self._clock.wall())  # fmt: skip
        self.by_id[bridge.id] = bridge
        return bridge.to_json()

    def _controlled(self, params: dict[str, Any]) -> list[Channel]:
        ids = [c for c in param_str(params.get("channel")).split(",") if c]
        if not ids:
            raise AriHttpError(400, "Missing parameter channel")
        out = []
        for cid in ids:
            ch = self._channels.by_id.get(cid)
            if ch is None:
                raise AriHttpError(400, "Channel not found")
            if ch.stasis is None or ch.ending:
                raise AriHttpError(422, "Channel not in Stasis application")
            out.append(ch)
        return out

    def add(self, bridge: Bridge, params: dict[str, Any]) -> None:
        """``POST /bridges/{id}/addChannel`` (comma list; a channel already inside leaves and re-enters)."""
        for ch in self._controlled(params):
            if ch.bridge is not None:
                self.leave(ch, ch.bridge, by_hangup=False)
            bridge.members.append(ch)
            ch.bridge = bridge
            self._apps.bridge_subscription(ch, bridge, 1)
            self._apps.emit("ChannelEnteredBridge", [("bridge", bridge), ("channel", ch)], channels=[ch],
                            bridges=[bridge])  # fmt: skip
            self._update_bridgepeers(bridge)

    def remove(self, bridge: Bridge, params: dict[str, Any]) -> None:
        """``POST /bridges/{id}/removeChannel`` (422 if a channel is not in this bridge)."""
        chans = self._controlled(params)
        if any(ch.bridge is not bridge for ch in chans):
            raise AriHttpError(422, "Channel not in this bridge")
        for ch in chans:
            self.leave(ch, bridge, by_hangup=False)

    def leave(self, ch: Channel, bridge: Bridge, *, by_hangup: bool) -> None:
        """A channel leaves: BRIDGEPEER cleared, ChannelLeftBridge; the app stays subscribed after a hangup."""
        if ch.variables.get("BRIDGEPEER"):
            self._channels.setvar(ch, "BRIDGEPEER", "")
        if ch in bridge.members:
            bridge.members.remove(ch)
        ch.bridge = None
        self._apps.emit("ChannelLeftBridge", [("bridge", bridge), ("channel", ch)], channels=[ch], bridges=[bridge])
        if not by_hangup:
            self._apps.bridge_subscription(ch, bridge, -1)
        self._update_bridgepeers(bridge)

    def _update_bridgepeers(self, bridge: Bridge) -> None:
        """Each member's BRIDGEPEER lists the others, newest first (set for every member whenever 2+ are in)."""
        if bridge.bridge_type == "holding" or len(bridge.members) < 2:
            return
        names = [m.name if isinstance(m, Channel) else m for m in bridge.members]
        for index, member in enumerate(list(bridge.members)):
            if isinstance(member, Channel):
                others = [n for i, n in enumerate(names) if i != index]
                self._channels.setvar(member, "BRIDGEPEER", ",".join(reversed(others)))

    def join_pseudo(self, bridge: Bridge, kind: str) -> str:
        """An ``Announcer`` or ``Recorder`` pseudo-channel joins ``bridge``; returns its name."""
        name = f"{kind}/ARI-{self._channels.next_number('unreal'):08x};2"
        bridge.members.append(name)
        self._update_bridgepeers(bridge)
        return name

    def leave_pseudo(self, bridge: Bridge, name: str) -> None:
        """A pseudo-channel leaves."""
        if name in bridge.members:
            bridge.members.remove(name)
            self._update_bridgepeers(bridge)

    def destroy(self, bridge: Bridge) -> None:
        """``DELETE /bridges/{id}``: members leave; BridgeDestroyed only if the app is still subscribed (fact 23)."""
        for member in list(bridge.members):
            if isinstance(member, Channel):
                self.leave(member, bridge, by_hangup=False)
        self._stop_media(bridge)
        self._apps.emit("BridgeDestroyed", [("bridge", bridge)], bridges=[bridge])
        self.drop(bridge)

    def drop(self, bridge: Bridge) -> None:
        """The bridge is gone (destroyed, or Asterisk shut down)."""
        bridge.gone = True
        self.by_id.pop(bridge.id, None)
        self._apps.forget_bridge(bridge)
