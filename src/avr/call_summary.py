"""
The end-of-call summary: one log line per ended agent call (dialplan AudioSocket calls and agents on ARI calls) with
what an operator asks first: how long, who hung up and why, audio frames each way and how many left late, which
agent (STS) and whether it could be reached, and how many of its webhooks were not delivered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Hashable
from urllib.parse import urlsplit

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from avr.interfaces import ICallObserver
from avr.logtext import clip, redact_url
from avr.metrics import end_reason

if TYPE_CHECKING:
    from avr.calls import Call
    from avr.sts.codec import ActionMessage, ActionResult

#: Who ended a call, by its end reason's label (`avr.metrics.end_reason`): the caller (Asterisk's hang-up frame),
#: Asterisk (its connection or frames), the agent, the REST API, or avr itself.
ENDED_BY = {
    "hangup": "caller",
    "connection_lost": "asterisk",
    "asterisk_error": "asterisk",
    "malformed_frame": "asterisk",
    "idle_timeout": "avr",
    "internal_error": "avr",
    "agent_hangup": "agent",
    "sts_closed": "agent",
    "sts_unreachable": "avr",
    "agent_removed": "api",
    "shutdown": "avr",
}

#: How a call's STS is spoken to, by its URL's scheme.
STS_MODES = {"ws": "websocket", "wss": "websocket", "http": "http", "https": "http"}


@implementer(ICallObserver)
@define(eq=False)
class CallSummaries:
    """
    Logs the summary of each call as it ends (`call_ended`), under ``call_id`` with every figure as its own field.

    :param clock: gives the end time (a call's start is its ``started_at``).
    :param default_mode: what answers a call without an STS URL (`avr.config.agent_mode`: ``echo`` or
        ``pipeline``).
    """

    clock: IReactorTime
    default_mode: str
    #: Webhook events not delivered, by the UUID of a live call (only live calls are counted: nothing accumulates).
    _webhook_failures: dict[Hashable, int] = field(factory=dict, init=False)
    log = Logger()

    def webhook_failed(self, call_id: Hashable) -> None:
        """A webhook event of call ``call_id`` was not delivered after every attempt (`avr.delivery.PostQueue`)."""
        if call_id in self._webhook_failures:
            self._webhook_failures[call_id] += 1

    def call_started(self, call: Call) -> None:
        self._webhook_failures[call.uuid] = 0

    def dtmf(self, call: Call, digit: str) -> None:
        """Not summarised."""

    def transcript(self, call: Call, role: str, text: str) -> None:
        """Not summarised."""

    def interruption(self, call: Call) -> None:
        """Not summarised."""

    def agent_action(self, call: Call, request: ActionMessage, result: ActionResult | None) -> None:
        """Not summarised."""

    def call_ended(self, call: Call, reason: str) -> None:
        label = end_reason("audiosocket", {"reason": reason})
        scheme = urlsplit(call.sts_url).scheme if call.sts_url else None
        self.log.info(
            "Call summary {call_id}: {duration:.3f} s, ended by {ended_by} ({reason}); frames in {frames_in}, out "
            "{frames_out}, {late_frames} late; STS {sts_url} ({sts_mode}), {sts_connect_failures} connect "
            "failure(s); {webhook_failures} webhook failure(s)",
            call_id=call.uuid,
            kind="audiosocket",
            duration=round(max(0.0, self.clock.seconds() - call.started_at), 3),
            ended_by=ENDED_BY.get(label, "other"),
            reason=clip(reason),
            end_reason=label,
            frames_in=call.frames_in,
            frames_out=call.frames_out,
            late_frames=call.late_frames,
            sts_url=redact_url(call.sts_url) if call.sts_url else None,
            sts_mode=STS_MODES.get(scheme or "", self.default_mode),
            sts_connect_failures=call.sts_connect_failures,
            webhook_failures=self._webhook_failures.pop(call.uuid, 0),
        )
