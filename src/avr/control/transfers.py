"""
Transfer: connect a call to another endpoint through a new outbound leg and a bridge (avr stays in the media path;
this is not a SIP REFER).
"""

from __future__ import annotations

from typing import Any

from attrs import define
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from avr.ari.client import path_segment
from avr.ari.errors import AriError, AriUnavailable
from avr.control.ari_link import AriLink
from avr.control.bridges import Bridges
from avr.control.call_registry import CallRegistry, require_stasis
from avr.control.channels import Channels
from avr.control.errors import Conflict, ControlError, NotAnswered
from avr.control.records import Bridge, CallRecord, cause_text
from avr.control.tasks import TaskGroup

#: Seconds granted beyond the dial timeout for Asterisk to report the outcome.
TRANSFER_GRACE = 5.0


@define(eq=False)
class Transfers:
    """
    The transfer operation.

    :param registry: the calls, and where the events go.
    :param ari: the way to Asterisk.
    :param tasks: the wait for the target, and clean-ups.
    :param channels: originates the target leg.
    :param bridges: makes the bridge that joins the parties.
    """

    registry: CallRegistry
    ari: AriLink
    tasks: TaskGroup
    channels: Channels
    bridges: Bridges
    log = Logger()

    async def transfer(self, call_id: str, endpoint: str, caller_id: str | None = None, timeout: int = 30) -> dict:
        """
        Transfer an answered call to ``endpoint``.

        1. The caller hears ringing (ARI ``ring`` on the answered channel: Asterisk plays the ring tone in-band)
           while avr originates a new leg to ``endpoint`` into the Stasis app (caller id: ``caller_id``, else the
           call's own caller number). The leg is an ordinary outbound call (``call.created``, ...) with
           ``transferredFrom`` set.
        2. The leg is bridged only once it has entered Stasis (its ``StasisStart``, which Asterisk sends after the
           answer), so adding it can never race the application (ARI would answer 422).
        3. Success: the ringing stops, a ``transfer`` bridge holds both calls (``bridge.created``, then
           ``bridge.channel_entered`` twice, both calls ``bridged``), ``call.transferred`` is published, and the
           answer is ``{"callId", "newCallId", "bridgeId", "bridge"}``. When either party later leaves, the
           bridge is destroyed and the other party stays up (``answered``): avr never drops a call on its own.
        4. Failure (busy, no answer within ``timeout``, rejected, unreachable, or the caller hung up meanwhile):
           the ringing stops, the target leg is hung up if still up, no bridge is left behind, the original call
           is exactly as before (answered, never dropped, never left silent), ``call.transfer_failed`` is published
           with the reason and the target's cause, and the error is raised: `NotAnswered` (408, asterisk-api's)
           when the target did not answer, `Conflict` (409) when it was busy or failed, or the call ended;
           `AriError` when Asterisk refused the originate.

        :raises NotFound: unknown call. :raises Conflict: the call is ended, not answered, not in Stasis, in a
            bridge already, or already being transferred. :raises Forbidden: the outbound allowlist does not list
            the target (asterisk-api did not check transfers, D15).
        """
        call = self.registry.live(call_id)
        self.channels.check_outbound(endpoint)
        self.ari.require_connected()
        require_stasis(call)
        if call.answered_at is None:
            raise Conflict(f"Call {call_id} must be answered before it can be transferred")
        if call.bridge_id is not None:
            raise Conflict(f"Call {call_id} is in bridge {call.bridge_id}: remove it first")
        if call.transfer_pending:
            raise Conflict(f"Call {call_id} is already being transferred")
        call.transfer_pending = True
        try:
            return await self._transfer(call, endpoint, caller_id or call.caller_number or None, timeout)
        finally:
            call.transfer_pending = False

    async def _transfer(self, call: CallRecord, endpoint: str, caller_id: str | None, timeout: int) -> dict:
        ari = self.ari.require()
        channel = f"/channels/{path_segment(call.channel_id)}"
        target: CallRecord | None = None
        bridge: Bridge | None = None
        await ari.request("POST", f"{channel}/ring")
        try:
            target = await self.channels.dial(endpoint, caller_id, timeout, None, transferred_from=call.id)
            await self._target_in_stasis(call, target, endpoint, timeout + TRANSFER_GRACE)
            await ari.request("DELETE", f"{channel}/ring")
            self._check_parties(call, target)
            bridge = await self.bridges.create(f"transfer-{call.id}", "transfer")
            self._check_parties(call, target)
            await ari.request("POST", f"/bridges/{path_segment(bridge.id)}/addChannel",
                              {"channel": [call.channel_id, target.channel_id]})
            self._check_parties(call, target)
        except BaseException as e:
            self._transfer_failed(call, target, bridge, endpoint, e)
            raise
        for party in (call, target):
            self.bridges.member_entered(bridge, party)
        self.log.info("Transferred call {call_id} to {endpoint} (new call {new}, bridge {bridge})", call_id=call.id,
                      endpoint=endpoint, new=target.id, bridge=bridge.id)
        self.registry.publish("call.transferred",
                              {"endpoint": endpoint, "targetCallId": target.id, "bridgeId": bridge.id}, call)
        return {"callId": call.id, "newCallId": target.id, "bridgeId": bridge.id, "bridge": bridge.to_dict()}

    def _check_parties(self, call: CallRecord, target: CallRecord) -> None:
        if call.ended:
            raise Conflict(f"Call {call.id} ended during the transfer")
        if target.ended:
            raise self._target_failure(target, target.endpoint or "")

    def _target_in_stasis(self, call: CallRecord, target: CallRecord, endpoint: str, limit: float) -> Deferred:
        """Fires once ``target`` is in Stasis; fails when it ends, when ``call`` ends, or after ``limit`` s."""
        outcome: Deferred = Deferred()

        def entered() -> None:
            if not outcome.called:
                outcome.callback(None)

        def target_ended() -> None:
            if not outcome.called:
                outcome.errback(Failure(self._target_failure(target, endpoint)))

        def caller_ended() -> None:
            if not outcome.called:
                outcome.errback(Failure(Conflict(f"Call {call.id} ended during the transfer")))

        def timed_out() -> None:
            if not outcome.called:
                outcome.errback(Failure(NotAnswered(f"Transfer target {endpoint} did not answer within {limit:g} s")))

        if target.ended:
            target_ended()
        elif call.ended:
            caller_ended()
        elif target.in_stasis:
            entered()
        else:
            target.on_stasis.append(entered)
            target.on_end.append(target_ended)
            call.on_end.append(caller_ended)
            timer = self.tasks.later(limit, timed_out)

            def untrack(result: Any) -> Any:
                self.tasks.cancel(timer)
                for hooks, hook in ((target.on_stasis, entered), (target.on_end, target_ended),
                                    (call.on_end, caller_ended)):
                    if hook in hooks:
                        hooks.remove(hook)
                return result

            outcome.addBoth(untrack)
        return self.tasks.wait(outcome)

    def _target_failure(self, target: CallRecord, endpoint: str) -> ControlError:
        cause = target.cause
        text = target.cause_text or cause_text(cause)
        extra = {"cause": cause, "causeText": text, "newCallId": target.id}
        if cause in (18, 19) or target.dial_status == "NOANSWER":
            return NotAnswered(f"Transfer target {endpoint} did not answer", **extra)
        if cause == 17 or target.dial_status == "BUSY":
            return Conflict(f"Transfer target {endpoint} is busy", **extra)
        return Conflict(f"Transfer target {endpoint} could not be reached ({text})", **extra)

    def _transfer_failed(self, call: CallRecord, target: CallRecord | None, bridge: Bridge | None, endpoint: str,
                         error: BaseException) -> None:
        if not call.ended:
            self.ari.in_background("DELETE", f"/channels/{path_segment(call.channel_id)}/ring",
                                   f"stopping the ringing on call {call.id}")
        if target is not None and not target.ended:
            self.ari.hang_up_quietly(target.channel_id)
        if bridge is not None and bridge.id in self.bridges:
            self.ari.destroy_bridge_quietly(bridge.id)
            self.bridges.gone(bridge)
        if isinstance(error, (ControlError, AriError, AriUnavailable)):
            reason = str(error.message)
        else:
            reason = f"{type(error).__name__}: {error}"
        data: dict[str, Any] = {"endpoint": endpoint, "reason": reason,
                                "targetCallId": target.id if target is not None else None}
        if target is not None and target.ended:
            data["cause"] = target.cause
            data["causeText"] = target.cause_text
        self.log.info("Transfer of call {call_id} to {endpoint} failed: {reason}", call_id=call.id, endpoint=endpoint,
                      reason=reason)
        self.registry.publish("call.transfer_failed", data, call)
