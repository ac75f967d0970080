"""
Schemathesis against avr as `build` wires it (HTTP on loopback, ARI against the fake Asterisk): every operation of
``GET /openapi.json`` with valid and with invalid input, checked for no 500, a documented status, content type,
headers and body, invalid input refused; and every protected operation refused (401) without the key or with a
wrong one. Operations on a call, a bridge or a recording also get valid cases naming a live one (`LiveObjects`).

Bounded: a fixed number of examples per operation and mode, derandomized (the same cases every run), no shrinking
(a failure is reported as found), each request with a timeout. The fuzzing runs in a thread (schemathesis' client is
blocking) while the reactor serves.
"""

from __future__ import annotations

from typing import Any, AsyncIterator

import pytest
import pytest_twisted
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread, deferToThread

from tests.control_harness import EventsClient
from tests.test_integration_control import API_KEY, ServiceRig

pytestmark = pytest.mark.integration

#: Examples per operation and pass (valid input, invalid input, valid input naming a live call, bridge or recording):
#: with the two requests without the key per valid example of a protected operation, about 1900 requests, 35 s.
EXAMPLES = 12
#: Seconds one request may take (the fake Asterisk answers at once).
REQUEST_TIMEOUT = 5.0
#: Schemathesis' not_a_server_error is left out: avr is a gateway, whose documented 502 (Asterisk failed), 503 (ARI
#: down, draining) and 504 are answers; a 500 (avr failed) is the failure, checked in `fuzz_operation`. So is
#: positive_data_acceptance: some valid-looking requests are refused by rules across fields or of the server's state
#: (context without extension, a hang-up reason in the body and the query that differ, an upload that is not a WAV
#: file, an STS_ROUTES name not configured), which the document says in words.
CHECKS = [negative_data_rejection, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]


@pytest_twisted.async_yield_fixture
async def served() -> AsyncIterator[ServiceRig]:
    """avr against the fake Asterisk (manual-answer ``PJSIP/1001``, a stored recording), ARI connected."""
    from twisted.internet import reactor

    rig = ServiceRig(reactor)
    rig.fake.add_endpoint("1001", answer="manual")
    try:
        rig.start(drain_timeout=0)
        await rig.until_ari(lambda ari: ari == "connected")
        await rig.until_synced(1)
        yield rig
    finally:
        await rig.stop()


class LiveObjects:
    """
    Makes, from the fuzzing thread, the objects a path names, so that cases reach past "404 no such call": an
    answered call, a bridge, a stored recording (a new one for each operation: the last may have ended it).
    """

    def __init__(self, rig: ServiceRig, events: EventsClient) -> None:
        from twisted.internet import reactor

        self.rig = rig
        self.events = events
        self.reactor = reactor
        self.count = 0

    def path_parameters(self, path: str) -> dict[str, str] | None:
        """Values of ``path``'s parameters naming live objects (``None``: not such a path, or left out)."""
        if path.startswith("/calls/{id}") and path != "/calls/{id}/agent":
            # Not the agent routes: an attached agent would dial the generated STS URLs.
            return {"id": self._call(self.rig.answered_call(self.events))}
        if path.startswith("/bridges/{id}"):
            return {"id": self._call(self._bridge())}
        if path.startswith("/recordings/{name}"):
            self.count += 1
            name = f"fuzz-{self.count}"
            self._call(self._recording(name))
            return {"name": name}
        return None

    def _call(self, coroutine: Any) -> Any:
        return blockingCallFromThread(self.reactor, Deferred.fromCoroutine, coroutine)

    async def _bridge(self) -> str:
        status, body = await self.rig.request("POST", "/bridges", {})
        assert status == 201, body
        return str(body["bridge"]["id"])

    async def _recording(self, name: str) -> None:
        self.rig.fake.add_stored_recording(name)


def fuzz(base_url: str, document: dict[str, Any], live: LiveObjects) -> list[str]:
    """Every failure schemathesis finds (one line each), and the auth failures."""
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()
        passes: list[tuple[GenerationMode, dict[str, str] | None]] = [
            (GenerationMode.POSITIVE, None), (GenerationMode.NEGATIVE, None)]
        parameters = live.path_parameters(operation.path)
        if parameters is not None:
            passes.append((GenerationMode.POSITIVE, parameters))
        for mode, path_parameters in passes:
            try:
                fuzz_operation(operation, mode, path_parameters, base_url, session, failures)
            except Unsatisfiable:
                if mode is GenerationMode.POSITIVE:
                    raise  # only an operation without any input has no invalid one
    return failures


def fuzz_operation(operation: Any, mode: GenerationMode, path_parameters: dict[str, str] | None, base_url: str,
                   session: requests.Session, failures: list[str]) -> None:
    """`EXAMPLES` cases of ``operation`` in ``mode``; what fails is added to ``failures`` (once per kind)."""

    def fail(message: str) -> None:
        kind = message.split("Reproduce with")[0].split(" for curl")[0]
        if kind not in seen:
            seen.add(kind)
            failures.append(message)

    seen: set[str] = set()
    label = f"{operation.label} ({mode.value}{', live ' + str(path_parameters) if path_parameters else ''})"
    # A valid request without the right key must be refused. (An invalid path, e.g. an id with a "/", may match no
    # route and be answered 404 without the key: the routes are no secret, GET / and /openapi.json list them.)
    check_auth = operation.definition.raw.get("security") != [] and mode is GenerationMode.POSITIVE

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
    def run(case: Any) -> None:
        try:
            response = case.call(base_url=base_url, session=session, headers={"X-API-Key": API_KEY},
                                 timeout=REQUEST_TIMEOUT)
            if response.status_code == 500:
                fail(f"{label}: 500 {response.text[:200]} for {case.as_curl_command()}")
            case.validate_response(response, checks=CHECKS)
        except (Exception, BaseExceptionGroup) as e:  # every failure is collected, none stops the run
            fail(f"{label}: {str(e)[:1500]}")
        if check_auth:
            # Without any credential (the case's generated ones removed), then with a wrong key.
            case.headers = {k: v for k, v in (case.headers or {}).items()
                            if k.lower() not in ("x-api-key", "authorization")}
            case.query = {k: v for k, v in (case.query or {}).items() if k != "api_key"}
            for headers in ({}, {"X-API-Key": "wrong"}):
                refused = case.call(base_url=base_url, session=session, headers=headers, timeout=REQUEST_TIMEOUT)
                if refused.status_code != 401:
                    fail(f"{label}: {refused.status_code} {refused.text[:200]} with headers {headers}, not 401, "
                         f"for {case.as_curl_command()}")

    run()


# Schemathesis' negative mode draws from `random` (which Hypothesis seeds for each example: still deterministic).
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
@pytest_twisted.ensureDeferred
async def test_the_server_keeps_its_openapi_contract(served: ServiceRig) -> None:
    document = (await served.request("GET", "/openapi.json", key=None))[1]
    events = await served.events()
    failures = await deferToThread(fuzz, served.base, document, LiveObjects(served, events))
    assert failures == [], "\n".join(failures)
