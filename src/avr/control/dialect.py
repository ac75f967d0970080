"""
asterisk-api's event dialect, next to avr's: the events its clients (the OpenClaw voice-call plugin) wait for, sent
after the avr event they come from, on ``/events`` and the events webhook; and asterisk-api's own webhook
(``OPENCLAW_WEBHOOK_URL``) with its envelope and event set.

On ``/events`` (`AsteriskApiEvents`), in the same envelope ``{type, callId, channelId, timestamp, data}``:

================================  ==========================================================================
avr event                          asterisk-api event after it
================================  ==========================================================================
``call.state_changed`` answered    ``call.ready`` ``{}`` (the call is answered and in the app)
``playback.finished`` (media)      ``call.playback_finished`` ``{playbackId}``
``playback.started`` (pcm)         ``call.playback_stream_started`` ``{}``
``playback.finished`` (pcm)        ``call.playback_stream_error`` ``{error}`` when it failed, then
                                   ``call.playback_stream_finished`` ``{}``
``recording.finished``             ``call.recording_finished`` ``{name}``
================================  ==========================================================================

``call.speak_*``, ``call.audio_capture_*`` and ``call.transcription`` have asterisk-api's names already.

`OpenClawWebhook` POSTs asterisk-api's ``{"event", "data", "timestamp"}``, ``data`` being the call (as
``GET /calls/:id`` shows it) plus the event's fields, for asterisk-api's events only: ``call.inbound`` (an inbound
call's ``call.created``), ``call.answered``, ``call.ready``, ``call.ended``, ``call.dtmf`` (``digit``),
``call.transcription`` (final results only, ``transcription``) and ``call.speak_finished`` (``text``, ``voice``,
``language``, ``durationSeconds``). It goes through the one delivery engine (`avr.delivery.PostQueue`): in order,
bounded, retried, each attempt timed out -- where asterisk-api fired and forgot.
"""

from __future__ import annotations

import json
from typing import Any

from attrs import define, field
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from avr.config import redact_url
from avr.control.call_registry import CallRegistry
from avr.delivery import MAX_QUEUED, PostQueue
from avr.interfaces import IEventSink

#: asterisk-api's webhook events that are never dropped when the receiver falls behind.
NEVER_DROPPED = frozenset({"call.inbound", "call.ended"})


def asterisk_api_events(event: dict) -> list[dict]:
    """The asterisk-api events that follow the avr ``event`` (see the module docstring); often none."""
    kind = event.get("type")
    data = event.get("data") or {}

    def derived(type_: str, body: dict) -> dict:
        extra = {"channelId": event["channelId"]} if "channelId" in event else {}
        return {"type": type_, "callId": event.get("callId"), **extra, "timestamp": event.get("timestamp"),
                "data": body}

    if kind == "call.state_changed" and data.get("state") == "answered" and "answeredAt" in data:
        return [derived("call.ready", {})]
    if kind == "playback.started" and data.get("kind") == "pcm":
        return [derived("call.playback_stream_started", {})]
    if kind == "playback.finished":
        if data.get("kind") == "media":
            return [derived("call.playback_finished", {"playbackId": data.get("playbackId")})]
        if data.get("kind") == "pcm":
            failed = [derived("call.playback_stream_error", {"error": data.get("error") or "playback failed"})]
            return (failed if data.get("status") == "failed" else []) + [
                derived("call.playback_stream_finished", {})]
    if kind == "recording.finished":
        return [derived("call.recording_finished", {"name": data.get("name")})]
    return []


@implementer(IEventSink)
@define(eq=False)
class AsteriskApiEvents:
    """An `IEventSink` that passes every event on to ``sink``, each followed by its asterisk-api events."""

    sink: IEventSink

    def publish(self, event: dict) -> None:
        """`IEventSink.publish`."""
        self.sink.publish(event)
        for extra in asterisk_api_events(event):
            self.sink.publish(extra)


def webhook_event(event: dict) -> tuple[str, dict] | None:
    """asterisk-api's webhook event for ``event`` (its name and the fields added to the call), or ``None``."""
    kind = event.get("type")
    data = event.get("data") or {}
    if kind == "call.created" and data.get("direction") == "inbound":
        return "call.inbound", {}
    if kind == "call.state_changed" and data.get("state") == "answered" and "answeredAt" in data:
        return "call.answered", {}
    if kind in ("call.ready", "call.ended"):
        return str(kind), {}
    if kind == "call.dtmf":
        return "call.dtmf", {"digit": data.get("digit")}
    if kind == "call.transcription" and data.get("is_final"):
        return "call.transcription", {"transcription": data.get("text")}
    if kind == "call.speak_finished":
        return "call.speak_finished", {k: data.get(k) for k in ("text", "voice", "language", "durationSeconds")}
    return None


@implementer(IEventSink)
@define(eq=False)
class OpenClawWebhook:
    """
    asterisk-api's webhook (``OPENCLAW_WEBHOOK_URL``; see the module docstring). Put it behind
    `AsteriskApiEvents`, which makes the ``call.ready`` it forwards.

    :param http: a treq ``HTTPClient``.
    :param clock: times attempts and backoff.
    :param url: the receiver.
    :param registry: the calls whose JSON is each event's ``data`` (settable: the registry is built on the sink
        this webhook is part of).
    """

    http: Any = field(repr=False)
    clock: IReactorTime = field(repr=False)
    url: str = field(repr=lambda url: repr(redact_url(url)))
    registry: CallRegistry | None = field(default=None, repr=False)
    timeout: float = 3.0
    retries: int = 2
    max_queue: int = MAX_QUEUED
    fresh_http: Any = field(default=None, repr=False)
    deliveries: PostQueue = field(init=False, repr=False)
    log = Logger()

    def __attrs_post_init__(self) -> None:
        self.deliveries = PostQueue(self.http, self.clock, self.url, label="OpenClaw webhook", timeout=self.timeout,
                                    retries=self.retries, max_queued=self.max_queue, never_dropped=NEVER_DROPPED,
                                    fresh_http=self.fresh_http)

    def publish(self, event: dict) -> None:
        """Queue asterisk-api's webhook for ``event``, if it has one (`IEventSink`). Never raises, never blocks."""
        translated = webhook_event(event)
        if translated is None:
            return
        name, fields = translated
        call = self.registry.lookup(event.get("callId")) if self.registry is not None else None
        data = {**(call.to_dict() if call is not None else {"id": event.get("callId")}), **fields}
        try:
            body = json.dumps({"event": name, "data": data, "timestamp": event.get("timestamp")},
                              separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError):
            self.log.failure("OpenClaw webhook: dropping a {event} event that is not JSON", event=name)
            return
        self.deliveries.post(None, name, f"OpenClaw webhook: {name} event", body)

    def stop(self) -> Deferred[None]:
        """Stop delivering (``call.inbound`` and ``call.ended`` get the shutdown grace)."""
        return self.deliveries.stop()
