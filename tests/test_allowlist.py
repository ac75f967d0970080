"""
asterisk-api's allowlist (avr.allowlist, avr.http.allowlist): its matching rules, the file and its hot reload on an
injected clock, and the routes. A file that cannot be used never opens the gates (D16).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from klein import Klein
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel

from avr.allowlist import (
    POLL_INTERVAL,
    Allowlist,
    AllowlistError,
    AllowlistRules,
    number_in_endpoint,
    parse_allowlist,
)
from avr.http.allowlist import AllowlistRoutes
from avr.http.json import install_error_handlers

RULES = AllowlistRules(inbound=("6596542555",), outbound=("6596542555", "1001"))


@pytest.mark.parametrize(("endpoint", "number"), [
    ("PJSIP/6596542555@trunk", "6596542555"),
    ("PJSIP/trunk-provider/6596542555", "6596542555"),
    ("SIP/+65 9654 2555@provider", "9654"),  # no run of 7: the longest (first) run, as the caller wrote it
    ("PJSIP/1234567@trunk12345678", "12345678"),  # the longest run of 7 or more
    ("PJSIP/1001", "1001"),
    ("PJSIP/alice", ""),
])
def test_number_in_endpoint(endpoint: str, number: str) -> None:
    """The longest run of 7+ digits, else the longest run (asterisk-api had only the first rule)."""
    assert number_in_endpoint(endpoint) == number


@pytest.mark.parametrize(("caller", "allowed"), [
    ("6596542555", True), ("+65 9654-2555", True), ("6596542556", False), ("", False), (None, False),
])
def test_inbound_matching(caller: str | None, allowed: bool) -> None:
    """Digits only, exact match; no caller number is refused while the list is not empty."""
    assert RULES.inbound_allowed(caller) is allowed


@pytest.mark.parametrize(("endpoint", "allowed"), [
    ("PJSIP/6596542555@trunk", True), ("PJSIP/6596542556@trunk", False), ("PJSIP/1001", True),
    ("PJSIP/1002", False), ("PJSIP/alice", False),
])
def test_outbound_matching(endpoint: str, allowed: bool) -> None:
    """The number found in the endpoint must be listed (a listed short extension is allowed: D16)."""
    assert RULES.outbound_allowed(endpoint) is allowed


def test_empty_lists_allow_everything() -> None:
    """asterisk-api's open mode: an empty list allows every number in its direction, even none."""
    rules = AllowlistRules(inbound=(), outbound=("1",))
    assert rules.inbound_allowed("") and rules.inbound_allowed("42")
    assert AllowlistRules().outbound_allowed("PJSIP/alice")
    closed = AllowlistRules(closed=True)
    assert not closed.inbound_allowed("42") and not closed.outbound_allowed("PJSIP/1001")


def test_parse_the_asterisk_api_file() -> None:
    """The shape asterisk-api ships: $schema and description ignored, numbers kept as digits, duplicates once."""
    data = json.dumps({"$schema": "./allowlist.schema.json", "description": "Numbers without '+' prefix.",
                       "inbound": ["6596542555", "+65 9654 2555"], "outbound": ["6596542555"]}).encode()
    assert parse_allowlist(data) == AllowlistRules(("6596542555",), ("6596542555",))
    assert parse_allowlist(b"{}") == AllowlistRules()


@pytest.mark.parametrize(("data", "problem"), [
    (b"{not json", "not JSON"),
    (b"[]", "must be a JSON object"),
    (b'{"inbound": "6596542555"}', "inbound must be a list"),
    (b'{"outbound": [6596542555]}', "outbound[0] must be a string"),
    (b'{"inbound": ["abc"]}', "inbound[0] ('abc') holds no digits"),
    (b"\xff\xfe", "not JSON"),
])
def test_parse_refuses_what_asterisk_api_turned_into_open_mode(data: bytes, problem: str) -> None:
    """What asterisk-api read as empty lists (allow all) is an error here."""
    with pytest.raises(AllowlistError, match=problem.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        parse_allowlist(data)


def _write(path: Path, inbound: list[Any], outbound: list[Any] | None = None) -> None:
    path.write_text(json.dumps({"inbound": inbound, "outbound": outbound or []}))


def _errors(log_events: list[LogEvent]) -> list[LogEvent]:
    return [e for e in log_events if e.get("log_level") == LogLevel.error and "Allowlist" in e.get("log_format", "")]


def test_hot_reload_on_the_clock(tmp_path: Path) -> None:
    """A change is read at the next look (every 5 s on the injected clock), not before."""
    path, clock = tmp_path / "allowlist.json", Clock()
    _write(path, ["111"])
    allowlist = Allowlist(str(path), clock)
    allowlist.start()
    assert allowlist.rules.inbound == ("111",) and allowlist.loaded
    _write(path, ["222"])
    clock.advance(POLL_INTERVAL - 0.1)
    assert allowlist.rules.inbound == ("111",)
    clock.advance(0.1)
    assert allowlist.rules.inbound == ("222",)
    allowlist.stop()
    _write(path, ["333"])
    clock.advance(POLL_INTERVAL * 3)
    assert allowlist.rules.inbound == ("222",) and not clock.getDelayedCalls()


@pytest.mark.logs_errors("Allowlist .* not JSON")
def test_a_bad_file_keeps_the_lists_and_logs_one_error(tmp_path: Path, log_events: list[LogEvent]) -> None:
    """Broken JSON after a good file: the good lists stay, one error line (not one per look); fixed: read again."""
    path, clock = tmp_path / "allowlist.json", Clock()
    _write(path, ["111"], ["6596542555"])
    allowlist = Allowlist(str(path), clock)
    allowlist.start()
    path.write_text('{"inbound": ["111",')
    clock.advance(POLL_INTERVAL)
    clock.advance(POLL_INTERVAL)
    assert allowlist.rules == AllowlistRules(("111",), ("6596542555",))
    assert allowlist.error is not None and allowlist.error.startswith("not JSON")
    assert len(_errors(log_events)) == 1
    assert not allowlist.rules.inbound_allowed("222")  # still closed to numbers not listed
    _write(path, ["222"])
    clock.advance(POLL_INTERVAL)
    assert allowlist.rules.inbound == ("222",) and allowlist.error is None


@pytest.mark.logs_errors("Allowlist .* has disappeared")
def test_a_file_that_disappears_keeps_the_lists(tmp_path: Path, log_events: list[LogEvent]) -> None:
    """asterisk-api reloaded a deleted file as empty lists (everything allowed); here the lists stay."""
    path, clock = tmp_path / "allowlist.json", Clock()
    _write(path, ["111"])
    allowlist = Allowlist(str(path), clock)
    allowlist.start()
    path.unlink()
    clock.advance(POLL_INTERVAL)
    assert allowlist.rules.inbound == ("111",) and allowlist.error == "has disappeared"
    with pytest.raises(AllowlistError, match="has disappeared; the previous lists are kept"):
        allowlist.reload()
    assert len(_errors(log_events)) == 1


def test_missing_at_start_is_open_and_a_file_written_later_is_read(tmp_path: Path) -> None:
    """No file: everything allowed (asterisk-api); a file written later is read (asterisk-api never watched it)."""
    path, clock = tmp_path / "allowlist.json", Clock()
    allowlist = Allowlist(str(path), clock)
    allowlist.start()
    assert allowlist.rules == AllowlistRules() and not allowlist.loaded and allowlist.error is None
    _write(path, ["111"])
    clock.advance(POLL_INTERVAL)
    assert allowlist.rules.inbound == ("111",)


@pytest.mark.logs_errors("Allowlist .* not JSON")
def test_a_bad_file_at_start_refuses_every_number(tmp_path: Path) -> None:
    """No previous lists to keep: closed (nothing passes) until a good file is written."""
    path, clock = tmp_path / "allowlist.json", Clock()
    path.write_text("inbound: 111")
    allowlist = Allowlist(str(path), clock)
    allowlist.start()
    assert allowlist.rules.closed and not allowlist.rules.inbound_allowed("111")
    assert not allowlist.rules.outbound_allowed("PJSIP/6596542555")
    _write(path, [])
    clock.advance(POLL_INTERVAL)
    assert not allowlist.rules.closed and allowlist.rules.inbound_allowed("111")


# -- the routes ---------------------------------------------------------------------------------------------------


def _client(allowlist: Allowlist, api_key: str | None = None) -> StubTreq:
    app = Klein()
    install_error_handlers(app)
    AllowlistRoutes(allowlist, api_key).install(app)
    return StubTreq(app.resource())


def _call(client: StubTreq, method: str, url: str, **kwargs: Any) -> tuple[int, dict]:
    response = client.request(method, url, **kwargs)
    client.flush()
    result = response.result  # type: ignore[attr-defined]
    body = client.content(result)
    client.flush()
    return result.code, json.loads(body.result)  # type: ignore[attr-defined]


def test_get_allowlist_and_reload(tmp_path: Path) -> None:
    """GET /allowlist lists the numbers with asterisk-api's note; POST /allowlist/reload reads the file now."""
    path = tmp_path / "allowlist.json"
    _write(path, ["111"], ["6596542555"])
    allowlist = Allowlist(str(path), Clock())
    allowlist.start()
    client = _client(allowlist)
    status, body = _call(client, "GET", "http://avr/allowlist")
    assert status == 200 and body["inbound"] == ["111"] and body["outbound"] == ["6596542555"]
    assert body["note"] == "Empty arrays = allow all (open mode)" and body["error"] is None
    _write(path, ["222"])
    status, body = _call(client, "POST", "http://avr/allowlist/reload")
    assert (status, body) == (200, {"status": "reloaded", "inbound": ["222"], "outbound": []})


@pytest.mark.logs_errors("Allowlist .* not JSON")
def test_reload_of_a_bad_file_is_422_with_the_kept_lists(tmp_path: Path) -> None:
    """asterisk-api answered 200 with empty lists (and allowed everything); here 422, the lists in force shown."""
    path = tmp_path / "allowlist.json"
    _write(path, ["111"])
    allowlist = Allowlist(str(path), Clock())
    allowlist.start()
    path.write_text("{")
    status, body = _call(_client(allowlist), "POST", "http://avr/allowlist/reload")
    assert status == 422 and body["inbound"] == ["111"]
    assert "not JSON" in body["error"] and "the previous lists are kept" in body["error"]


def test_allowlist_routes_need_the_key(tmp_path: Path) -> None:
    """Both routes are protected like the rest of the API."""
    client = _client(Allowlist(str(tmp_path / "none.json"), Clock()), api_key="k")
    assert _call(client, "GET", "http://avr/allowlist")[0] == 401
    assert _call(client, "POST", "http://avr/allowlist/reload")[0] == 401
    assert _call(client, "GET", "http://avr/allowlist", headers={"Authorization": "Bearer k"})[0] == 200

