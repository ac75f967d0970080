"""
Tests for avr.logs (the level filter, the text and JSON lines) and avr.call_summary (one line per ended call), all in
memory on a Clock.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import ILogFilterPredicate, LogEvent, LogLevel, Logger, PredicateResult, formatEvent
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from avr.admissions import Admissions
from avr.call_summary import CallSummaries
from avr.calls import CallManager
from avr.control.call_registry import CallRegistry
from avr.control.records import INBOUND, OUTBOUND, CallRecord
from avr.control.tasks import TaskGroup
from avr.delivery import PostQueue
from avr.interfaces import ICallObserver
from avr.logs import LevelFilter, json_line, local_millis, log_observer, text_line
from avr.playout import FrameTicker
from avr.testing.webhooks import WebhookReply, WebhookSink
from ari_fakes import FakeSink
from fakes import FakeLeg, FakeStsConnector, RecordingObserver

U1 = "935652e3-7c59-4edc-b17f-9646a9c2a265"
#: 2026-01-01T12:00:00.250Z
T = 1767268800.25


def event(format: str, level: LogLevel = LogLevel.info, namespace: str = "avr.calls.Call", **fields: Any) -> LogEvent:
    """An event as `twisted.logger.Logger` emits it."""
    return {"log_format": format, "log_level": level, "log_namespace": namespace, "log_time": T,
            "log_source": None, "log_logger": None, **fields}


def factory_line(verb: str) -> LogEvent:
    """Twisted's own line for each outgoing HTTP connection's factory (a pair per webhook)."""
    return event(verb + " factory {factory!r}", namespace="twisted.web.client._HTTP11ClientFactory",
                 factory=object())


# -- levels --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("level", "shown"), [
    ("debug", ["debug", "chatter", "chatter", "info", "warn", "error", "critical"]),
    ("info", ["info", "warn", "error", "critical"]),
    ("warn", ["warn", "error", "critical"]),
    ("error", ["error", "critical"]),
])
def test_the_level_filter_shows_what_is_at_the_level_or_above(level: str, shown: list[str]) -> None:
    """``log.failure`` lines (critical) always show; Twisted's factory lines count as debug, not info."""
    events = [event("debug", LogLevel.debug), factory_line("Starting"), factory_line("Stopping"),
              event("info"), event("warn", LogLevel.warn), event("error", LogLevel.error),
              event("critical", LogLevel.critical)]
    verifyObject(ILogFilterPredicate, LevelFilter.named(level))
    verdicts = [LevelFilter.named(level)(e) for e in events]
    assert set(verdicts) <= {PredicateResult.maybe, PredicateResult.no}
    names = ["chatter" if "factory" in e["log_format"] else e["log_format"] for e in events]
    assert [n for n, v in zip(names, verdicts, strict=True) if v is PredicateResult.maybe] == shown


# -- text ------------------------------------------------------------------------------------------------------------


def test_a_text_line_has_milliseconds_level_namespace_and_message() -> None:
    line = text_line(event("Call started: {call_id} (STS: {sts})", call_id=U1, sts="echo"))
    assert line == f"{local_millis(T)} INFO  [avr.calls.Call] Call started: {U1} (STS: echo)\n"
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(T)) + ".250" + time.strftime("%z", time.localtime(T))
    assert local_millis(T) == stamp


def test_a_text_line_names_the_call_when_its_message_does_not() -> None:
    """The whole UUID, once: appended when the message lacks it, not repeated when it has it."""
    assert text_line(event("Webhook response received: {body}", body="{}", call_id=U1)).endswith(
        f"Webhook response received: {{}} [call {U1}]\n")
    assert text_line(event("DTMF 5 on call {call_id}", call_id=U1)).count(U1) == 1
    assert "[call" not in text_line(event("Server started"))


def test_a_text_line_of_a_failure_has_its_traceback_after_it() -> None:
    try:
        raise ValueError("broken")
    except ValueError:
        failure = Failure()
    line = text_line(event("Call {call_id}: carrying out hangup failed", LogLevel.critical, call_id=U1,
                           log_failure=failure))
    first, *rest = line.rstrip("\n").split("\n")
    assert first.endswith(f"CRITICAL [avr.calls.Call] Call {U1}: carrying out hangup failed")
    assert rest[0].startswith("Traceback") and rest[-1] == "builtins.ValueError: broken"


def test_a_legacy_line_is_named_by_its_system() -> None:
    legacy = event("{log_text}", namespace="log_legacy", log_text="(TCP Port 5001 Closed)", log_system="-",
                   message=("(TCP Port 5001 Closed)",), isError=0, system="-")
    assert "INFO  [twisted] (TCP Port 5001 Closed)" in text_line(legacy)
    assert "[HTTP11ClientProtocol,client] x" in text_line({**legacy, "log_text": "x",
                                                          "log_system": "HTTP11ClientProtocol,client"})


# -- JSON ------------------------------------------------------------------------------------------------------------


def test_a_json_line_is_one_object_with_the_plain_fields() -> None:
    """Plain values are fields of their own; objects and non-finite numbers are not (they are in the message)."""
    line = json_line(event("Call summary {call_id}: {duration:.3f} s {request!r}", call_id=U1, duration=1.5,
                           frames_in=3, ok=True, none=None, request=object(), odd=float("nan")))
    assert line.endswith("\n") and line.count("\n") == 1
    record = json.loads(line)
    assert record.pop("message").startswith(f"Call summary {U1}: 1.500 s <object object at")
    assert record == {"time": "2026-01-01T12:00:00.250Z", "level": "info", "namespace": "avr.calls.Call",
                      "call_id": U1, "duration": 1.5, "frames_in": 3, "ok": True, "none": None}


def test_a_json_line_keeps_its_own_keys_and_carries_the_traceback() -> None:
    try:
        raise ValueError("line one\nline two")
    except ValueError:
        failure = Failure()
    fields = {"time": "not the time", "level": "not the level", "traceback": "not the traceback"}
    record = json.loads(json_line({**event("{time} {level}", LogLevel.critical, log_failure=failure), **fields}))
    assert (record["time"], record["level"]) == ("2026-01-01T12:00:00.250Z", "critical")
    assert record["message"] == "not the time not the level"
    assert record["traceback"].startswith("Traceback") and "line one\nline two" in record["traceback"]


def test_the_observer_writes_the_lines_that_pass(log_events: list[LogEvent]) -> None:
    """`log_observer` end to end, with a real Logger: JSON lines at info, no debug line, no factory line."""
    out = io.StringIO()
    observer = log_observer(out, "info", "json")
    log = Logger(namespace="avr.test", observer=observer)
    log.debug("hidden")
    log.info("Starting factory {factory!r}", factory=object())
    log.info("Call started: {call_id}", call_id=U1)
    log.warn("Careful")
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["level"], r["message"]) for r in records] == [("info", f"Call started: {U1}"), ("warn", "Careful")]


# -- the end-of-call summary ---------------------------------------------------------------------------------------


class World:
    """A CallManager whose every call is summarised, on a Clock, STS sessions opened by the test."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(T)
        self.sts = FakeStsConnector()
        self.summaries = CallSummaries(self.clock, "echo")
        self.manager = CallManager(clock=self.clock, connector=self.sts, observer=RecordingObserver(),
                                   ticker=FrameTicker(self.clock), admissions=Admissions(self.clock),
                                   sts_url="wss://sts.example/agent?token=s3cret", every_call=self.summaries)


def summaries(log_events: list[LogEvent]) -> list[LogEvent]:
    return [e for e in log_events if e.get("log_namespace") == "avr.call_summary.CallSummaries"]


def test_one_summary_line_when_the_caller_hangs_up(log_events: list[LogEvent]) -> None:
    world = World()
    verifyObject(ICallObserver, world.summaries)
    leg = FakeLeg(U1, world.clock)
    call = world.manager.attach(leg)
    world.sts.open(U1)
    for _ in range(5):
        call.caller_audio(0x10, bytes(320))
    world.clock.advance(12.3456)
    world.summaries.webhook_failed(U1)
    world.summaries.webhook_failed("another call")
    call.caller_gone("hangup frame")
    [line] = summaries(log_events)
    fields = {k: v for k, v in line.items() if not k.startswith("log_")}
    assert fields == {
        "call_id": U1, "kind": "audiosocket", "duration": 12.346, "ended_by": "caller",
        "reason": "Asterisk: hangup frame", "end_reason": "hangup", "frames_in": 5, "frames_out": 0, "late_frames": 0,
        "sts_url": "wss://sts.example/agent?token=***", "sts_mode": "websocket", "sts_connect_failures": 0,
        "webhook_failures": 1,
    }
    assert formatEvent(line) == (
        f"Call summary {U1}: 12.346 s, ended by caller (Asterisk: hangup frame); frames in 5, out 0, 0 late; "
        "STS wss://sts.example/agent?token=*** (websocket), 0 connect failure(s); 1 webhook failure(s)")
    world.summaries.webhook_failed(U1)  # the call_ended webhook failing after the summary: nothing kept
    assert world.summaries._webhook_failures == {}


@pytest.mark.logs_errors("STS connection failed for call")
def test_the_summary_of_a_call_whose_sts_cannot_be_reached(log_events: list[LogEvent]) -> None:
    """Every call is summarised, also one started with its own observer (an agent on an ARI call)."""
    world = World()
    world.manager.start_call(FakeLeg(U1, world.clock), None, observer=RecordingObserver())
    world.sts.refuse(U1)
    [line] = summaries(log_events)
    assert (line["ended_by"], line["end_reason"], line["sts_connect_failures"]) == ("avr", "sts_unreachable", 1)
    assert (line["sts_url"], line["sts_mode"], line["duration"]) == (None, "echo", 0.0)


@pytest.mark.logs_errors(r"not delivered after 1 attempt\(s\)")
def test_a_call_webhook_that_fails_is_counted_and_logged_under_the_call(log_events: list[LogEvent]) -> None:
    """`PostQueue` tells its ``on_failed`` the key of each event given up on, and logs the key as ``call_id``."""
    from treq.testing import StubTreq

    clock = Clock()
    sink = WebhookSink(clock, strict=False)
    sink.script(None, WebhookReply(500))
    failed: list[object] = []
    http = StubTreq(sink)
    deliveries = PostQueue(http, clock, "http://receiver.example/hooks", key_field="call_id",
                           on_failed=failed.append)
    deliveries.post(U1, "call_started", f"call_started for call {U1}", b"{}")
    http.flush()
    assert failed == [U1]
    [error] = [e for e in log_events if e.get("log_level") == LogLevel.error]
    assert error["call_id"] == U1 and "not delivered after 1 attempt(s)" in formatEvent(error)


def test_an_ari_call_ends_with_a_summary_line_too(log_events: list[LogEvent]) -> None:
    """A call in the Stasis app without an agent: how long, whether answered, who ended it and why."""
    clock = Clock()
    registry = CallRegistry(clock, FakeSink(), TaskGroup(clock))
    inbound = CallRecord("c1", "chan-1", INBOUND, 0.0)
    outbound = CallRecord("c2", "chan-2", OUTBOUND, 0.0)
    for call in (inbound, outbound):
        registry.add(call)
    clock.advance(3)
    registry.answered(inbound)
    clock.advance(60.5)
    registry.end_call(inbound, 16, "Normal Clearing")
    outbound.requested_reason = "busy"
    registry.end_call(outbound, 16, "Normal Clearing")
    lines = [e for e in log_events if "Call summary" in formatEvent(e)]
    assert [formatEvent(e) for e in lines] == [
        ("Call summary c1: inbound ARI call, 63.500 s (60.500 s answered), ended by asterisk (cause 16: Normal "
         "Clearing)"),
        "Call summary c2: outbound ARI call, 63.500 s (not answered), ended by avr (busy)",
    ]
    assert [(e["call_id"], e["kind"], e["ended_by"], e["cause"], e["answered_at"]) for e in lines] == [
        ("c1", "ari", "asterisk", 16, "1970-01-01T00:00:03.000Z"), ("c2", "ari", "avr", 16, None)]
