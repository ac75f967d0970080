"""
Channels the fake Asterisk dials and answers: ``POST /channels`` (originate), ``/channels/create`` + ``/dial``,
PJSIP-like endpoints whose far end answers, rings, is busy or never answers, inbound calls from such a far end,
and answering (a Local ;2 half answering answers its dialling ;1 half).

What the captures fixed (facts 14, 15, 18): the originate response shows ``state: Down`` and ``AppDial2``; a Local
originate goes ``Dial`` (dialstatus "") → ;2 runs the dialplan → Up → ``Dial`` ANSWER → ``STASISSTATUS=""`` →
StasisStart with the appArgs; ``otherChannelId`` without ``channelId`` is ignored; an unknown technology is 500
``Allocation failed``; a missing Local context is 200, then ChannelDestroyed cause 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from attrs import define, field
from twisted.logger import Logger

from avr.testing.ari_applications import Applications
from avr.testing.ari_channels import Channels
from avr.testing.ari_clock import AsteriskClock
from avr.testing.ari_dialplan import Dialplan
from avr.testing.ari_hangups import Hangups
from avr.testing.ari_model import Channel, Endpoint
from avr.testing.ari_params import (
    AriHttpError,
    allocation_failed,
    check_codec,
    param_int,
    param_str,
    parse_caller_id,
    split_args,
)
from avr.testing.ari_stasis import Stasis
from avr.testing.ari_variables import Variables

ENDPOINT_BEHAVIOURS = ("auto", "never", "busy", "manual")


@define(eq=False)
class Dialer:
    """
    Originates, dials and answers channels.

    :param channels: the registry and the Dial/state events.
    :param variables: the originate's ``variables``.
    :param stasis: answered channels enter their app.
    :param dialplan: Local ;2 halves and originates to an extension run it.
    :param hangups: failed dials end.
    :ivar endpoints: configured endpoints by ``(technology, resource)``.
    """

    log = Logger()

    _clock: AsteriskClock
    _apps: Applications
    _channels: Channels
    _variables: Variables
    _stasis: Stasis
    _dialplan: Dialplan
    _hangups: Hangups
    endpoints: dict[tuple[str, str], Endpoint] = field(factory=dict, init=False)

    def add_endpoint(self, technology: str, resource: str, answer: str, delay: float, state: str) -> Endpoint:
        """Configure an endpoint (see `avr.testing.ari.FakeAsterisk.add_endpoint`)."""
        if answer not in ENDPOINT_BEHAVIOURS:
            raise ValueError(f"Unknown endpoint behaviour {answer!r}")
        endpoint = self.endpoints[(technology, resource)] = Endpoint(technology, resource, answer, delay, state)
        return endpoint

    def originate(self, params: dict[str, Any], variables: Mapping[str, str] | None,
                  channel_id: str | None = None) -> dict:  # fmt: skip
        """``POST /channels`` and ``POST /channels/{channelId}``: returns the new channel (state Down, fact 15)."""
        endpoint = param_str(params.get("endpoint"))
        app = param_str(params.get("app"))
        extension = param_str(params.get("extension"))
        originator = param_str(params.get("originator"))
        formats = param_str(params.get("formats"))
        channel_id = channel_id or param_str(params.get("channelId")) or None
        other_id = param_str(params.get("otherChannelId")) or None
        if not endpoint:
            raise AriHttpError(400, "Endpoint must be specified")
        if originator and formats:
            raise AriHttpError(400, "Originator and formats can't both be specified")
        tech, _, resource = endpoint.partition("/")
        if not tech or not resource:
            raise AriHttpError(400, "Invalid endpoint specified")
        if not app and not extension:
            raise AriHttpError(400, "Application or extension must be specified")
        timeout = param_int(params.get("timeout"), 30)
        name, number = parse_caller_id(param_str(params.get("callerId")))
        if originator and originator not in self._channels.by_id:
            raise AriHttpError(400, "Provided originator channel was not found")
        for fmt in filter(None, (f.strip() for f in formats.split(","))):
            check_codec(fmt)
        if not channel_id:
            other_id = None  # fact 14: otherChannelId without channelId is ignored
        ch, two = self._request(tech, resource, channel_id, other_id)
        ch.formats = formats
        if name or number:
            ch.caller_name, ch.caller_number = name, number
            ch.connected_name, ch.connected_number = name, number
        self._variables.assign_quietly(ch, variables)
        ch.app_name, ch.app_data = "AppDial2", "(Outgoing Line)"
        if app:
            ch.originate_app = app
            ch.originate_args = split_args(param_str(params.get("appArgs")))
            for half in (ch, two):
                if half is not None:
                    self._apps.subscribe_channel(app, half)
        else:
            ch.originate_dialplan = (param_str(params.get("context")) or "default", extension,
                                     param_int(params.get("priority"), 1) or 1)  # fmt: skip
        snapshot = ch.to_json()
        self._start_dial(ch, two, timeout, variables or {})
        return snapshot

    def create(self, params: dict[str, Any], variables: Mapping[str, str] | None) -> dict:
        """``POST /channels/create``: the channel enters Stasis at once, undialled (state Down)."""
        endpoint = param_str(params.get("endpoint"))
        app = param_str(params.get("app"))
        if param_str(params.get("originator")) and param_str(params.get("formats")):
            raise AriHttpError(400, "Originator and formats can't both be specified")
        if not endpoint:
            raise AriHttpError(400, "Endpoint must be specified")
        if not app:
            raise AriHttpError(400, "Missing parameter app")
        tech, _, resource = endpoint.partition("/")
        ch, two = self._request(tech, resource, param_str(params.get("channelId")) or None,
                                param_str(params.get("otherChannelId")) or None)  # fmt: skip
        self._variables.assign_quietly(ch, variables)
        ch.pending_two = two
        self._apps.subscribe_channel(app, ch)
        snapshot = ch.to_json()
        args = split_args(param_str(params.get("appArgs")))
        ch.app_name, ch.app_data = "Stasis", ",".join([app, *args])
        self._apps.emit("ChannelDialplan", [("dialplan_app", "Stasis"), ("dialplan_app_data", ch.app_data),
                                            ("channel", ch)], channels=[ch])  # fmt: skip
        if not self._stasis.enter(ch, app, args, "create", saved=("", "")):
            self._hangups.end(ch, 16)
        return snapshot

    def dial(self, ch: Channel, params: dict[str, Any]) -> None:
        """``POST /channels/{id}/dial`` for a channel made with ``/channels/create``."""
        self._stasis.control(ch)
        if ch.state not in ("Down", "Rsrved"):
            raise AriHttpError(409, "Channel is not in the 'Down' state")
        if not ch.dialstring:
            raise AriHttpError(409, "Dialing a channel not created by ARI")
        two, ch.pending_two = ch.pending_two, None
        self._start_dial(ch, two, param_int(params.get("timeout"), 0), {})

    def _request(self, tech: str, resource: str, cid: str | None, other: str | None) -> tuple[Channel, Channel | None]:
        """``ast_request``: a Local pair, or a channel on a configured endpoint; else 500 Allocation failed."""
        self._channels.check_ids(cid, other or (f"{cid};2" if cid else None))
        if tech.lower() == "local":
            return self._channels.local_pair(resource, cid, other)
        endpoint_name = resource.split("@")[-1].split("/")[0]
        endpoint = self.endpoints.get((tech.upper(), endpoint_name)) or self.endpoints.get((tech, endpoint_name))
        if endpoint is None:
            raise allocation_failed()
        number = self._channels.next_number("pjsip")
        ch = self._channels.new(f"{endpoint.technology}/{endpoint.resource}-{number:08x}", endpoint.technology, cid,
                                endpoint=endpoint)  # fmt: skip
        ch.dialstring = resource
        return ch, None

    def _start_dial(self, ch: Channel, two: Channel | None, timeout: int, variables: Mapping[str, str]) -> None:
        ch.dialing = True
        if two is not None and not self._dialplan.has(two.context, two.exten):
            # local_call fails before anything is dialled: no Dial event, both halves go with cause 0
            self.log.info("Fake Asterisk: no extension {exten}@{context}", exten=two.exten, context=two.context)
            self._hangups.end(two, 0)
            return
        if timeout > 0:
            self._clock.later(ch, timeout, self._dial_timeout, ch)
        self._channels.dial_event(ch, "")
        if two is not None:
            for var, value in reversed(list(variables.items())):
                if not var.endswith(")"):  # dialplan functions (CALLERID) arrive with the caller copy below
                    self._channels.setvar(two, var, value)
            # the Local ;2 half sees the call from the other side: caller and connected line swap
            two.caller_name, two.caller_number = ch.connected_name, ch.connected_number
            two.connected_name, two.connected_number = ch.caller_name, ch.caller_number
            if ch.caller_name or ch.caller_number:
                self._channels.caller_id_event(two)
                self._apps.channel_event("ChannelConnectedLine", two)
            self._dialplan.start(two, two.context, two.exten, 1)
            return
        endpoint = ch.endpoint
        assert endpoint is not None
        if endpoint.answer in ("auto", "busy") and endpoint.delay <= 0:
            self._far_end_result(ch)
            return
        self._channels.set_state(ch, "Ringing")
        self._channels.dial_event(ch, "RINGING")
        if endpoint.answer in ("auto", "busy"):
            self._clock.later(ch, endpoint.delay, self._far_end_result, ch)

    def _far_end_result(self, ch: Channel) -> None:
        if not ch.alive or not ch.dialing:
            return
        assert ch.endpoint is not None
        if ch.endpoint.answer == "busy":
            self._channels.dial_event(ch, "BUSY")
            self._hangups.end(ch, 17)
        else:
            self.dial_answered(ch)

    def _dial_timeout(self, ch: Channel) -> None:
        if ch.alive and ch.dialing and not ch.ending:
            self._hangups.end(ch, 19)

    def dial_answered(self, ch: Channel) -> None:
        """The dialled channel answered: Up, Dial ANSWER, then Stasis or the dialplan (fact 18)."""
        if not ch.dialing or not ch.alive:
            return
        ch.dialing = False
        self._clock.cancel(ch)
        self._channels.set_state(ch, "Up")
        self._channels.dial_event(ch, "ANSWER", "" if ch.stasis else None)
        if ch.stasis:
            return  # created with /channels/create and dialled with /dial: already in Stasis
        if ch.originate_app:
            if not self._stasis.enter(ch, ch.originate_app, ch.originate_args, "originate"):
                self._hangups.end(ch, 16)
        elif ch.originate_dialplan:
            self._dialplan.start(ch, *ch.originate_dialplan)

    def answer(self, ch: Channel) -> None:
        """``ch`` answers (state Up); a Local half answering answers the dialling half on the other side."""
        self._channels.set_state(ch, "Up")
        peer = ch.peer
        if peer is not None and peer.dialing:
            self.dial_answered(peer)

    def answer_remote(self, ch: Channel) -> None:
        """The far end of a ringing outbound channel answers."""
        if not ch.dialing:
            raise ValueError(f"Channel {ch.id} is not ringing")
        self.dial_answered(ch)

    def inbound_call(self, caller_number: str, exten: str, *, answered: bool, app: str, args: Iterable[str],
                     caller_name: str, endpoint: str, context: str, channel_id: str | None) -> Channel:  # fmt: skip
        """A call from ``endpoint`` that runs ``Stasis(app,args)`` (see `avr.testing.ari.FakeAsterisk.inbound_call`)."""
        self._channels.check_ids(channel_id)
        number = self._channels.next_number("pjsip")
        ch = self._channels.new(f"PJSIP/{endpoint}-{number:08x}", "PJSIP", channel_id,
                                state="Up" if answered else "Ring", caller_name=caller_name,
                                caller_number=caller_number, context=context, exten=exten,
                                endpoint=self.endpoints.get(("PJSIP", endpoint)))  # fmt: skip
        ch.priority = 2 if answered else 1
        ch.pbx_kind = "real"
        ch.nested_app = ("", "")
        if not self._stasis.enter(ch, app, args, "inbound", saved=("", "")):
            ch.variables["STASISSTATUS"] = "FAILED"
            self._hangups.end(ch, 16)
        return ch
