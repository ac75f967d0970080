"""
Tests for avr.http.openapi: the document names exactly the routes `build` serves, says truly which need the API key,
is served at ``GET /openapi.json`` without the key, and its request bodies come from avr.control.request_fields.
(tests/test_schemathesis.py fuzzes a running server against it.)
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from klein import Klein
from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock

from avr.config import Config
from avr.control import request_fields
from avr.http.json import ApiError
from avr.http.metrics import metrics_site
from avr.http.openapi import build_document
from avr.service import build
from fakes import FakeStsConnector

KEY = "openapi-unit-key-41d9"
METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
_ARGUMENT = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def built_app(**settings: Any) -> Klein:
    """The Klein app of avr as `build` wires it, with ARI configured (every route module installed)."""
    config = Config(**{"http_port": 6001, "api_key": KEY, "ari_url": "http://127.0.0.1:8088", "ari_username": "avr",
                       "ari_password": "pw", **settings})
    avr = build(MemoryReactorClock(), config, http_client=StubTreq(None), sts_connector=FakeStsConnector())
    assert avr.http_app is not None
    return avr.http_app


def klein_routes(app: Klein) -> set[tuple[str, str]]:
    """``(METHOD, /path/{param})`` of every rule of ``app`` (werkzeug's implicit HEAD and OPTIONS left out)."""
    return {(method, _ARGUMENT.sub(r"{\1}", rule.rule))
            for rule in app.url_map.iter_rules()
            for method in rule.methods or () if method not in ("HEAD", "OPTIONS")}


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield method.upper(), path, item[method]


def test_every_klein_route_is_in_the_document_and_every_operation_is_a_route() -> None:
    documented = {(method, path) for method, path, _ in operations(build_document())}
    served = klein_routes(built_app())
    assert served - documented == set(), "routes missing from the OpenAPI document"
    assert documented - served == set(), "operations of the OpenAPI document that avr does not serve"


def test_the_metrics_port_serves_a_documented_route_only() -> None:
    site = metrics_site(None, 1024, MemoryReactorClock())  # type: ignore[arg-type]
    documented = {(method, path) for method, path, _ in operations(build_document())}
    assert klein_routes(site.resource._app) <= documented  # type: ignore[attr-defined]


def test_operation_ids_are_unique_and_every_reference_resolves() -> None:
    document = build_document()
    ids = [operation["operationId"] for _, _, operation in operations(document)]
    assert len(ids) == len(set(ids))

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            if "$ref" in node:
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    for ref in refs(document):
        target: Any = document
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]  # a KeyError names the broken reference
    assert document["openapi"] == "3.1.0"


def request(app: Klein, method: str, path: str, key: str | None = None) -> tuple[int, bytes]:
    client = StubTreq(app.resource())
    headers = {"X-API-Key": KEY} if key else {}
    d = client.request(method, "http://avr.test:6001" + path, headers=headers)
    client.flush()
    response = d.result  # type: ignore[attr-defined]
    body = client.content(response)
    client.flush()
    return response.code, body.result  # type: ignore[attr-defined]


def test_what_the_document_says_is_public_is_served_without_the_key_and_nothing_else() -> None:
    app = built_app()
    for method, path, operation in operations(build_document()):
        concrete = path.replace("{id}", "c1").replace("{playbackId}", "p1").replace("{name}", "r1")
        status, body = request(app, method, concrete)
        public = operation.get("security") == []
        assert (status != 401) is public, (method, path, status, body)
        assert ("401" in operation["responses"]) is not public, (method, path)


def test_openapi_json_is_served_without_the_key() -> None:
    status, body = request(built_app(), "GET", "/openapi.json")
    assert status == 200
    assert json.loads(body) == build_document()


def test_request_bodies_are_the_validators_schemas() -> None:
    paths = build_document()["paths"]
    originate = paths["/calls"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert originate == request_fields.body_schema(request_fields.ORIGINATE)
    assert originate["required"] == ["endpoint"]
    assert originate["properties"]["timeout"] == {"type": ["integer", "null"], "minimum": 1, "maximum": 120}
    record = paths["/calls/{id}/record"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    # An alias is documented under both names.
    assert record["properties"]["maxDuration"] == record["properties"]["maxDurationSeconds"]


@pytest.mark.parametrize(("fields", "body", "accepted"), [
    (request_fields.HANGUP, {"reason": None}, True),
    (request_fields.HANGUP, {"reason": "busy"}, True),
    (request_fields.HANGUP, {"reason": "bored"}, False),
    (request_fields.DTMF, {"dtmf": "12#w"}, True),
    (request_fields.DTMF, {"dtmf": "12x"}, False),
    (request_fields.PLAY, {"media": ["sound:a", "tone:ring"]}, True),
    (request_fields.PLAY, {"media": "sound:a,b"}, False),
    (request_fields.PLAY, {"media": " sound:a"}, False),
])
def test_a_nullable_enum_and_a_pattern_say_what_the_validator_does(
    fields: tuple[request_fields.Field, ...], body: dict, accepted: bool,
) -> None:
    (name, value), = body.items()
    schema = request_fields.body_schema(fields)["properties"][name]
    assert _matches(schema, value) is accepted
    try:
        request_fields.validate(body, fields)
    except Exception:
        assert not accepted
    else:
        assert accepted


def _matches(schema: dict[str, Any], value: Any) -> bool:
    """The few JSON Schema keywords the cases above use."""
    if value is None:
        return "null" in schema["type"]
    if "enum" in schema:
        return value in schema["enum"]
    values = value if isinstance(value, list) else [value]
    pattern = (schema.get("items") or schema)["pattern"]
    return all(re.search(pattern, v) is not None for v in values)


_BODIES = {name: getattr(request_fields, name) for name in (
    "ORIGINATE", "HANGUP", "PLAY", "RECORD", "DTMF", "TRANSFER", "SPEAK", "CREATE_BRIDGE", "BRIDGE_MEMBER",
    "COPY_RECORDING", "AGENT")}
_STRING_FIELDS = [pytest.param(f, id=f"{body}.{f.name}") for body, fields in _BODIES.items() for f in fields
                  if "pattern" in f.check.schema]


@pytest.mark.parametrize("field", _STRING_FIELDS)
def test_every_string_a_field_schema_allows_its_check_accepts(field: request_fields.Field) -> None:
    """Strings drawn from a field's documented pattern and lengths pass the validator (Hypothesis, derandomized)."""
    schema = field.check.schema
    pattern = schema["pattern"]
    # JSON Schema's "$" is the end of the text; Python's also matches before a final newline: fullmatch says it.
    strings = st.from_regex(pattern, fullmatch=pattern.startswith("^")).filter(
        lambda s: schema.get("minLength", 0) <= len(s) <= schema.get("maxLength", 10**6))

    @settings(max_examples=100, derandomize=True, database=None, suppress_health_check=[HealthCheck.filter_too_much])
    @given(strings)
    def accepted(value: str) -> None:
        field.check(value)

    accepted()


def test_a_whole_number_written_with_a_fraction_of_zero_is_accepted() -> None:
    """JSON Schema's "integer" (and a JavaScript client) counts 30.0 as 30."""
    assert request_fields.validate({"endpoint": "PJSIP/1", "timeout": 30.0}, request_fields.ORIGINATE)["timeout"] == 30
    with pytest.raises(ApiError, match="must be a whole number"):
        request_fields.validate({"endpoint": "PJSIP/1", "timeout": 30.5}, request_fields.ORIGINATE)
