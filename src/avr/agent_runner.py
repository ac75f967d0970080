"""
The AudioSocket side of AI agents on ARI calls (`avr.control.agents`): the agent's STS URL is decided as for
``POST /call`` (the ``call_initiated`` webhook may route it; the payload becomes query parameters), and the
AudioSocket connection that Asterisk opens for the call's media leg becomes an ordinary agent call
(`avr.calls.Call`): ``init``, audio both ways, DTMF, interruptions, transcripts, the AVR webhooks under the leg's
UUID, the agent's actions.
"""

from __future__ import annotations

from typing import Any, Mapping

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from avr.admissions import Admissions
from avr.audiosocket import CallRefused
from avr.calls import Call, CallManager
from avr.interfaces import IAdmission, IAgentRunner, IAudioSocketLeg, ICallActions, ICallObserver, ICallSink, IWebhooks
from avr.logtext import url_repr
from avr.observers import CallObservers, WebhookObserver
from avr.urls import routed_sts_url


class AgentEnded(Exception):
    """The agent session is over; the message says why (``STS closed: ...``, ``Asterisk: connection lost``...)."""


@implementer(IAdmission, ICallObserver)
@define(eq=False)
class AgentAdmission:
    """
    The expected AudioSocket connection of one agent's media leg: it becomes an agent call, and ``done`` fails with
    the reason once that call is over.
    """

    uuid: str
    sts_url: str | None = field(repr=url_repr)
    payload: Mapping[str, Any]
    observer: ICallObserver
    actions: ICallActions
    audio_kind: int
    calls: CallManager
    webhooks: IWebhooks
    done: Deferred = field(init=False)
    call: Call | None = field(default=None, init=False)
    kind = "agent"

    def __attrs_post_init__(self) -> None:
        self.done = Deferred(self._cancel)

    def admit(self, leg: IAudioSocketLeg) -> ICallSink:
        """The media leg connected: start the agent call on it (`IAdmission.admit`)."""
        observers = CallObservers(WebhookObserver(self.webhooks), self.observer, self)
        try:
            self.call = self.calls.start_call(leg, self.sts_url, self.payload, observer=observers,
                                              actions=self.actions, kind=self.audio_kind)
        except CallRefused as e:
            self._over(Failure(AgentEnded(e.reason)))
            raise
        return self.call

    def expired(self, reason: Failure) -> None:
        """No connection came (`IAdmission.expired`)."""
        self._over(reason)

    def _cancel(self, d: Deferred) -> None:
        self.calls.admissions.withdraw(self.uuid, self)
        if self.call is not None:
            self.call.end("the agent was removed from the call")

    def _over(self, reason: Failure) -> None:
        if not self.done.called:
            self.done.errback(reason)

    # -- ICallObserver: only the end matters here

    def call_started(self, call: Call) -> None:
        """Nothing to do."""

    def dtmf(self, call: Call, digit: str) -> None:
        """Nothing to do."""

    def transcript(self, call: Call, role: str, text: str) -> None:
        """Nothing to do."""

    def interruption(self, call: Call) -> None:
        """Nothing to do."""

    def agent_action(self, call: Call, request: Any, result: Any) -> None:
        """Nothing to do."""

    def call_ended(self, call: Call, reason: str) -> None:
        """The agent session is over: ``done`` fails with `AgentEnded`."""
        self._over(Failure(AgentEnded(reason)))


@implementer(IAgentRunner)
@define(eq=False)
class AgentRunner:
    """
    Runs agent sessions for ARI calls (`IAgentRunner`).

    :param calls: starts and owns the agent calls (shutdown ends them, ``/health`` counts them).
    :param webhooks: ``call_initiated`` and the AVR webhooks of the agent calls.
    :param sts_url: ``STS_URL``, the agent when neither the request nor the webhook names one.
    :param timeout: seconds the media leg's AudioSocket connection may take to arrive.
    """

    calls: CallManager
    webhooks: IWebhooks
    sts_url: str | None = field(repr=url_repr)
    timeout: float = 10.0
    log = Logger()

    @property
    def admissions(self) -> Admissions:
        """Where the agents' connections are expected."""
        return self.calls.admissions

    def route(self, uuid: str, base: str | None, payload: dict) -> Deferred[str | None]:
        """See `IAgentRunner.route`."""
        d = self.webhooks.call_initiated(uuid, dict(payload))
        return d.addCallback(lambda override: routed_sts_url(override, base if base is not None else self.sts_url,
                                                             payload))

    def expect(self, uuid: str, sts_url: str | None, payload: dict, observer: ICallObserver, actions: ICallActions,
               kind: int) -> Deferred:
        """See `IAgentRunner.expect`."""
        admission = AgentAdmission(uuid, sts_url, payload, observer, actions, kind, self.calls, self.webhooks)
        self.admissions.expect(uuid, admission, self.timeout)
        return admission.done
