"""
The events webhook (``EVENTS_WEBHOOK_URL``, alias ``OPENCLAW_WEBHOOK_URL``): every call-control event, as the same
JSON object ``/events`` sends, POSTed to one receiver.

Delivery never blocks the publisher: `avr.delivery.PostQueue` with one lane for all events, so they are sent one at a
time, in the order published. Each attempt is bounded by a timeout; a failed one (connection error, timeout, non-2xx)
is retried with exponential backoff on the injected clock, and given up with a log line after the last retry. When the
receiver stays down long enough for the queue to fill, the oldest events are dropped (logged when it starts and with
the count when delivery catches up) -- never a call's ``call.created`` or ``call.ended``, which also get the shutdown
grace.
"""

from __future__ import annotations

import json
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from avr.delivery import MAX_QUEUED, PostQueue
from avr.interfaces import IEventSink
from avr.logtext import url_repr

#: The event types that are never dropped: a receiver that tracks calls needs to see each call begin and end.
NEVER_DROPPED = frozenset({"call.created", "call.ended"})


@implementer(IEventSink)
@define(eq=False)
class EventsWebhook:
    """
    POSTs each published event to ``url``.

    :param http: a treq ``HTTPClient`` (or ``StubTreq``).
    :param clock: times attempts and backoff.
    :param url: the receiver.
    :param timeout: seconds per attempt (request and reading the reply).
    :param retries: extra attempts after a failed one.
    :param max_queue: droppable events kept while the receiver is slow or down; the oldest are dropped beyond it.
    :param backoff_base: seconds before the first retry, doubled before each further one ...
    :param backoff_cap: ... up to this many seconds.
    :param fresh_http: sends a request again whose connection closed before any response (see `PostQueue`).
    """

    log = Logger()

    http: Any = field(repr=False)
    clock: IReactorTime = field(repr=False)
    url: str = field(repr=url_repr)
    timeout: float = 3.0
    retries: int = 2
    max_queue: int = MAX_QUEUED
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    fresh_http: Any = field(default=None, repr=False)
    #: The delivery engine.
    deliveries: PostQueue = field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self.deliveries = PostQueue(
            self.http, self.clock, self.url, label="Events webhook", timeout=self.timeout, retries=self.retries,
            backoff_base=self.backoff_base, backoff_cap=self.backoff_cap, max_queued=self.max_queue,
            never_dropped=NEVER_DROPPED, fresh_http=self.fresh_http,
        )

    @property
    def pending(self) -> int:
        """Events not yet delivered (queued, not counting the one being sent)."""
        return self.deliveries.pending

    def publish(self, event: dict) -> None:
        """Queue ``event`` for delivery (`IEventSink`). Never raises, never blocks."""
        kind = str(event.get("type", "?"))
        try:
            body = json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError):
            self.log.failure("Events webhook: dropping a {type} event that is not JSON", type=kind)
            return
        self.deliveries.post(None, kind, f"Events webhook: {kind} event", body)

    def stop(self) -> Deferred[None]:
        """
        Stop delivering: drop the queued events and cancel the attempt or retry in progress, except for
        ``call.created`` and ``call.ended``, which get one attempt each within `avr.delivery.SHUTDOWN_GRACE`.

        :return: a Deferred firing when nothing is in flight any more.
        """
        return self.deliveries.stop()
