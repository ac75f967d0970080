"""
What an agent may do to its call (the STS control messages ``hangup``, ``transfer``, ``dtmf``): `AriCallActions` for
calls under call control (ARI), `DialplanActions` for dialplan AudioSocket calls. Both answer with an
`avr.sts.codec.ActionResult`, never a failure: what cannot be done is a result with ``ok`` false and a readable
``error``, which the agent gets and can talk about.

The requests' values are checked with the REST API's limits (`avr.control.request_fields`), and carried out with
the REST API's semantics (`avr.interfaces.ICallControl`): a transfer rings the caller and bridges the target once it
answers, and leaves the caller as before when it does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attrs import define
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from avr.ari.errors import AriError, AriUnavailable
from avr.control.errors import ControlError
from avr.control.records import HANGUP_REASONS, CallRecord
from avr.control.request_fields import DTMF, TRANSFER, validate
from avr.http.json import ApiError
from avr.interfaces import ICallActions, ICallControl
from avr.sts.codec import ActionRequest, ActionResult, DtmfRequest, HangupRequest, TransferRequest

if TYPE_CHECKING:
    from avr.calls import Call
    from avr.control.call_registry import CallRegistry

log = Logger()


def transfer_endpoint(request: TransferRequest) -> str:
    """
    The dial string of a transfer: its ``endpoint``, or ``Local/<extension>@<context>`` (a Local channel runs the
    dialplan from priority 1, so that is the only priority a dialplan target can have).

    :raises ApiError: a priority other than 1.
    """
    if request.endpoint is not None:
        return request.endpoint
    if request.priority not in (None, 1):
        raise ApiError(400, "priority: a dialplan transfer target starts at priority 1 (it is dialled as a Local "
                            "channel)")
    return f"Local/{request.extension}@{request.context}"


async def carry_out(control: ICallControl, call_id: str, request: ActionRequest) -> ActionResult:
    """Carry out ``request`` on the ARI call ``call_id`` through ``control``; the outcome as a result."""
    try:
        if isinstance(request, HangupRequest):
            # The agent's reason is free text (logged, in the events); Asterisk gets one of its own reasons.
            reason = request.reason if request.reason in HANGUP_REASONS else "normal"
            await control.hangup(call_id, reason)
        elif isinstance(request, TransferRequest):
            endpoint = transfer_endpoint(request)
            fields = validate({"endpoint": endpoint, "callerId": request.caller_id, "timeout": request.timeout},
                              TRANSFER)
            await control.transfer(call_id, fields["endpoint"], caller_id=fields.get("callerId"),
                                   timeout=fields.get("timeout", 30))
        elif isinstance(request, DtmfRequest):
            fields = validate({"dtmf": request.digits}, DTMF)
            await control.send_dtmf(call_id, fields["dtmf"])
        else:
            return ActionResult(request.action, False, f"unknown action {request.action!r}", request.id)
    except ApiError as e:
        details = e.extra.get("details")
        error = "; ".join(details) if isinstance(details, list) and details else e.message
    except ControlError as e:
        error = e.message
    except AriError as e:
        error = f"Asterisk: {e.message}"
    except AriUnavailable as e:
        error = f"ARI is not reachable: {e.message}"
    else:
        return ActionResult(request.action, True, None, request.id)
    return ActionResult(request.action, False, error, request.id)


@implementer(ICallActions)
@define(eq=False)
class AriCallActions:
    """
    The actions of the agent of an ARI call (`avr.control.agents`), carried out on that call.

    :param control: call control.
    :param call_id: the ARI call the agent is on.
    """

    control: ICallControl
    call_id: str

    def perform(self, call: Call, request: ActionRequest) -> Deferred[ActionResult]:
        """See `ICallActions.perform`."""
        return Deferred.fromCoroutine(carry_out(self.control, self.call_id, request))


@implementer(ICallActions)
@define(eq=False)
class DialplanActions:
    """
    The actions of the agents of dialplan AudioSocket calls (``AudioSocket()``, ``Dial(AudioSocket/…)``).

    ``hangup`` ends the AudioSocket leg (0x00, then close): after ``AudioSocket()`` the dialplan continues at the
    next priority; a ``Dial(AudioSocket/…)`` leg hangs up. ``transfer`` and ``dtmf`` need ARI: they act on the
    channel the ``POST /call`` payload names (``uniqueid``, else ``channel``), as the ARI call control knows it.
    ARI acts only on channels in the Stasis application, so a channel running ``AudioSocket()`` in the dialplan is
    refused with a result that says so (hand such calls to avr with ``Stasis(<app>,agent)`` instead). Every refusal
    is logged.

    :param control: call control, or ``None`` when ARI is not configured.
    :param registry: the calls call control knows (to find the payload's channel).
    """

    control: ICallControl | None = None
    registry: CallRegistry | None = None

    def perform(self, call: Call, request: ActionRequest) -> Deferred[ActionResult]:
        """See `ICallActions.perform`."""
        if isinstance(request, HangupRequest):
            reason = f"the agent hung up ({request.reason})" if request.reason else "the agent hung up"
            call.end(reason)
            return succeed(ActionResult(request.action, True, None, request.id))
        if self.control is None or self.registry is None:
            return self._refuse(call, request, f"{request.action} needs ARI, which is not configured (ARI_URL)")
        uniqueid, name = _text(call.payload.get("uniqueid")), _text(call.payload.get("channel"))
        if uniqueid is None and name is None:
            return self._refuse(call, request, f"{request.action} needs the call's channel, and the POST /call "
                                               "payload named none (channel or uniqueid)")
        target = self._ari_call(uniqueid, name)
        if target is None:
            return self._refuse(call, request, f"channel {name or uniqueid} is not in the Stasis application, and "
                                               f"ARI can {request.action} only there")
        return Deferred.fromCoroutine(carry_out(self.control, target.id, request))

    def _ari_call(self, uniqueid: str | None, name: str | None) -> CallRecord | None:
        assert self.registry is not None
        found = self.registry.by_channel(uniqueid) if uniqueid is not None else None
        if found is None and name is not None:
            found = next((c for c in self.registry if c.channel_name == name and not c.ended), None)
        return found if found is not None and not found.ended else None

    @staticmethod
    def _refuse(call: Call, request: ActionRequest, why: str) -> Deferred[ActionResult]:
        log.warn("Call {call_id}: the agent's {action} is refused: {why}", call_id=call.uuid, action=request.action,
                 why=why)
        return succeed(ActionResult(request.action, False, why, request.id))


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
