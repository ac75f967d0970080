"""
The channel registry of the fake Asterisk: ids and names as Asterisk makes them (fact 14), creation
(ChannelCreated), and the events every change of a channel's state sends.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from attrs import define, field

from avr.testing.ari_applications import Applications
from avr.testing.ari_clock import AsteriskClock
from avr.testing.ari_model import Channel
from avr.testing.ari_params import AriHttpError


@define(eq=False)
class Channels:
    """
    Live channels by id, and the counters their ids and names come from (reset by a restart).

    :param clock: the wall clock in ids (``<epoch seconds>.<sequence>``).
    :param apps: where channel events go.
    """

    _clock: AsteriskClock
    _apps: Applications
    by_id: dict[str, Channel] = field(factory=dict, init=False)
    sequence: int = field(default=0, init=False)
    _counters: Counter[str] = field(factory=Counter, init=False)

    def reset(self) -> None:
        """Forget every channel; counters restart."""
        self.by_id.clear()
        self.sequence = 0
        self._counters.clear()

    def next_id(self) -> str:
        """A new channel id: ``<epoch seconds>.<sequence>``."""
        self.sequence += 1
        return f"{int(self._clock.wall())}.{self.sequence}"

    def next_number(self, kind: str) -> int:
        """The next number for ``unreal`` names (Local, Announcer, Recorder), ``snoop`` or ``pjsip`` names."""
        self._counters[kind] += 1
        return self._counters[kind]

    def check_ids(self, *ids: str | None) -> None:
        """409 if a caller-chosen id is taken."""
        for cid in ids:
            if cid and cid in self.by_id:
                raise AriHttpError(409, "Channel with given unique ID already exists")

    def new(self, name: str, tech: str, cid: str | None = None, **fields: Any) -> Channel:
        """A new channel (ChannelCreated reaches only ``subscribeAll`` apps: nobody is subscribed to it yet)."""
        ch = Channel(id=cid or self.next_id(), name=name, tech=tech, creationtime=self._clock.wall(), **fields)
        self.by_id[ch.id] = ch
        self._apps.channel_event("ChannelCreated", ch)
        return ch

    def local_pair(self, resource: str, id1: str | None, id2: str | None) -> tuple[Channel, Channel]:
        """
        ``Local/<exten>@<context>``: ``;1`` (dialled, id ``id1``) and ``;2`` (runs the dialplan, state Ring; id
        ``id2``, else ``<id1>;2``).
        """
        exten, _, context = resource.partition("@")
        context = (context or "default").split("/")[0]
        base = f"Local/{exten}@{context}-{self.next_number('unreal'):08x}"
        one = self.new(f"{base};1", "Local", id1, context=context, exten=exten, half=1)
        two = self.new(f"{base};2", "Local", id2 or (f"{id1};2" if id1 else None), state="Ring", context=context,
                       exten=exten, half=2)  # fmt: skip
        one.peer, two.peer = two, one
        one.dialstring = f"{exten}@{context}"
        return one, two

    def forget(self, ch: Channel) -> None:
        """``ch`` is destroyed."""
        self.by_id.pop(ch.id, None)

    # ----------------------------------------------------------------------------------------------------------------
    # The events of a channel's changes

    def set_state(self, ch: Channel, state: str) -> None:
        """ChannelStateChange, if the state changes."""
        if ch.state != state:
            ch.state = state
            self._apps.channel_event("ChannelStateChange", ch)

    def setvar(self, ch: Channel, name: str, value: str | None) -> None:
        """Set (``None``: unset) a variable, with ChannelVarset."""
        if value is None:
            ch.variables.pop(name, None)
        else:
            ch.variables[name] = value
        self._apps.channel_event("ChannelVarset", ch, pre=[("variable", name), ("value", value or "")])

    def hangup_request(self, ch: Channel, cause: int, soft: bool = False) -> None:
        """ChannelHangupRequest (with ``soft``, ``cause`` is the soft-hangup flag: fact 19)."""
        pre: list[tuple[str, Any]] = [("cause", cause)]
        if soft:
            pre.append(("soft", True))
        self._apps.channel_event("ChannelHangupRequest", ch, pre=pre)

    def dial_event(self, ch: Channel, status: str, dialstring: str | None = None) -> None:
        """Dial about ``ch`` as the peer being dialled."""
        dialstring = ch.dialstring if dialstring is None else dialstring
        fields = [("dialstatus", status), ("forward", ""), ("dialstring", dialstring), ("peer", ch)]
        self._apps.emit("Dial", fields, channels=[ch])

    def caller_id_event(self, ch: Channel) -> None:
        """ChannelCallerId after the caller id changed."""
        self._apps.emit("ChannelCallerId", [("caller_presentation", 0), ("caller_presentation_txt",
                        "Presentation Allowed, Not Screened"), ("channel", ch)], channels=[ch])  # fmt: skip
