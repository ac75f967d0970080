"""Tests for avr.urls: building the per-call STS URL exactly as avr-core does, and validating STS URLs."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from avr.urls import is_sts_url, query_value, sts_url_with_params

SEED_PAYLOAD = {"from": "2000", "to": "5001", "uniqueid": "1770758888.32", "channel": "PJSIP/2000-00000013"}


def test_seed_example_exactly():
    """The avr-core documentation's example is reproduced character for character."""
    assert (
        sts_url_with_params("ws://localhost:6030", SEED_PAYLOAD)
        == "ws://localhost:6030/?from=2000&to=5001&uniqueid=1770758888.32&channel=PJSIP%2F2000-00000013"
    )


def test_existing_query_is_kept_before_payload_params():
    """A webhook override with its own query keeps it; payload params follow, duplicates included."""
    url = sts_url_with_params("ws://other:7000?uuid=U", {"from": "2000", "uuid": "X"})
    assert url == "ws://other:7000/?uuid=U&from=2000&uuid=X"


def test_path_is_kept_and_bare_origin_gains_slash():
    """Only a bare origin gains '/'; an existing path is untouched; an empty payload still normalises."""
    assert sts_url_with_params("wss://sts.example/agent/v1", {"a": "1"}) == "wss://sts.example/agent/v1?a=1"
    assert sts_url_with_params("ws://localhost:6030", {}) == "ws://localhost:6030/"
    assert sts_url_with_params("http://h:1/x?", {"a": "1"}) == "http://h:1/x?a=1"
    assert sts_url_with_params("http://h/x?k=v&", {"a": "1"}) == "http://h/x?k=v&a=1"


def test_encoding_of_reserved_and_unicode_characters():
    """'/', '&', '=', '+', '#', space and non-ASCII are percent-encoded (space as %20), keys too."""
    url = sts_url_with_params("ws://h", {"a b": "x/y&z=1+2#3 é"})
    assert url == "ws://h/?a%20b=x%2Fy%26z%3D1%2B2%233%20%C3%A9"


def test_value_types():
    """Strings as-is, numbers as JSON, booleans true/false, null empty, objects/arrays compact JSON."""
    url = sts_url_with_params(
        "ws://h", {"s": "x", "i": 5, "f": 1.5, "t": True, "n": None, "o": {"k": [1, "v"]}, "l": [1, 2]}
    )
    assert dict(parse_qsl(urlsplit(url).query, keep_blank_values=True)) == {
        "s": "x", "i": "5", "f": "1.5", "t": "true", "n": "", "o": '{"k":[1,"v"]}', "l": "[1,2]",
    }
    assert query_value(False) == "false"


def test_fragment_is_kept_last():
    """A fragment stays after the query."""
    assert sts_url_with_params("ws://h/p#frag", {"a": "1"}) == "ws://h/p?a=1#frag"


@given(st.dictionaries(st.text(min_size=1), st.one_of(st.text(), st.integers(), st.booleans(), st.none())))
def test_round_trip_through_a_query_parser(payload):
    """Whatever the payload, a standard query parser reads back every key and value text."""
    url = sts_url_with_params("ws://h:1/p?base=1", payload)
    pairs = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    assert pairs == [("base", "1")] + [(k, query_value(v)) for k, v in payload.items()]


@pytest.mark.parametrize(
    "text, ok",
    [
        ("ws://localhost:6030?uuid=1", True),
        ("wss://sts.example/x", True),
        ("http://10.0.0.1:8080/stream", True),
        ("https://sts.example", True),
        ("ftp://sts.example", False),
        ("ws://", False),
        ("ws://h:99999", False),
        ("ws://h/a b", False),
        ("ws://h/\n", False),
        ("", False),
        (None, False),
        (42, False),
        ("not a url", False),
    ],
)
def test_is_sts_url(text, ok):
    """Only ws/wss/http/https URLs with a host, a valid port and no whitespace are accepted."""
    assert is_sts_url(text) is ok
