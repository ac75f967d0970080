"""asterisk-api's allowlist routes: ``GET /allowlist`` and ``POST /allowlist/reload`` (see `avr.allowlist`)."""

from __future__ import annotations

from typing import Any

from attrs import define, field
from klein import Klein
from twisted.web.iweb import IRequest

from avr.allowlist import OPEN_MODE_NOTE, Allowlist, AllowlistError
from avr.http.auth import check_api_key
from avr.http.json import ApiError, add_route, json_response
from avr.http.site import RoutePolicy


@define(eq=False)
class AllowlistRoutes:
    """
    The allowlist routes, installed on an app built elsewhere; both need the API key when one is configured.

    :param allowlist: the allowlist in force (``None`` while ARI is not configured: 503).
    :param api_key: required when not ``None``.
    """

    allowlist: Allowlist | None
    api_key: str | None = field(default=None, repr=False)

    def install(self, app: Klein) -> None:
        """Register the routes (endpoints ``allowlist.show`` and ``allowlist.reload``)."""
        add_route(app, "/allowlist", self.show, methods=["GET"], endpoint="allowlist.show")
        add_route(app, "/allowlist/reload", self.reload, methods=["POST"], endpoint="allowlist.reload")

    def policies(self) -> dict[str, RoutePolicy]:
        """What the routes admit before their bodies are read: the key; ``reload`` takes no body."""
        return {"allowlist.show": RoutePolicy(), "allowlist.reload": RoutePolicy(max_body=1024)}

    def show(self, request: IRequest) -> bytes:
        """
        Show the allowlist in force: the inbound and outbound numbers, and why its file was last refused.

        ``{"inbound", "outbound", "note", "file", "error"}`` (``error``: why the file was last refused, the lists
        shown being the ones kept).
        """
        check_api_key(request, self.api_key)
        return json_response(request, 200, self._listing(self._configured()))

    def reload(self, request: IRequest) -> bytes:
        """
        Read the allowlist file again (422 when it cannot be used: the lists in force are kept).

        200 ``{"status": "reloaded", "inbound", "outbound"}``; 422 when the file cannot be used (the lists in force
        are kept and returned).
        """
        check_api_key(request, self.api_key)
        allowlist = self._configured()
        try:
            rules = allowlist.reload()
        except AllowlistError as e:
            raise ApiError(422, str(e), **self._listing(allowlist)) from None
        return json_response(request, 200, {"status": "reloaded", **rules.to_dict()})

    def _configured(self) -> Allowlist:
        if self.allowlist is None:
            raise ApiError(503, "ARI is not configured (set ARI_URL, ARI_USERNAME, ARI_PASSWORD): the allowlist "
                                "applies to call control")
        return self.allowlist

    @staticmethod
    def _listing(allowlist: Allowlist) -> dict[str, Any]:
        return {**allowlist.rules.to_dict(), "note": OPEN_MODE_NOTE, "file": allowlist.path,
                "closed": allowlist.rules.closed, "error": allowlist.error}
