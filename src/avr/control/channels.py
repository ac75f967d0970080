"""
Channels: the operations on one call (originate, answer, hang up, DTMF, endpoints) and the ARI channel events that
drive the call state machine.

How a call ends: ``ChannelDestroyed`` carries the Q.850 cause and is what ends a call avr originated (the app stays
subscribed to such channels, so it always comes, even after a hand-off to the dialplan). A channel that entered the
app from the dialplan (inbound) is not subscribed: after ``StasisEnd`` Asterisk may send nothing more about it, so
the call ends at ``StasisEnd``, with the cause of the last real (not ``soft``) ``ChannelHangupRequest``, else the
reason avr asked for. ``soft: true`` causes (32 = hung up over ARI, 4 = shutdown) are flags, never reported as Q.850.
"""

from __future__ import annotations

import re
from typing import Callable

from attrs import define, field
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from avr.allowlist import NO_NUMBER, Allowlist, number_in_endpoint
from avr.ari.client import path_segment
from avr.ari.errors import AriError, AriUnavailable
from avr.control.ari_link import AriLink
from avr.control.call_registry import CallRegistry, require_stasis
from avr.control.errors import Conflict, Forbidden, Invalid
from avr.control.media_leg import MediaLegs
from avr.control.records import (
    DIAL_STATUS_CAUSES,
    HANGUP_REASONS,
    INBOUND,
    OUTBOUND,
    CallRecord,
    call_id_for,
    cause_text,
)
from avr.control.tasks import TaskGroup

_CALLER_ID = re.compile(r'^\s*"?([^"<]*?)"?\s*<([^>]*)>\s*$')

#: Seconds beyond its dial timeout that a channel whose originate failed ambiguously is watched for.
ABANDON_GRACE = 60

#: Seconds to wait for the events of a channel that was already gone when avr tried to hang it up.
HANGUP_GRACE = 2.0


def parse_caller_id(caller_id: str | None) -> tuple[str, str]:
    """``(name, number)`` from ``"Name" <number>``, ``Name <number>`` or a bare number."""
    if not caller_id:
        return "", ""
    match = _CALLER_ID.match(caller_id)
    if match:
        return match.group(1).strip(), match.group(2).strip()
    return "", caller_id.strip()


def channel_in_app(channel: dict, app: str) -> bool:
    """The channel (ARI Channel JSON) is currently in Stasis application ``app``."""
    dialplan = channel.get("dialplan") or {}
    if dialplan.get("app_name") != "Stasis":
        return False
    return str(dialplan.get("app_data") or "").split(",")[0] == app


@define(eq=False)
class Channels:
    """
    The calls' channels: originate, answer, hang up, DTMF, and the channel events.

    :param registry: the calls, and where the events go.
    :param ari: the way to Asterisk.
    :param tasks: background requests (auto-answer, hand-off) and timers.
    :param clock: timestamps.
    :param legs: the media legs, whose channels are not calls.
    :param app: the Stasis application name.
    :param inbound_policy: ``answer``, ``ring`` or ``none`` (see `avr.config.INBOUND_POLICIES`).
    :param new_id: makes the ids of originated channels.
    :param ring_delay: with the ``answer`` policy, seconds an inbound call rings before it is answered
        (``INBOUND_RING_DELAY_MS``; 0: at once).
    :param allowlist: asterisk-api's allowlist (``None``: every number allowed). A caller it does not allow is hung
        up when the channel enters the app, before any record or event; an endpoint it does not allow is refused
        (403) before it is dialled.
    """

    registry: CallRegistry
    ari: AriLink
    tasks: TaskGroup
    clock: IReactorTime
    legs: MediaLegs
    app: str
    inbound_policy: str
    new_id: Callable[[], str]
    ring_delay: float = 0.0
    allowlist: Allowlist | None = None
    #: The timers answering inbound calls once they have rung ``ring_delay``, by call id.
    _ringing: dict[str, IDelayedCall] = field(factory=dict, init=False)
    #: Channels whose originate failed ambiguously (timeout): hung up if they show up.
    _abandoned: dict[str, IDelayedCall] = field(factory=dict, init=False)
    log = Logger()

    @property
    def handlers(self) -> dict[str, Callable[[dict], None]]:
        """The ARI events this component applies, by type."""
        return {
            "StasisStart": self._on_stasis_start,
            "StasisEnd": self._on_stasis_end,
            "ChannelDestroyed": self._on_channel_destroyed,
            "ChannelStateChange": self._on_channel_state_change,
            "ChannelHangupRequest": self._on_channel_hangup_request,
            "ChannelDtmfReceived": self._on_channel_dtmf_received,
            "ChannelCallerId": self._on_channel_caller_id,
            "Dial": self._on_dial,
        }

    def is_abandoned(self, channel_id: str) -> bool:
        """``channel_id`` was being originated when Asterisk stopped answering (it is hung up if it shows up)."""
        return channel_id in self._abandoned

    def stop(self) -> None:
        """Shutting down: forget the abandoned channels and ringing calls (their timers are gone with the task
        group's)."""
        self._abandoned.clear()
        self._ringing.clear()

    def call_ended(self, call: CallRecord) -> None:
        """``call`` ended: it is not answered any more."""
        self.tasks.cancel(self._ringing.pop(call.id, None))

    async def list_calls(self) -> list[dict]:
        """The active (not ended) calls, of every kind (see `CallRegistry.listing`)."""
        return self.registry.listing()

    async def get_call(self, call_id: str) -> dict:
        """
        One call, active or ended within the retention period.

        :raises NotFound: unknown call.
        """
        return self.registry.describe(call_id)

    async def list_endpoints(self) -> list[dict]:
        """Asterisk's endpoints: ``[{"technology", "resource", "state", "channelIds"}]``."""
        endpoints = await self.ari.require().request("GET", "/endpoints")
        return [
            {"technology": e.get("technology"), "resource": e.get("resource"), "state": e.get("state"),
             "channelIds": list(e.get("channel_ids") or [])}
            for e in endpoints or [] if isinstance(e, dict)
        ]

    async def originate(
        self,
        endpoint: str,
        caller_id: str | None = None,
        timeout: int = 30,
        variables: dict | None = None,
        context: str | None = None,
        extension: str | None = None,
        priority: int | None = None,
    ) -> dict:
        """
        Dial ``endpoint``. The channel is always originated into the Stasis app, with an id chosen by avr (the call
        id), so that its events are recognised even when they arrive before Asterisk's response.

        With ``context``/``extension`` (``priority`` defaults to 1) the call goes to the dialplan instead: once
        answered it enters the app and is at once continued to that extension. It stays tracked (events, state,
        hangup, ``call.ended`` with the real cause) until it is destroyed, but media operations then answer 409.

        :param caller_id: ``"Name <number>"`` or a number.
        :param timeout: seconds to ring.
        :param variables: channel variables, names to string values.
        :return: the call, state ``dialing`` (or later, when events came first). Its ``call.created`` event is
            published before any other event of the call.
        :raises Invalid: a dialplan target without both context and extension. :raises Unavailable: ARI not
            configured or not connected.
        :raises AriError: Asterisk refused the originate (e.g. 400 invalid endpoint, 500 unknown technology).
        """
        dialplan = None
        if context is not None or extension is not None or priority is not None:
            if not context or not extension:
                raise Invalid("context and extension must both be given to send the call to the dialplan")
            dialplan = (context, extension, 1 if priority is None else priority)
        self.check_outbound(endpoint)
        self.ari.require_connected()
        call = await self.dial(endpoint, caller_id, timeout, variables, dialplan)
        return call.to_dict()

    def check_outbound(self, endpoint: str) -> None:
        """:raises Forbidden: the allowlist does not allow dialling ``endpoint`` (asterisk-api's 403 body)."""
        if self.allowlist is None or self.allowlist.rules.outbound_allowed(endpoint):
            return
        number = number_in_endpoint(endpoint)
        self.log.warn("Outbound call to {endpoint} blocked by the allowlist", endpoint=endpoint)
        raise Forbidden("Outbound call blocked by allowlist", endpoint=endpoint,
                        extractedNumber=number or NO_NUMBER,
                        hint="Add the destination number to allowlist.json outbound array")

    async def dial(self, endpoint: str, caller_id: str | None, timeout: int, variables: dict | None,
                   dialplan: tuple[str, str, int] | None = None, transferred_from: str | None = None) -> CallRecord:
        """Originate a call into the app (see `originate`); the record is tracked before Asterisk is asked."""
        ari = self.ari.require()
        name, number = parse_caller_id(caller_id)
        channel_id = self.new_id()
        call = CallRecord(call_id_for(channel_id), channel_id, OUTBOUND, self.clock.seconds(), endpoint=endpoint,
                          caller_number=number,
                          caller_name=name, callee_number=endpoint, subscribed=True, pending=True, dialplan=dialplan,
                          transferred_from=transferred_from)
        call.state = call.derived_state()
        self.registry.add(call)
        self.registry.publish("call.created", call.to_dict(), call)  # held back (pending) until Asterisk accepts
        params = {"endpoint": endpoint, "app": self.app, "channelId": channel_id, "timeout": timeout,
                  "callerId": caller_id}
        try:
            channel = await ari.request("POST", "/channels", params, {"variables": variables} if variables else None)
        except AriUnavailable:
            # The channel may exist (e.g. a timeout after Asterisk acted): make sure it does not ring on.
            self.registry.discard(call)
            self._abandon(channel_id, timeout)
            raise
        except BaseException:
            self.registry.discard(call)
            raise
        if isinstance(channel, dict):
            call.channel_name = str(channel.get("name") or "")
        self.log.info("Originated call {call_id} (channel {channel}) to {endpoint}", call_id=call.id,
                      channel=channel_id, endpoint=endpoint)
        self.registry.accepted(call)
        return call

    def _abandon(self, channel_id: str, timeout: int) -> None:
        self.ari.hang_up_quietly(channel_id)
        self._abandoned[channel_id] = self.tasks.later(timeout + ABANDON_GRACE, self._abandoned.pop, channel_id, None)

    async def answer(self, call_id: str) -> dict:
        """
        Answer a ringing inbound call (for ``ARI_INBOUND=ring`` or ``none``). Answering an answered call is a no-op.

        :return: the call. :raises NotFound, Conflict: unknown, ended, outbound or not in Stasis.
        """
        call = self.registry.live(call_id)
        if call.answered_at is not None:
            return call.to_dict()
        if call.direction == OUTBOUND:
            raise Conflict(f"Call {call_id} is outbound: the far end answers it")
        require_stasis(call)
        await self.ari.require().request("POST", f"/channels/{path_segment(call.channel_id)}/answer")
        self.registry.answered(call)
        return call.to_dict()

    async def hangup(self, call_id: str, reason: str = "normal") -> dict:
        """
        Hang up a call. ``call.ended`` follows from Asterisk's events, exactly once, with the Q.850 cause.

        :param reason: one of ARI's reasons (`avr.control.records.HANGUP_REASONS`), checked before Asterisk is
            asked, so an invalid one never leaves a live channel reported as hung up.
        :return: the call (usually not yet ``ended``). :raises Invalid: bad reason. :raises NotFound: unknown call.
        :raises Conflict: the call has already ended.
        """
        if reason not in HANGUP_REASONS:
            raise Invalid(f"reason must be one of {', '.join(HANGUP_REASONS)}")
        call = self.registry.live(call_id)
        ari = self.ari.require()
        call.requested_reason = reason
        try:
            await ari.request("DELETE", f"/channels/{path_segment(call.channel_id)}", {"reason": reason})
        except AriError as e:
            if e.status != 404:
                raise
            # Already gone: its ChannelDestroyed is on the way, or was lost while the socket was down.
            self.tasks.later(HANGUP_GRACE, self._end_if_alive, call, "the channel was already gone")
        return call.to_dict()

    def _end_if_alive(self, call: CallRecord, note: str) -> None:
        if not call.ended:
            self.registry.end_call(call, None, "Unknown", note=note)

    async def send_dtmf(self, call_id: str, dtmf: str, between: int | None = None,
                        duration: int | None = None) -> dict:
        """
        Send DTMF digits to the call (0-9, A-D, ``*``, ``#``; ``w`` pauses 500 ms).

        :param between: ms between digits (ARI default 100). :param duration: ms per digit (ARI default 100).
        :return: ``{"callId", "dtmf"}`` once Asterisk accepted them (it plays them afterwards).
        """
        call = self.registry.live(call_id)
        require_stasis(call)
        await self.ari.require().request("POST", f"/channels/{path_segment(call.channel_id)}/dtmf",
                                         {"dtmf": dtmf, "between": between, "duration": duration})
        return {"callId": call.id, "dtmf": dtmf}

    # -- inbound ------------------------------------------------------------------------------------------------

    def inbound(self, channel: dict, args: list[str], resynced: bool = False,
                previous: CallRecord | None = None) -> CallRecord:
        """
        A channel (ARI Channel JSON) that entered the app becomes an inbound call, given the inbound policy.

        :param previous: the ended call the channel had before it entered the app again (see `call_id_for`).
        """
        caller = channel.get("caller") or {}
        channel_id = str(channel["id"])
        call = CallRecord(call_id_for(channel_id, previous.id if previous is not None else None), channel_id, INBOUND,
                          self.clock.seconds(),
                          caller_number=str(caller.get("number") or ""), caller_name=str(caller.get("name") or ""),
                          callee_number=str((channel.get("dialplan") or {}).get("exten") or ""),
                          channel_name=str(channel.get("name") or ""), args=args, in_stasis=True)
        if channel.get("state") == "Up":
            call.answered_at = call.created_at
        call.state = call.derived_state()
        self.registry.add(call)
        created = call.to_dict()
        if resynced:
            created["resynced"] = True
        self.log.info("Inbound call {call_id} (channel {channel}) from {caller!r} to {callee!r}", call_id=call.id,
                      channel=channel_id, caller=call.caller_number, callee=call.callee_number)
        self.registry.publish("call.created", created, call)
        if call.answered_at is None:
            if self.inbound_policy == "ring" or (self.inbound_policy == "answer" and self.ring_delay > 0):
                self.ari.in_background("POST", f"/channels/{path_segment(call.channel_id)}/ring",
                                       f"ringing call {call.id}")
            if self.inbound_policy == "answer":
                if self.ring_delay > 0:
                    self._ringing[call.id] = self.tasks.later(self.ring_delay, self._answer_after_ringing, call)
                else:
                    self.tasks.spawn(self._auto_answer(call), f"answering call {call.id}")
        return call

    def caller_allowed(self, channel: dict) -> bool:
        """The allowlist lets the caller of ``channel`` (ARI Channel JSON) in; logged when it does not."""
        number = str((channel.get("caller") or {}).get("number") or "")
        if self.allowlist is None or self.allowlist.rules.inbound_allowed(number):
            return True
        self.log.warn("Inbound call {id} from {number!r} blocked by the allowlist: hanging up", id=channel.get("id"),
                      number=number)
        return False

    def _answer_after_ringing(self, call: CallRecord) -> None:
        self._ringing.pop(call.id, None)
        if not call.ended and call.answered_at is None:
            self.tasks.spawn(self._auto_answer(call), f"answering call {call.id}")

    async def _auto_answer(self, call: CallRecord) -> None:
        try:
            await self.ari.require().request("POST", f"/channels/{path_segment(call.channel_id)}/answer")
        except (AriError, AriUnavailable) as e:
            if not call.ended:
                self.log.warn("Cannot answer inbound call {call_id}: {error}", call_id=call.id, error=e)
            return
        self.registry.answered(call)

    # -- channel events -------------------------------------------------------------------------------------------

    def _on_stasis_start(self, event: dict) -> None:
        channel = event.get("channel") or {}
        channel_id = channel.get("id")
        if not isinstance(channel_id, str):
            return
        args = [str(a) for a in event.get("args") or []]
        if self.legs.is_media_channel(channel_id):
            return
        call = self.registry.by_channel(channel_id)
        if call is None:
            if channel_id in self._abandoned or not self.caller_allowed(channel):
                self.ari.hang_up_quietly(channel_id)
                return
            self.inbound(channel, args)
            return
        if call.ended:
            if call.direction == INBOUND:
                # The channel came back into the app (the dialplan sent it again): a new inbound call, with an id
                # of its own; the ended one stays readable for its retention.
                self.inbound(channel, args, previous=call)
            return
        call.in_stasis = True
        if channel.get("state") == "Up" and call.answered_at is None:
            call.answered_at = self.clock.seconds()
        self.registry.refresh(call)
        if call.dialplan is not None and not call.handed_off:
            call.handed_off = True
            self.tasks.spawn(self._hand_off(call), f"handing call {call.id} to the dialplan")
            return
        hooks, call.on_stasis = call.on_stasis, []
        for hook in hooks:
            hook()

    async def _hand_off(self, call: CallRecord) -> None:
        assert call.dialplan is not None
        context, extension, priority = call.dialplan
        try:
            await self.ari.require().request("POST", f"/channels/{path_segment(call.channel_id)}/continue",
                                             {"context": context, "extension": extension, "priority": priority})
        except (AriError, AriUnavailable) as e:
            if not call.ended:
                self.log.warn("Cannot send call {call_id} to {extension}@{context}: {error}; hanging it up",
                              call_id=call.id, extension=extension, context=context, error=e)
                self.ari.hang_up_quietly(call.channel_id)

    def _on_stasis_end(self, event: dict) -> None:
        channel_id = (event.get("channel") or {}).get("id")
        call = self.registry.by_channel(channel_id)
        if call is None or call.ended:
            return
        call.in_stasis = False
        if call.subscribed:
            return  # ChannelDestroyed will follow, with the real cause
        code = call.hangup_request_cause
        if code is None and call.requested_reason is not None:
            code = HANGUP_REASONS[call.requested_reason]
        if code is None:
            self.registry.end_call(call, None, "Unknown", note="left the Stasis application")
        else:
            self.registry.end_call(call, code, cause_text(code))

    def _on_channel_destroyed(self, event: dict) -> None:
        channel_id = (event.get("channel") or {}).get("id")
        if not isinstance(channel_id, str):
            return
        call = self.registry.by_channel(channel_id)
        if call is None:
            return
        code = event.get("cause")
        text = event.get("cause_txt")
        if not isinstance(code, int):
            code, text = None, None
        if code in (0, None) and call.dial_status in DIAL_STATUS_CAUSES:
            code = DIAL_STATUS_CAUSES[call.dial_status]
            text = cause_text(code)
        self.registry.end_call(call, code, text or cause_text(code))

    def _on_channel_state_change(self, event: dict) -> None:
        channel = event.get("channel") or {}
        call = self.registry.by_channel(channel.get("id"))
        if call is None or call.ended:
            return
        state = channel.get("state")
        if state == "Up" and call.answered_at is None:
            call.answered_at = self.clock.seconds()
        elif state == "Ringing" and call.direction == OUTBOUND:
            call.remote_ringing = True
        self.registry.refresh(call)

    def _on_channel_hangup_request(self, event: dict) -> None:
        call = self.registry.by_channel((event.get("channel") or {}).get("id"))
        if call is None or call.ended:
            return
        cause = event.get("cause")
        if not event.get("soft") and isinstance(cause, int):
            call.hangup_request_cause = cause

    def _on_dial(self, event: dict) -> None:
        call = self.registry.by_channel((event.get("peer") or {}).get("id"))
        status = event.get("dialstatus")
        if call is None or call.ended or not status:
            return
        call.dial_status = status
        if status in ("RINGING", "PROGRESS") and call.direction == OUTBOUND:
            call.remote_ringing = True
            self.registry.refresh(call)

    def _on_channel_dtmf_received(self, event: dict) -> None:
        call = self.registry.by_channel((event.get("channel") or {}).get("id"))
        digit = event.get("digit")
        if call is None or call.ended or not isinstance(digit, str):
            return
        self.registry.publish("call.dtmf", {"digit": digit, "durationMs": event.get("duration_ms")}, call)

    def _on_channel_caller_id(self, event: dict) -> None:
        channel = event.get("channel") or {}
        call = self.registry.by_channel(channel.get("id"))
        if call is not None and not call.ended:
            caller = channel.get("caller") or {}
            call.caller_number = str(caller.get("number") or call.caller_number)
            call.caller_name = str(caller.get("name") or call.caller_name)
