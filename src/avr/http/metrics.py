"""
``GET /metrics``: avr's Prometheus metrics (`avr.metrics`), behind the API key like every other protected route,
except on the ``METRICS_PORT`` listener (`metrics_site`), which serves this route alone and without the key.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from klein import Klein
from prometheus_client import CollectorRegistry
from twisted.web.iweb import IRequest

from avr.http.auth import check_api_key
from avr.http.json import add_route, install_error_handlers
from avr.http.site import AvrSite, RequestGate, RoutePolicy, key_waived
from avr.metrics import exposition

#: The endpoint name of ``GET /metrics``.
METRICS_ENDPOINT = "metrics.scrape"


@define(eq=False)
class MetricsRoutes:
    """
    ``GET /metrics``, installed on an app built elsewhere (see `install`).

    :param metrics: the server's registry.
    :param api_key: when set, required (``X-API-Key``, ``Authorization: Bearer`` or ``?api_key=``) except on a
        site that waives it (`metrics_site`).
    """

    metrics: CollectorRegistry
    api_key: str | None = field(default=None, repr=False)

    def install(self, app: Klein) -> None:
        """Register ``GET /metrics`` on ``app`` (endpoint `METRICS_ENDPOINT`)."""
        add_route(app, "/metrics", self.scrape, methods=["GET"], endpoint=METRICS_ENDPOINT)

    def policies(self) -> dict[str, RoutePolicy]:
        """What the route admits before a body is read (`avr.http.site`): protected, with the site's body limit."""
        return {METRICS_ENDPOINT: RoutePolicy()}

    def scrape(self, request: IRequest) -> bytes:
        """
        ``GET /metrics``: every metric in the Prometheus text format (OpenMetrics when the ``Accept`` header asks for
        it); 401 without the API key where one is needed.
        """
        if not key_waived(request, METRICS_ENDPOINT):
            check_api_key(request, self.api_key)
        accept = request.getHeader(b"accept")
        body, media_type = exposition(self.metrics, accept.decode("latin-1") if accept is not None else None)
        request.setHeader(b"content-type", media_type.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return body


def metrics_site(metrics: CollectorRegistry, max_body: int, reactor: Any) -> AvrSite:
    """
    The site of the ``METRICS_PORT`` listener: ``GET /metrics`` without the API key, and nothing else (every other
    path is a JSON 404; no other route can be reached there, key or not).
    """
    app = Klein()
    install_error_handlers(app)
    routes = MetricsRoutes(metrics, api_key=None)
    routes.install(app)
    gate = RequestGate(app.url_map, None, max_body, routes.policies(), keyless=frozenset({METRICS_ENDPOINT}))
    return AvrSite(app.resource(), gate, reactor=reactor)
