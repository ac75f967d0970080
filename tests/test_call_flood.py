"""
A flood of ``POST /call`` (issue 8): pending registrations are bounded (``CALL_INIT_MAX``, then 503), and a big
registration writes short log lines (outside strings are clipped, the STS URL is logged once).
"""

from __future__ import annotations

import uuid

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, formatEvent

from avr.admissions import Admissions
from avr.config import load_config
from avr.logtext import LOG_TEXT_LIMIT, clip, redact_url
from avr.registrations import Registrations, RegistrationsFull
from avr.testing.webhooks import FakeWebhooks
from tests.test_http_core import Api, no_connection_expected

U = "935652e3-7c59-4edc-b17f-9646a9c2a265"


def uuids(n: int) -> list[str]:
    return [str(uuid.UUID(int=i + 1)) for i in range(n)]


def test_registrations_are_capped(log_events: list[LogEvent]) -> None:
    """Past max_pending a new UUID is refused; a held one may register again; room comes back when one is taken."""
    regs = Registrations(Admissions(Clock()), 60, no_connection_expected, max_pending=2)
    first, second, third = uuids(3)
    regs.register(first, {}, None, False)
    regs.register(second, {}, None, False)
    for _ in range(3):
        with pytest.raises(RegistrationsFull, match="2 calls are already waiting"):
            regs.register(third, {}, None, False)
    regs.register(second.upper(), {"again": True}, None, False)
    assert len(regs) == 2
    regs.admissions.take(first)
    regs.register(third, {}, None, False)
    assert len(regs) == 2 and third in regs
    warnings = [formatEvent(e) for e in log_events if e["log_level"] == LogLevel.warn]
    assert len(warnings) == 1 and "CALL_INIT_MAX" in warnings[0]  # the first refusal of a run, not every one
    assert any("3 refused while full" in formatEvent(e) for e in log_events)


def test_call_answers_503_when_full_without_asking_the_webhook() -> None:
    """POST /call is refused with a JSON 503 and Retry-After before call_initiated is sent; nothing is held."""
    webhooks = FakeWebhooks()
    api = Api(webhooks=webhooks)
    api.registrations.max_pending = 2
    for call in uuids(2):
        assert api.call({"uuid": call, "payload": {}})[0] == 200
    status, headers, body = api.answer(api.send("POST", "/call", {"uuid": U, "payload": {"a": "1"}}))
    assert status == 503 and "CALL_INIT_MAX" in body["error"] and body["limit"] == 2
    assert headers.getRawHeaders("retry-after") == ["1"]
    assert [e[0] for e in webhooks.of_type("call_initiated")] == uuids(2)
    assert len(api.registrations) == 2 and U not in api.registrations


def test_the_limit_is_a_setting() -> None:
    """CALL_INIT_MAX, default 1000."""
    assert load_config({}).call_init_max == 1000
    assert load_config({"CALL_INIT_MAX": "5"}).call_init_max == 5


def test_a_60_kb_registration_writes_short_log_lines(log_events: list[LogEvent]) -> None:
    """Every log line of one 60 KB POST /call is short: the STS URL (60 KB of parameters) is clipped, logged once."""
    api = Api(sts_url="ws://sts.example/agent?token=t0ken")
    payload = {f"field{i}": "x" * 1000 for i in range(60)}
    assert api.call({"uuid": U, "payload": payload})[0] == 200
    lines = [formatEvent(e) for e in log_events]
    assert lines and max(len(line) for line in lines) < 2 * LOG_TEXT_LIMIT
    assert sum("ws://sts.example/agent?token=***" in line for line in lines) == 1
    api.assert_clean()


def test_clip() -> None:
    """Short text is kept; long text is cut and says how long it was; URLs are clipped after redaction."""
    assert clip("short") == "short"
    assert clip("x" * 1000, 10) == "xxxxxxxxxx... (1000 characters)"
    assert clip(b"\x00") == "b'\\x00'"
    url = redact_url("wss://u:p@h/s?token=abc&" + "a=1&" * 200)
    assert url.startswith("wss://h/s?token=***&a=1") and url.endswith("(820 characters)")
