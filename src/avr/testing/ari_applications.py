"""
The Stasis applications of the fake Asterisk: registered by events sockets, their subscriptions to channels and
bridges, their event filters, and the publication of every event to the applications subscribed to its objects.

What the captures fixed: an application exists only while a socket or a channel in Stasis holds it (fact 28); a
second socket for the same app gets it and the first one receives ``ApplicationReplaced`` (fact 29); events are
compact JSON with ``type``, ``timestamp``, ``asterisk_id`` and ``application`` (fact 16).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from attrs import define, field
from twisted.logger import Logger

from avr.testing.ari_clock import AsteriskClock
from avr.testing.ari_model import App, Bridge, Channel, LiveRecording, Playback
from avr.testing.ari_params import AriHttpError

ASTERISK_ID = "02:fc:00:00:00:01"

SUBSCRIPTION_SCHEMES = ("channel", "bridge", "endpoint", "deviceState")


@define(eq=False)
class Applications:
    """
    The registry of Stasis applications and the event publisher.

    :param clock: stamps the events.
    :ivar delivered: every event delivered to a socket, as ``(application, event)`` (while `history` is on).
    """

    log = Logger()

    _clock: AsteriskClock
    #: keep `delivered`
    history: bool = True
    by_name: dict[str, App] = field(factory=dict, init=False)
    delivered: list[tuple[str, dict]] = field(factory=list, init=False)

    def reset(self) -> None:
        """Forget every application (a restart)."""
        self.by_name.clear()

    # ----------------------------------------------------------------------------------------------------------------
    # Sockets

    def attach(self, sink: Any, names: Iterable[str], subscribe_all: bool = False) -> None:
        """
        A socket for applications ``names`` connected: register them; a previous socket of the same app gets
        ApplicationReplaced and no more events (fact 29).

        :param sink: has ``deliver(app_name, text)``.
        """
        for name in names:
            app = self.by_name.get(name)
            if app is None:
                app = self.by_name[name] = App(name)
            old = app.sink
            if old is not None and old is not sink:
                event = {"type": "ApplicationReplaced", "timestamp": self._clock.timestamp(), "application": name,
                         "asterisk_id": ASTERISK_ID}  # fmt: skip
                self._send(old, name, event)
            app.sink = sink
            app.subscribe_all = subscribe_all

    def detach(self, sink: Any) -> None:
        """A socket closed: its apps stay registered only while a channel is in them (fact 28)."""
        for app in list(self.by_name.values()):
            if app.sink is sink:
                app.sink = None
                self._maybe_unregister(app)

    def active(self, name: str) -> bool:
        """Whether ``name`` has a socket."""
        app = self.by_name.get(name)
        return app is not None and app.sink is not None

    def _maybe_unregister(self, app: App) -> None:
        if app.sink is None and not app.in_stasis:
            self.by_name.pop(app.name, None)

    # ----------------------------------------------------------------------------------------------------------------
    # Channels in Stasis and subscriptions

    def entered(self, name: str, ch: Channel) -> None:
        """``ch`` entered Stasis in the registered app ``name`` (which is then subscribed to it)."""
        app = self.by_name[name]
        app.in_stasis.add(ch.id)
        app.sub(app.channel_subs, ch.id, 1)

    def left(self, name: str, ch: Channel) -> None:
        """``ch`` left Stasis in ``name`` (unsubscribed); without a socket the app goes once it is empty."""
        app = self.by_name.get(name)
        if app is not None:
            app.in_stasis.discard(ch.id)
            app.sub(app.channel_subs, ch.id, -1)
            self._maybe_unregister(app)

    def subscribe_channel(self, name: str, ch: Channel) -> None:
        """Subscribe ``name`` (if registered) to ``ch``: originated channels are, from the start."""
        app = self.by_name.get(name)
        if app is not None:
            app.sub(app.channel_subs, ch.id, 1)

    def bridge_subscription(self, ch: Channel, bridge: Bridge, delta: int) -> None:
        """The app ``ch`` is in (if any) follows ``bridge`` (+1 on entering, -1 on leaving other than by hangup)."""
        app = self.by_name.get(ch.stasis.app) if ch.stasis is not None else None
        if app is not None:
            app.sub(app.bridge_subs, bridge.id, delta)

    def forget_channel(self, ch: Channel) -> None:
        """``ch`` is destroyed: no subscription to it remains."""
        for app in list(self.by_name.values()):
            app.channel_subs.pop(ch.id, None)
            self._maybe_unregister(app)

    def forget_bridge(self, bridge: Bridge) -> None:
        """``bridge`` is destroyed: no subscription to it remains."""
        for app in self.by_name.values():
            app.bridge_subs.pop(bridge.id, None)

    def change_subscription(self, app: App, source: str, subscribe: bool,
                            exists: Callable[[str, str], bool]) -> dict:  # fmt: skip
        """
        ``POST|DELETE /applications/{name}/subscription?eventSource=a,b``.

        :param exists: ``(scheme, name)`` → whether that event source exists.
        """
        if not source:
            raise AriHttpError(400, "Missing parameter eventSource")
        for item in source.split(","):
            scheme, _, name = item.partition(":")
            if scheme not in SUBSCRIPTION_SCHEMES:
                raise AriHttpError(400, "Invalid event source URI scheme")
            table = {"channel": app.channel_subs, "bridge": app.bridge_subs}.get(scheme)
            listing = app.endpoint_subs if scheme == "endpoint" else app.device_subs
            if not subscribe:
                if not (table.get(name, 0) > 0 if table is not None else name in listing):
                    raise AriHttpError(422, "Event source was not subscribed to")
                if table is not None:
                    app.sub(table, name, -1)
                else:
                    listing.remove(name)
                continue
            if not exists(scheme, name):
                raise AriHttpError(422, "Event source does not exist")
            if table is not None:
                app.sub(table, name, 1)
            elif name not in listing:
                listing.append(name)
        return app.to_json()

    @staticmethod
    def set_filter(app: App, body: Any) -> dict:
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

    # ----------------------------------------------------------------------------------------------------------------
    # Events

    def emit(
        self,
        event_type: str,
        fields: list[tuple[str, Any]],
        *,
        channels: Iterable[Channel] = (),
        bridges: Iterable[Bridge] = (),
        pre: list[tuple[str, Any]] | None = None,
        only_app: str | None = None,
    ) -> None:
        """
        Publish one event to every application subscribed to one of ``channels``/``bridges`` (or only to
        ``only_app``), through its event filter. Objects in ``fields`` are rendered now, in the key order given;
        ``pre`` fields come before ``type`` (ChannelVarset, ChannelHangupRequest: fact 16).
        """
        channels = list(channels)
        bridges = list(bridges)
        body: dict[str, Any] = dict(pre or ())
        body["type"] = event_type
        body["timestamp"] = self._clock.timestamp()
        for key, value in fields:
            body[key] = value.to_json() if hasattr(value, "to_json") else value
        body["asterisk_id"] = ASTERISK_ID
        for app in list(self.by_name.values()):
            if only_app is not None:
                if app.name != only_app:
                    continue
            elif not (
                app.subscribe_all
                or any(app.channel_subs.get(c.id) for c in channels)
                or any(app.bridge_subs.get(b.id) for b in bridges)
            ):
                continue
            if app.sink is not None and app.wants(event_type):
                self._send(app.sink, app.name, dict(body, application=app.name))

    def channel_event(self, event_type: str, ch: Channel, *, pre: list[tuple[str, Any]] | None = None) -> None:
        """An event whose only object is ``ch`` (``{..., "channel": ch}``)."""
        self.emit(event_type, [("channel", ch)], channels=[ch], pre=pre)

    def media_event(self, event_type: str, key: str, obj: Playback | LiveRecording) -> None:
        """A playback's or recording's event (``{key: obj}``), for the apps subscribed to its channel or bridge."""
        if isinstance(obj.target, Bridge):
            self.emit(event_type, [(key, obj)], bridges=[obj.target])
        else:
            self.emit(event_type, [(key, obj)], channels=[obj.target])

    def _send(self, sink: Any, app_name: str, event: dict) -> None:
        if self.history:
            self.delivered.append((app_name, event))
        try:
            sink.deliver(app_name, json.dumps(event, separators=(",", ":"), ensure_ascii=False))
        except Exception:
            self.log.failure("Delivering an event to {app} failed", app=app_name)
