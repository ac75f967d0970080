"""
Observers of agent calls (`ICallObserver`): the fan-out that `avr.calls.Call` notifies, and the adapter that turns
the typed events into avr-core's webhooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from twisted.logger import Logger
from zope.interface import implementer

from avr.interfaces import ICallObserver, IWebhooks

if TYPE_CHECKING:
    from avr.calls import Call
    from avr.sts.codec import ActionMessage, ActionResult


@implementer(ICallObserver)
class CallObservers:
    """
    Hands each event to several observers, in the order given. An observer must not raise; if one does, the error is
    logged and the others still get the event (a call's audio path is never broken by an observer).
    """

    log = Logger()

    def __init__(self, *observers: ICallObserver) -> None:
        self.observers = observers

    def _each(self, event: str, call: Call, notify: Callable[[ICallObserver], Any]) -> None:
        for observer in self.observers:
            try:
                notify(observer)
            except Exception:
                self.log.failure("Call observer {observer!r} failed on {event} of call {call_id}",
                                 observer=observer, event=event, call_id=call.uuid)

    def call_started(self, call: Call) -> None:
        self._each("call_started", call, lambda o: o.call_started(call))

    def dtmf(self, call: Call, digit: str) -> None:
        self._each("dtmf", call, lambda o: o.dtmf(call, digit))

    def transcript(self, call: Call, role: str, text: str) -> None:
        self._each("transcript", call, lambda o: o.transcript(call, role, text))

    def interruption(self, call: Call) -> None:
        self._each("interruption", call, lambda o: o.interruption(call))

    def agent_action(self, call: Call, request: ActionMessage, result: ActionResult | None) -> None:
        self._each("agent_action", call, lambda o: o.agent_action(call, request, result))

    def call_ended(self, call: Call, reason: str) -> None:
        self._each("call_ended", call, lambda o: o.call_ended(call, reason))


@implementer(ICallObserver)
class WebhookObserver:
    """
    avr-core's call webhooks for the typed events: ``call_started`` ``{}``, ``dtmf_digit`` ``{"digit"}``,
    ``transcription`` ``{"role", "text"}``, ``interruption`` ``{}``, ``call_ended`` ``{}``, under the call's UUID.
    avr-core has no webhook for the agent's actions (they are on ``/events`` and the events webhook).
    """

    def __init__(self, webhooks: IWebhooks) -> None:
        self.webhooks = webhooks

    def call_started(self, call: Call) -> None:
        self.webhooks.emit(call.uuid, "call_started", {})

    def dtmf(self, call: Call, digit: str) -> None:
        self.webhooks.emit(call.uuid, "dtmf_digit", {"digit": digit})

    def transcript(self, call: Call, role: str, text: str) -> None:
        self.webhooks.emit(call.uuid, "transcription", {"role": role, "text": text})

    def interruption(self, call: Call) -> None:
        self.webhooks.emit(call.uuid, "interruption", {})

    def agent_action(self, call: Call, request: ActionMessage, result: ActionResult | None) -> None:
        """Not an avr-core webhook."""

    def call_ended(self, call: Call, reason: str) -> None:
        self.webhooks.emit(call.uuid, "call_ended", {})
