"""
Bridges and Stasis application subscriptions of the fake Asterisk, mixed into
`avr.testing.ari_engine.AsteriskEngine`.

What the captures fixed (fact 23): creating a bridge sends no BridgeCreated; addChannel sends ChannelEnteredBridge
per channel; with two or more members every member's ``BRIDGEPEER`` is set (the others' names, newest first); a
member that leaves with a non-empty ``BRIDGEPEER`` has it cleared before ChannelLeftBridge; BridgeDestroyed is sent
only while an application is still subscribed to the bridge (a channel entering subscribes its app, leaving through
removeChannel or destroy unsubscribes it, a hangup in the bridge does not).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from avr.testing.ari_model import App, AriHttpError, Bridge, Channel, param_str

if TYPE_CHECKING:
    from avr.testing.ari_engine import AsteriskEngine

BRIDGE_TYPES = frozenset({"mixing", "holding", "dtmf_events", "proxy_media", "video_sfu", "video_single", "sdp_label"})


class BridgeMixin:
    """Bridge operations and application subscriptions (see the module docstring)."""

    def bridge_create(self: AsteriskEngine, params: dict[str, Any], bridge_id: str | None = None) -> dict:
        """``POST /bridges`` and ``POST /bridges/{bridgeId}`` (no BridgeCreated event: fact 23)."""
        bridge_id = bridge_id or param_str(params.get("bridgeId")) or None
        types = [t.strip() for t in (param_str(params.get("type")) or "mixing").split(",") if t.strip()]
        if not types or any(t not in BRIDGE_TYPES for t in types):
            raise AriHttpError(500, f"Unable to create bridge. Possible duplicate bridge id '{bridge_id or '(null)'}'")
        if bridge_id and bridge_id in self.bridges:
            raise AriHttpError(409, f"Bridge with id '{bridge_id}' already exists")
        bridge = Bridge(id=bridge_id or self._uuid(), name=param_str(params.get("name")), types=types,
                        creationtime=self.wall())  # fmt: skip
        self.bridges[bridge.id] = bridge
        return bridge.to_json()

    def _bridge_controls(self: AsteriskEngine, params: dict[str, Any]) -> list[Channel]:
        ids = [c for c in param_str(params.get("channel")).split(",") if c]
        if not ids:
            raise AriHttpError(400, "Missing parameter channel")
        out = []
        for cid in ids:
            ch = self.channels.get(cid)
            if ch is None:
                raise AriHttpError(400, "Channel not found")
            if ch.stasis is None or ch.ending:
                raise AriHttpError(422, "Channel not in Stasis application")
            out.append(ch)
        return out

    def bridge_add(self: AsteriskEngine, bridge: Bridge, params: dict[str, Any]) -> None:
        """``POST /bridges/{id}/addChannel`` (comma list; a channel already inside leaves and re-enters)."""
        for ch in self._bridge_controls(params):
            self._bridge_join(bridge, ch)

    def bridge_remove(self: AsteriskEngine, bridge: Bridge, params: dict[str, Any]) -> None:
        """``POST /bridges/{id}/removeChannel`` (422 if a channel is not in this bridge)."""
        chans = self._bridge_controls(params)
        if any(ch.bridge is not bridge for ch in chans):
            raise AriHttpError(422, "Channel not in this bridge")
        for ch in chans:
            self._bridge_leave(ch, bridge, by_hangup=False)

    def _bridge_join(self: AsteriskEngine, bridge: Bridge, ch: Channel) -> None:
        if ch.bridge is not None:
            self._bridge_leave(ch, ch.bridge, by_hangup=False)
        bridge.members.append(ch)
        ch.bridge = bridge
        if ch.stasis is not None:
            app = self.apps.get(ch.stasis.app)
            if app is not None:
                app.sub(app.bridge_subs, bridge.id, 1)
        self.emit("ChannelEnteredBridge", [("bridge", bridge), ("channel", ch)], channels=[ch], bridges=[bridge])
        self._update_bridgepeers(bridge)

    def _bridge_leave(self: AsteriskEngine, ch: Channel, bridge: Bridge, *, by_hangup: bool) -> None:
        """A channel leaves: BRIDGEPEER cleared, ChannelLeftBridge; the app stays subscribed after a hangup."""
        if ch.variables.get("BRIDGEPEER"):
            self._setvar(ch, "BRIDGEPEER", "")
        if ch in bridge.members:
            bridge.members.remove(ch)
        ch.bridge = None
        self.emit("ChannelLeftBridge", [("bridge", bridge), ("channel", ch)], channels=[ch], bridges=[bridge])
        if not by_hangup and ch.stasis is not None:
            app = self.apps.get(ch.stasis.app)
            if app is not None:
                app.sub(app.bridge_subs, bridge.id, -1)
        if len(bridge.members) >= 2:
            self._update_bridgepeers(bridge)

    def _update_bridgepeers(self: AsteriskEngine, bridge: Bridge) -> None:
        """Each member's BRIDGEPEER lists the others, newest first (set for every member whenever 2+ are in)."""
        if bridge.bridge_type == "holding" or len(bridge.members) < 2:
            return
        names = [m.name if isinstance(m, Channel) else m for m in bridge.members]
        for index, member in enumerate(list(bridge.members)):
            if isinstance(member, Channel):
                others = [n for i, n in enumerate(names) if i != index]
                self._setvar(member, "BRIDGEPEER", ",".join(reversed(others)))

    def _pseudo_join(self: AsteriskEngine, bridge: Bridge, name: str) -> None:
        bridge.members.append(name)
        self._update_bridgepeers(bridge)

    def _pseudo_leave(self: AsteriskEngine, bridge: Bridge, name: str) -> None:
        if name in bridge.members:
            bridge.members.remove(name)
            if len(bridge.members) >= 2:
                self._update_bridgepeers(bridge)

    def bridge_destroy(self: AsteriskEngine, bridge: Bridge) -> None:
        """``DELETE /bridges/{id}``: members leave; BridgeDestroyed only if the app is still subscribed (fact 23)."""
        for member in list(bridge.members):
            if isinstance(member, Channel):
                self._bridge_leave(member, bridge, by_hangup=False)
        self._stop_bridge_media(bridge)
        self.emit("BridgeDestroyed", [("bridge", bridge)], bridges=[bridge])
        self._drop_bridge(bridge)

    def _drop_bridge(self: AsteriskEngine, bridge: Bridge) -> None:
        bridge.gone = True
        self.bridges.pop(bridge.id, None)
        for app in self.apps.values():
            app.bridge_subs.pop(bridge.id, None)

    # ----------------------------------------------------------------------------------------------------------------
    # Applications REST

    def app_subscription(self: AsteriskEngine, app: App, params: dict[str, Any], subscribe: bool) -> dict:
        """``POST|DELETE /applications/{name}/subscription``."""
        source = param_str(params.get("eventSource"))
        if not source:
            raise AriHttpError(400, "Missing parameter eventSource")
        for item in source.split(","):
            scheme, _, name = item.partition(":")
            if scheme == "channel":
                table, exists = app.channel_subs, name in self.channels
            elif scheme == "bridge":
                table, exists = app.bridge_subs, name in self.bridges
            elif scheme == "endpoint":
                tech, _, res = name.partition("/")
                exists = any(e.technology == tech and (not res or e.resource == res) for e in self.endpoints.values())
                table = None
            elif scheme == "deviceState":
                table, exists = None, True
            else:
                raise AriHttpError(400, "Invalid event source URI scheme")
            listing = app.endpoint_subs if scheme == "endpoint" else app.device_subs
            if not subscribe:
                present = table.get(name, 0) > 0 if table is not None else name in listing
                if not present:
                    raise AriHttpError(422, "Event source was not subscribed to")
                if table is not None:
                    app.sub(table, name, -1)
                else:
                    listing.remove(name)
                continue
            if not exists:
                raise AriHttpError(422, "Event source does not exist")
            if table is not None:
                app.sub(table, name, 1)
            elif name not in listing:
                listing.append(name)
        return app.to_json()

    def app_filter(self: AsteriskEngine, app: App, body: Any) -> dict:
        """``PUT /applications/{name}/eventFilter``: the JSON body is the filter; ``{}`` clears it."""
        if not isinstance(body, dict):
            raise AriHttpError(400, "Invalid format definition")
        for key in ("allowed", "disallowed"):
            if key in body and (not isinstance(body[key], list) or not all(isinstance(f, dict) for f in body[key])):
                raise AriHttpError(400, "Invalid format definition")
        if not body:
            app.allowed, app.disallowed = [], []
        if "allowed" in body:
            app.allowed = list(body["allowed"])
        if "disallowed" in body:
            app.disallowed = list(body["disallowed"])
        return app.to_json()
