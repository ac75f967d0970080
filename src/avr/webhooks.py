"""
avr-core's call webhooks: ``POST WEBHOOK_URL`` with a JSON envelope for every call event.

Each event is one envelope with exactly the keys ``uuid``, ``type``, ``timestamp`` and ``payload`` (avr-app's
receiver refuses anything else). Delivery is fire-and-forget for the caller, by `avr.delivery.PostQueue` with one lane
per call: attempts are bounded by the webhook timeout, failures are retried with exponential backoff, the final failure
is logged. Events of one call are delivered one after the other, in the order emitted; calls never wait on each other.
Only ``call_initiated``'s reply is read: its ``sts_url`` routes the call. When the receiver cannot keep up, the oldest
transcriptions, interruptions and digits are dropped; ``call_initiated``, ``call_started`` and ``call_ended`` never are.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Hashable, Mapping

from attrs import define, field
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from avr.delivery import PostQueue
from avr.interfaces import IWebhooks
from avr.json_input import decode_json
from avr.logtext import redact_url, url_repr
from avr.timestamps import iso_millis
from avr.urls import is_sts_url

#: The event types avr-core sends (and avr-app's receiver accepts), in a call's order.
WEBHOOK_TYPES = ("call_initiated", "call_started", "transcription", "interruption", "dtmf_digit", "call_ended")

#: Header carrying the shared secret (the raw secret: receivers compare it for equality).
SECRET_HEADER = "X-AVR-WEBHOOK-SECRET"

#: The event types that are never dropped when the receiver cannot keep up (the others are, oldest first).
NEVER_DROPPED = frozenset({"call_initiated", "call_started", "call_ended"})

#: How much of a reply body is logged.
_LOGGED_REPLY_CHARS = 1000


@implementer(IWebhooks)
@define(eq=False)
class WebhookClient:
    """
    Sends call webhooks to ``url`` through a `PostQueue` (one lane per call); with ``url=None`` every method is a
    no-op.

    :param http: a treq ``HTTPClient`` (or ``StubTreq``) used for the POSTs.
    :param clock: times attempts, backoff and ``call_initiated``'s deadline; stamps envelopes.
    :param url: the receiver (``WEBHOOK_URL``), or ``None``.
    :param secret: sent as header ``X-AVR-WEBHOOK-SECRET`` when not ``None``; never logged.
    :param timeout: seconds per attempt (request and reply body), and for ``call_initiated`` as a whole.
    :param retries: extra attempts after a failed one (connection error, timeout, non-2xx status).
    :param backoff_base: seconds before the first retry; doubled before each further one ...
    :param backoff_cap: ... up to this many seconds.
    :param fresh_http: sends a request again whose connection closed before any response (see `PostQueue`).
    :param on_failed: told the UUID of the call of each event not delivered after every attempt.
    """

    log = Logger()

    http: Any = field(repr=False)
    clock: IReactorTime = field(repr=False)
    url: str | None = field(repr=url_repr)
    secret: str | None = field(default=None, repr=False)
    timeout: float = 3.0
    retries: int = 0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    fresh_http: Any = field(default=None, repr=False)
    on_failed: Callable[[Hashable], None] | None = field(default=None, repr=False)
    #: The delivery engine (``None`` without a URL).
    deliveries: PostQueue | None = field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.url is not None:
            self.deliveries = PostQueue(
                self.http, self.clock, self.url, label="Webhooks",
                secret_headers={SECRET_HEADER: self.secret} if self.secret is not None else {},
                timeout=self.timeout, retries=self.retries, backoff_base=self.backoff_base,
                backoff_cap=self.backoff_cap, never_dropped=NEVER_DROPPED, fresh_http=self.fresh_http,
                key_field="call_id", on_failed=self.on_failed,
            )

    @classmethod
    def from_config(
        cls, http: Any, clock: IReactorTime, config: Any, fresh_http: Any = None,
        on_failed: Callable[[Hashable], None] | None = None,
    ) -> WebhookClient:
        """A client for the ``webhook_*`` settings of an `avr.config.Config`."""
        return cls(http, clock, config.webhook_url, config.webhook_secret, config.webhook_timeout / 1000,
                   config.webhook_retry, fresh_http=fresh_http, on_failed=on_failed)

    def emit(self, uuid: str, type: str, payload: Mapping[str, Any]) -> None:
        """
        Queue event ``type`` of call ``uuid`` for delivery. Never raises, never waits; problems are logged (an unknown
        type or a payload JSON cannot encode is not sent).
        """
        try:
            body = self._envelope(uuid, type, payload)
            if body is not None and self.deliveries is not None:
                self.deliveries.post(uuid, type, _what(uuid, type), body)
        except Exception:
            self.log.failure("Webhook {type} for call {call_id} not sent", type=type, call_id=uuid)

    def call_initiated(self, uuid: str, payload: Mapping[str, Any]) -> Deferred[str | None]:
        """
        Send ``call_initiated`` with ``payload`` and read the reply's ``sts_url``.

        :return: a Deferred firing, within ``timeout`` seconds of this call (retries included), with the reply's
            ``sts_url`` if it is a valid ws/wss/http/https URL, else ``None``. It never fails.
        """
        try:
            body = self._envelope(uuid, "call_initiated", payload)
            if body is None or self.deliveries is None:
                return succeed(None)
            reply = self.deliveries.ask(uuid, "call_initiated", _what(uuid, "call_initiated"), body)
        except Exception:
            self.log.failure("Webhook call_initiated for call {call_id} not sent", call_id=uuid)
            return succeed(None)
        return reply.addCallback(self._sts_url_from_reply, uuid)

    def stop(self) -> Deferred[None]:
        """
        Shut down: accept no more events, drop the undelivered transcriptions, interruptions and digits and cancel
        pending retries; give the other events (``call_started``, ``call_ended``...) one attempt each, within
        `avr.delivery.SHUTDOWN_GRACE`, then abandon them.

        :return: a Deferred firing when no delivery is in progress any more (and no timer of ours is left).
        """
        return self.deliveries.stop() if self.deliveries is not None else succeed(None)

    def _envelope(self, uuid: str, type: str, payload: Mapping[str, Any] | None) -> bytes | None:
        """The JSON envelope of one event, or ``None`` (and a log line) if it cannot be sent."""
        if self.deliveries is None:
            return None
        if type not in WEBHOOK_TYPES:
            self.log.error("Webhook {type} for call {call_id} not sent: unknown event type", type=type, call_id=uuid)
            return None
        if payload is None:
            payload = {}
        if not isinstance(payload, Mapping):
            self.log.error(
                "Webhook {type} for call {call_id} not sent: payload must be an object, not {kind}",
                type=type, call_id=uuid, kind=payload.__class__.__name__,
            )
            return None
        envelope = {"uuid": uuid, "type": type, "timestamp": iso_millis(self.clock.seconds()),
                    "payload": dict(payload)}
        try:
            return json.dumps(envelope, separators=(",", ":"), allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as e:
            self.log.error(
                "Webhook {type} for call {call_id} not sent: payload is not JSON ({error})", type=type, call_id=uuid,
                error=e,
            )
            return None

    def _sts_url_from_reply(self, body: bytes | None, uuid: str) -> str | None:
        try:
            return self._parse_reply(body, uuid)
        except Exception:
            self.log.failure("Reading the call_initiated reply for call {call_id} failed", call_id=uuid)
            return None

    def _parse_reply(self, body: bytes | None, uuid: str) -> str | None:
        if body is None or not body.strip():
            return None
        try:
            reply = decode_json(body)
        except ValueError:
            self.log.info("Webhook response received: {body}", body=_shorten(body.decode("utf-8", "replace")),
                          call_id=uuid)
            self.log.warn("Ignoring the call_initiated reply for call {call_id}: not JSON", call_id=uuid)
            return None
        self.log.info("Webhook response received: {body}", body=_loggable_reply(reply), call_id=uuid)
        if not isinstance(reply, dict) or reply.get("sts_url") is None:
            return None
        url = reply["sts_url"]
        if not is_sts_url(url):
            self.log.warn(
                "Ignoring sts_url in the call_initiated reply for call {call_id}: "
                "not a ws://, wss://, http:// or https:// URL",
                call_id=uuid,
            )
            return None
        self.log.info("Overriding STS URL: {url}", url=redact_url(url), call_id=uuid)
        return url


def _what(uuid: str, type: str) -> str:
    return f"[WEBHOOK][{type.upper()}] {type} for call {uuid}"


def _shorten(text: str) -> str:
    return text if len(text) <= _LOGGED_REPLY_CHARS else text[:_LOGGED_REPLY_CHARS] + "…"


def _loggable_reply(reply: Any) -> str:
    if isinstance(reply, dict) and isinstance(reply.get("sts_url"), str):
        reply = {**reply, "sts_url": redact_url(reply["sts_url"])}
    return _shorten(json.dumps(reply, separators=(",", ":"), ensure_ascii=False))
