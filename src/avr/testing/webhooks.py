"""
A scriptable webhook receiver for tests: records what avr sends, checks it like avr-app's strict receiver does, and
answers as told (status, body, delay, or never).

`WebhookSink` is a plain ``twisted.web`` resource: wrap it in ``treq.testing.StubTreq`` for in-memory tests, or in a
``Site`` on a loopback port for integration tests.
"""

from __future__ import annotations

import json
import re
from collections import deque
from datetime import datetime
from typing import Any, Mapping

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from avr.interfaces import IWebhooks
from avr.webhooks import SECRET_HEADER, WEBHOOK_TYPES

#: The keys of a webhook envelope, no more, no less.
ENVELOPE_KEYS = frozenset({"uuid", "type", "timestamp", "payload"})

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z\Z")


def envelope_violations(envelope: Any) -> list[str]:
    """
    What avr-app's webhook receiver would refuse in ``envelope`` (empty if nothing): the keys must be exactly ``uuid``,
    ``type``, ``timestamp`` and ``payload``; ``uuid`` a UUID; ``type`` one of the six event types; ``timestamp`` like
    ``2026-01-01T12:00:00.000Z``; ``payload`` an object.
    """
    if not isinstance(envelope, dict):
        return ["body is not a JSON object"]
    problems = [f"property {key} should not exist" for key in sorted(set(envelope) - ENVELOPE_KEYS)]
    problems += [f"{key} is missing" for key in sorted(ENVELOPE_KEYS - set(envelope))]
    uuid = envelope.get("uuid")
    if "uuid" in envelope and not (isinstance(uuid, str) and _UUID.match(uuid)):
        problems.append(f"uuid must be a UUID, got {uuid!r}")
    kind = envelope.get("type")
    if "type" in envelope and kind not in WEBHOOK_TYPES:
        problems.append(f"type must be one of {', '.join(WEBHOOK_TYPES)}, got {kind!r}")
    stamp = envelope.get("timestamp")
    if "timestamp" in envelope and not _is_timestamp(stamp):
        problems.append(f"timestamp must be ISO-8601 UTC like 2026-01-01T12:00:00.000Z, got {stamp!r}")
    if "payload" in envelope and not isinstance(envelope["payload"], dict):
        problems.append(f"payload must be an object, got {envelope['payload']!r}")
    return problems


def _is_timestamp(value: Any) -> bool:
    if not isinstance(value, str) or not _TIMESTAMP.match(value):
        return False
    try:
        datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ")
    except ValueError:
        return False
    return True


@frozen
class WebhookReply:
    """
    How the sink answers one webhook.

    :ivar status: HTTP status.
    :ivar body: response body (JSON).
    :ivar delay: seconds (on the sink's clock) before answering.
    :ivar answer: ``False`` = never answer (the request stays open until the client gives up).
    """

    status: int = 200
    body: bytes = b'{"status":"ok"}'
    delay: float = 0.0
    answer: bool = True

    @classmethod
    def json(cls, obj: Any, status: int = 200, delay: float = 0.0) -> WebhookReply:
        """A reply whose body is ``obj`` as JSON."""
        return cls(status, json.dumps(obj).encode("utf-8"), delay)

    @classmethod
    def never(cls) -> WebhookReply:
        """A reply that never comes."""
        return cls(answer=False)


@frozen
class ReceivedWebhook:
    """
    One request the sink received.

    :ivar received_at: the sink clock's ``seconds()`` at arrival.
    :ivar headers: lower-case header name → values.
    :ivar envelope: the body parsed as JSON (``None`` if it is not JSON).
    :ivar violations: what a strict receiver refuses in it (see `envelope_violations`), plus a missing or wrong
        secret and a wrong ``Content-Type``.
    """

    received_at: float
    method: str
    path: str
    headers: Mapping[str, tuple[str, ...]]
    body: bytes
    envelope: Any
    violations: tuple[str, ...]

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` (any case), or ``None``."""
        values = self.headers.get(name.lower())
        return values[-1] if values else None

    @property
    def type(self) -> Any:
        """The envelope's ``type`` (``None`` if absent)."""
        return self.envelope.get("type") if isinstance(self.envelope, dict) else None

    @property
    def uuid(self) -> Any:
        """The envelope's ``uuid`` (``None`` if absent)."""
        return self.envelope.get("uuid") if isinstance(self.envelope, dict) else None

    @property
    def payload(self) -> Any:
        """The envelope's ``payload`` (``None`` if absent)."""
        return self.envelope.get("payload") if isinstance(self.envelope, dict) else None


class WebhookSink(Resource):
    """
    Receives webhooks (``POST`` on any path), records them, checks them, and answers as scripted.

    Like avr-app's receiver, it answers 401 when ``secret`` is set and the ``X-AVR-WEBHOOK-SECRET`` header differs,
    and (with ``strict``) 400 when the envelope is not exactly right; otherwise it answers with the reply scripted for
    the event's type (default: 200 ``{"status":"ok"}`` at once).

    :param clock: stamps arrivals and times delayed replies.
    :param secret: the secret the receiver expects, or ``None`` to accept any.
    :param strict: refuse malformed envelopes with 400, as avr-app does.
    """

    isLeaf = True

    def __init__(self, clock: IReactorTime, secret: str | None = None, strict: bool = True) -> None:
        super().__init__()
        self.clock = clock
        self.secret = secret
        self.strict = strict
        #: Every request received, in arrival order.
        self.received: list[ReceivedWebhook] = []
        self._scripts: dict[str | None, deque[WebhookReply]] = {}
        self._waiters: list[tuple[int, Deferred[list[ReceivedWebhook]]]] = []
        self._open: dict[Request, IDelayedCall | None] = {}

    def script(self, type: str | None, *replies: WebhookReply) -> None:
        """
        Answer events of ``type`` (``None``: every type without a script of its own) with ``replies``, one per request
        in order; the last one answers all further requests.
        """
        if not replies:
            raise ValueError("script() needs at least one reply")
        self._scripts[type] = deque(replies)

    @property
    def violations(self) -> list[str]:
        """Every violation recorded so far, each prefixed with the event's type."""
        return [f"{w.type}: {v}" for w in self.received for v in w.violations]

    def of_type(self, type: str) -> list[ReceivedWebhook]:
        """The received webhooks of event ``type``."""
        return [w for w in self.received if w.type == type]

    def when_received(self, count: int) -> Deferred[list[ReceivedWebhook]]:
        """A Deferred firing with the first ``count`` webhooks as soon as that many have arrived."""
        if len(self.received) >= count:
            return succeed(self.received[:count])
        d: Deferred[list[ReceivedWebhook]] = Deferred()
        self._waiters.append((count, d))
        return d

    @property
    def pending(self) -> int:
        """How many requests are still waiting for their (delayed or never-coming) answer."""
        return len(self._open)

    def answer_pending(self, reply: WebhookReply = WebhookReply()) -> int:
        """Answer every open request now with ``reply`` (its delay ignored); return how many were answered."""
        opened = list(self._open)
        for request in opened:
            self._answer(request, reply)
        return len(opened)

    def close(self) -> None:
        """Cancel delayed answers and drop the connections of unanswered requests (test clean-up)."""
        opened, self._open = self._open, {}
        for request, timer in opened.items():
            if timer is not None and timer.active():
                timer.cancel()
            request.loseConnection()

    def render_POST(self, request: Request) -> bytes | int:
        """Record the webhook and answer it, now, later or never."""
        record = self._record(request)
        self.received.append(record)
        self._wake_waiters()
        if self.secret is not None and record.header(SECRET_HEADER) != self.secret:
            return self._reply_now(request, WebhookReply.json({"message": "Unauthorized", "statusCode": 401}, 401))
        if self.strict and record.violations:
            body = {"message": list(record.violations), "error": "Bad Request", "statusCode": 400}
            return self._reply_now(request, WebhookReply.json(body, 400))
        reply = self._next_reply(record.type)
        if not reply.answer:
            self._watch(request, None)
            return NOT_DONE_YET
        if reply.delay > 0:
            self._watch(request, self.clock.callLater(reply.delay, self._answer, request, reply))
            return NOT_DONE_YET
        return self._reply_now(request, reply)

    def _record(self, request: Request) -> ReceivedWebhook:
        headers: dict[str, tuple[str, ...]] = {}
        for name, values in request.requestHeaders.getAllRawHeaders():
            headers[name.decode("latin-1").lower()] = tuple(v.decode("latin-1") for v in values)
        body = request.content.read() if request.content is not None else b""
        try:
            envelope = json.loads(body.decode("utf-8"))
        except ValueError:
            envelope = None
        violations = envelope_violations(envelope)
        content_type = headers.get("content-type", ("",))[-1]
        if content_type.split(";")[0].strip().lower() != "application/json":
            violations.append(f"Content-Type must be application/json, got {content_type!r}")
        if self.secret is not None and headers.get(SECRET_HEADER.lower(), (None,))[-1] != self.secret:
            violations.append(f"{SECRET_HEADER} missing or wrong")
        return ReceivedWebhook(
            received_at=self.clock.seconds(),
            method=request.method.decode("ascii"),
            path=request.path.decode("utf-8", "replace"),
            headers=headers,
            body=body,
            envelope=envelope,
            violations=tuple(violations),
        )

    def _next_reply(self, type: Any) -> WebhookReply:
        script = self._scripts.get(type) if isinstance(type, str) else None
        if script is None:
            script = self._scripts.get(None)
        if not script:
            return WebhookReply()
        return script.popleft() if len(script) > 1 else script[0]

    def _wake_waiters(self) -> None:
        ready = [(n, d) for n, d in self._waiters if len(self.received) >= n]
        self._waiters = [(n, d) for n, d in self._waiters if len(self.received) < n]
        for n, d in ready:
            d.callback(self.received[:n])

    def _watch(self, request: Request, timer: IDelayedCall | None) -> None:
        self._open[request] = timer
        request.notifyFinish().addErrback(lambda _: self._forget(request))

    def _forget(self, request: Request) -> None:
        timer = self._open.pop(request, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _answer(self, request: Request, reply: WebhookReply) -> None:
        self._forget(request)
        request.write(self._reply_now(request, reply))
        request.finish()

    @staticmethod
    def _reply_now(request: Request, reply: WebhookReply) -> bytes:
        request.setResponseCode(reply.status)
        request.setHeader(b"content-type", b"application/json")
        return reply.body



@implementer(IWebhooks)
@define(eq=False)
class FakeWebhooks:
    """
    An in-memory `IWebhooks` for tests of the parts that emit events: records every event and answers
    ``call_initiated`` with ``sts_url`` at once.

    :ivar events: ``(uuid, type, payload)`` of every event, ``call_initiated`` included, in order.
    """

    sts_url: str | None = None
    events: list[tuple[str, str, dict[str, Any]]] = field(factory=list)

    def emit(self, uuid: str, type: str, payload: dict[str, Any]) -> None:
        """Record the event."""
        self.events.append((uuid, type, dict(payload)))

    def call_initiated(self, uuid: str, payload: dict[str, Any]) -> Deferred[str | None]:
        """Record the event and fire with `sts_url`."""
        self.events.append((uuid, "call_initiated", dict(payload)))
        return succeed(self.sts_url)

    def of_type(self, type: str) -> list[tuple[str, str, dict[str, Any]]]:
        """The recorded events of ``type``."""
        return [e for e in self.events if e[1] == type]

    def types(self, uuid: str) -> list[str]:
        """The types of the events recorded for call ``uuid``, in order."""
        return [t for u, t, _ in self.events if u == uuid]
