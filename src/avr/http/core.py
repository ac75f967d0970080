"""
avr-core's HTTP web service: ``GET /health`` and ``POST /call`` (call registration and dynamic STS routing).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from attrs import define, field
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

import avr
from avr.calls import Refusal
from avr.config import redact_url
from avr.http.auth import check_api_key
from avr.http.json import ApiError, add_route, json_response, json_type, read_json_body
from avr.http.site import RoutePolicy
from avr.interfaces import IWebhooks
from avr.logtext import url_repr
from avr.registrations import Registration, Registrations, RegistrationsFull, canonical_uuid
from avr.urls import routed_sts_url


@define(eq=False)
class CoreRoutes:
    """
    The avr-core routes, installed on an app built elsewhere (see `install`).

    :param sts_url: ``STS_URL``, the base STS URL of calls (``None`` = the built-in echo agent).
    :param registrations: where ``POST /call`` registers calls for their AudioSocket connection.
    :param webhooks: sends ``call_initiated`` and reads its ``sts_url`` override.
    :param max_body: largest accepted request body, in bytes (``HTTP_MAX_BODY``).
    :param api_key: when set, required by ``POST /call`` (header ``X-API-Key`` or query ``api_key``); ``/health``
        and ``/ready`` stay open (load balancers and orchestrators probe without keys).
    :param status: more fields for ``GET /health`` (`avr.health.Health.fields`).
    :param not_ready: why avr is not ready, for ``GET /ready`` (`avr.health.Health.not_ready`; empty: ready).
    :param refusal: why ``POST /call`` is refused now (draining, ``MAX_CALLS``: `avr.calls.CallManager.refusal`).
    """

    log = Logger()

    sts_url: str | None = field(repr=url_repr)
    registrations: Registrations
    webhooks: IWebhooks
    max_body: int = 64 * 1024
    api_key: str | None = field(default=None, repr=False)
    #: More fields for ``GET /health`` (live AudioSocket calls, ARI state), read at each request.
    status: Callable[[], Mapping[str, Any]] = dict
    not_ready: Callable[[], list[dict[str, str]]] = list
    refusal: Callable[[], Refusal | None] = lambda: None

    @classmethod
    def from_config(
        cls, config: Any, registrations: Registrations, webhooks: IWebhooks,
        status: Callable[[], Mapping[str, Any]] = dict, not_ready: Callable[[], list[dict[str, str]]] = list,
        refusal: Callable[[], Refusal | None] = lambda: None,
    ) -> CoreRoutes:
        """The routes for an `avr.config.Config`."""
        return cls(config.sts_url, registrations, webhooks, config.http_max_body, config.api_key, status, not_ready,
                   refusal)

    def install(self, app: Klein) -> None:
        """
        Register ``GET /health``, ``GET /ready`` and ``POST /call`` on ``app`` (endpoints ``core.health``,
        ``core.ready`` and ``core.call``).
        """
        add_route(app, "/health", self.health, methods=["GET"], endpoint="core.health")
        add_route(app, "/ready", self.ready, methods=["GET"], endpoint="core.ready")
        add_route(app, "/call", self.call, methods=["POST"], endpoint="core.call")

    def policies(self) -> dict[str, RoutePolicy]:
        """What the routes admit before their bodies are read (`avr.http.site`): ``/health`` and ``/ready`` are
        public."""
        return {"core.health": RoutePolicy(public=True), "core.ready": RoutePolicy(public=True),
                "core.call": RoutePolicy(max_body=self.max_body)}

    def health(self, request: IRequest) -> bytes:
        """
        Liveness: 200 with avr's version, its pending registrations, live calls and the ARI state; never fails.

        ``GET /health``: 200 ``{"status": "ok", "service": "avr", "version": ..., "registrations": n, ...}`` plus the
        fields of ``status`` (never fails: a health check must answer while ARI is down).
        """
        body = {"status": "ok", "service": "avr", "version": avr.__version__, "registrations": len(self.registrations)}
        body.update(self.status())
        return json_response(request, 200, body)

    def ready(self, request: IRequest) -> bytes:
        """
        ``GET /ready``: 200 ``{"ready": true, "reasons": []}`` when avr takes new calls; 503 ``{"ready": false,
        "reasons": [{"component", "reason"}, ...]}`` while it is draining, ARI (when configured) is not connected,
        the AudioSocket port is not open or ``MAX_CALLS`` calls are live.
        """
        reasons = self.not_ready()
        return json_response(request, 503 if reasons else 200, {"ready": not reasons, "reasons": reasons})

    async def call(self, request: IRequest) -> bytes:
        """
        Register an AudioSocket call before it connects (the dialplan's CURL()) and decide its STS URL.

        ``POST /call`` with ``{"uuid": "<uuid>", "payload": {...}}``: decide the call's STS URL (``STS_URL`` or the
        ``call_initiated`` webhook's ``sts_url``, plus every payload field as a query parameter), register the call,
        and answer 200 ``{"sts_url": <url or null>, "override": <bool>}``; 503 (before the webhook is asked) while
        ``CALL_INIT_MAX`` calls are already waiting for their AudioSocket connection, while avr is draining and
        while ``MAX_CALLS`` calls are live (``reason``: ``draining``, ``max_calls``).

        The registration completes even if the client hangs up while the webhook is being asked.
        """
        check_api_key(request, self.api_key)
        uuid, payload = _parse_call(await read_json_body(request, self.max_body))
        refusal = self.refusal()
        if refusal is not None:
            # The connection would be hung up on arrival: say so now, so the dialplan can send the call elsewhere.
            raise ApiError(503, f"call not accepted: {refusal.message}", reason=refusal.code)
        try:
            self.registrations.check_room(uuid)
            registration = await _uncancellable(self._initiate(uuid, payload))
        except RegistrationsFull as e:
            request.setHeader(b"retry-after", b"1")
            raise ApiError(503, f"too many calls pending: {e}; try again later", limit=e.limit) from None
        return json_response(request, 200, {"sts_url": registration.sts_url, "override": registration.override})

    def _initiate(self, uuid: str, payload: dict[str, Any]) -> Deferred[Registration]:
        d = self.webhooks.call_initiated(uuid, payload)
        return d.addCallback(self._register, uuid, payload)

    def _register(self, override_url: str | None, uuid: str, payload: dict[str, Any]) -> Registration:
        url = routed_sts_url(override_url, self.sts_url, payload)
        registration = self.registrations.register(uuid, payload, url, override_url is not None)
        self.log.info(
            "Call {call_id} initialised: STS URL {url} (override: {override})",
            call_id=uuid, url=redact_url(url) if url else "<echo agent>", override=registration.override,
        )
        return registration


def _parse_call(body: Any) -> tuple[str, dict[str, Any]]:
    """The canonical uuid and the payload of a ``POST /call`` body (other top-level keys are ignored)."""
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, got {json_type(body)}")
    if "uuid" not in body:
        raise ApiError(400, "uuid is required")
    uuid = body["uuid"]
    if not isinstance(uuid, str):
        raise ApiError(400, f"uuid must be a string, got {json_type(uuid)}")
    try:
        uuid = canonical_uuid(uuid)
    except ValueError as e:
        raise ApiError(400, f"uuid {e}") from None
    payload = body.get("payload", {})
    if not isinstance(payload, dict):
        raise ApiError(400, f"payload must be a JSON object, got {json_type(payload)}")
    return uuid, payload


def _uncancellable(d: Deferred[Any]) -> Deferred[Any]:
    """
    A Deferred with ``d``'s result that can be cancelled without cancelling ``d``: work that must outlive the request
    (Klein cancels the handler when the client disconnects) goes on, and its failure is still logged.
    """
    shield: Deferred[Any] = Deferred()

    def relay(result: Any) -> None:
        if shield.called:
            if isinstance(result, Failure) and not result.check(RegistrationsFull):
                CoreRoutes.log.failure("Call initialisation failed after the client left", result)
            return
        if isinstance(result, Failure):
            shield.errback(result)
        else:
            shield.callback(result)

    d.addBoth(relay)
    return shield


__all__ = ["CoreRoutes"]
