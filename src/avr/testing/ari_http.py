"""
The ARI REST surface of the fake Asterisk: a twisted.web resource that routes ``/ari/...`` requests to
`avr.testing.ari_engine.AsteriskEngine` and writes Asterisk's exact responses (fact 9-13 of the fixtures README):
``Server: Asterisk``, ``Cache-Control: no-cache, no-store``, ``Content-type: application/json`` (lower-case t),
compact JSON, 204 with ``Content-Length: 0``, 201 with ``Location``, 401 with ``WWW-Authenticate``, 405 with
``Allow``; parameters from the query string (last value wins), a form body or a JSON body.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

from attrs import frozen
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from avr.testing.ari_model import (
    ASTERISK_ID,
    ASTERISK_VERSION,
    AriHttpError,
    format_timestamp,
    http_date,
    param_int,
    param_str,
    recording_mime,
)

if TYPE_CHECKING:
    from avr.testing.ari import FakeAsterisk

METHOD_ORDER = ("GET", "POST", "PUT", "DELETE")
REALM = "Asterisk REST Interface"


def html_error(status: int, title: str, text: str) -> bytes:
    """The HTML page Asterisk's HTTP server sends for errors outside ARI's JSON (e.g. a WebSocket without ``app``)."""
    return (
        '<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">\r\n<html><head>\r\n'
        f"<title>{status} {title}</title>\r\n</head><body>\r\n<h1>{title}</h1>\r\n<p>{text}</p>\r\n<hr />\r\n"
        "<address>Asterisk</address>\r\n</body></html>\r\n"
    ).encode()


@frozen
class RecordedRequest:
    """One REST request the fake received (for test assertions)."""

    method: str
    path: str
    params: dict
    body: Any
    authorized: bool


@frozen
class AriRequest:
    """A parsed ARI request as handlers see it."""

    method: str
    path_args: dict
    params: dict
    body: Any


@frozen
class AriResponse:
    """What a handler returns: status, JSON body (or raw bytes with their content type) and extra headers."""

    status: int = 200
    body: Any = None
    raw: bytes | None = None
    content_type: str = "application/json"
    headers: tuple = ()


class _AsteriskHeaders(Headers):
    """Response headers written with Asterisk's spelling (``Content-type``), which Twisted would canonicalise."""

    def getAllRawHeaders(self):  # type: ignore[no-untyped-def]
        """Yield the headers, renaming ``Content-Type`` to ``Content-type`` for JSON responses."""
        json_body = (self.getRawHeaders(b"content-type") or [b""])[0] == b"application/json"
        for name, values in super().getAllRawHeaders():
            yield (b"Content-type" if json_body and name == b"Content-Type" else name), values


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """``Authorization: Basic ...`` → ``(user, password)``; ``None`` if absent or malformed."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def write_response(request: Any, clock_wall: float, status: int, *, body: bytes = b"", content_type: str | None = None,
                   headers: tuple = ()) -> None:  # fmt: skip
    """Write a complete response with Asterisk's headers, in Asterisk's order."""
    old = request.responseHeaders
    request.responseHeaders = new = _AsteriskHeaders()
    new.setRawHeaders(b"Server", [b"Asterisk"])
    new.setRawHeaders(b"Date", [http_date(clock_wall).encode()])
    connection = old.getRawHeaders(b"connection")
    if connection:
        new.setRawHeaders(b"Connection", connection)
    new.setRawHeaders(b"Cache-Control", [b"no-cache, no-store"])
    for name, value in headers:
        new.setRawHeaders(name.encode(), [value.encode()])
    if content_type is not None and body:
        new.setRawHeaders(b"Content-Type", [content_type.encode()])
    new.setRawHeaders(b"Content-Length", [str(len(body)).encode()])
    request.setResponseCode(status)
    if body:
        request.write(body)
    request.finish()


class _Route:
    def __init__(self) -> None:
        self.literal: dict[str, _Route] = {}
        self.wildcard: tuple[str, _Route] | None = None
        self.methods: dict[str, str] = {}


def build_routes(table: list[tuple[str, str, str]]) -> _Route:
    """Build the routing tree; literal segments win over ``{wildcards}`` as in Asterisk's ARI router."""
    root = _Route()
    for pattern, method, handler in table:
        node = root
        for segment in pattern.strip("/").split("/"):
            if segment.startswith("{"):
                if node.wildcard is None:
                    node.wildcard = (segment[1:-1], _Route())
                node = node.wildcard[1]
            else:
                node = node.literal.setdefault(segment, _Route())
        node.methods[method] = handler
    return root


ROUTES: list[tuple[str, str, str]] = [
    ("/asterisk/info", "GET", "asterisk_info"),
    ("/asterisk/ping", "GET", "asterisk_ping"),
    ("/asterisk/variable", "GET", "global_get"),
    ("/asterisk/variable", "POST", "global_set"),
    ("/asterisk/modules", "GET", "modules"),
    ("/asterisk/modules/{moduleName}", "GET", "module"),
    ("/applications", "GET", "apps"),
    ("/applications/{applicationName}", "GET", "app"),
    ("/applications/{applicationName}/subscription", "POST", "app_subscribe"),
    ("/applications/{applicationName}/subscription", "DELETE", "app_unsubscribe"),
    ("/applications/{applicationName}/eventFilter", "PUT", "app_filter"),
    ("/endpoints", "GET", "endpoints"),
    ("/endpoints/{tech}", "GET", "endpoints_tech"),
    ("/endpoints/{tech}/{resource}", "GET", "endpoint"),
    ("/channels", "GET", "channels"),
    ("/channels", "POST", "originate"),
    ("/channels/create", "POST", "channel_create"),
    ("/channels/externalMedia", "POST", "external_media"),
    ("/channels/{channelId}", "GET", "channel"),
    ("/channels/{channelId}", "POST", "originate"),
    ("/channels/{channelId}", "DELETE", "hangup"),
    ("/channels/{channelId}/continue", "POST", "continue"),
    ("/channels/{channelId}/move", "POST", "move"),
    ("/channels/{channelId}/redirect", "POST", "redirect"),
    ("/channels/{channelId}/answer", "POST", "answer"),
    ("/channels/{channelId}/ring", "POST", "op:ring"),
    ("/channels/{channelId}/ring", "DELETE", "op:ring_stop"),
    ("/channels/{channelId}/progress", "POST", "op:progress"),
    ("/channels/{channelId}/dtmf", "POST", "dtmf"),
    ("/channels/{channelId}/mute", "POST", "op:mute"),
    ("/channels/{channelId}/mute", "DELETE", "op:unmute"),
    ("/channels/{channelId}/hold", "POST", "op:hold"),
    ("/channels/{channelId}/hold", "DELETE", "op:unhold"),
    ("/channels/{channelId}/moh", "POST", "op:moh"),
    ("/channels/{channelId}/moh", "DELETE", "op:moh_stop"),
    ("/channels/{channelId}/silence", "POST", "op:silence"),
    ("/channels/{channelId}/silence", "DELETE", "op:silence_stop"),
    ("/channels/{channelId}/play", "POST", "channel_play"),
    ("/channels/{channelId}/play/{playbackId}", "POST", "channel_play"),
    ("/channels/{channelId}/record", "POST", "channel_record"),
    ("/channels/{channelId}/variable", "GET", "var_get"),
    ("/channels/{channelId}/variable", "POST", "var_set"),
    ("/channels/{channelId}/variables", "GET", "vars_get"),
    ("/channels/{channelId}/variables", "POST", "vars_set"),
    ("/channels/{channelId}/snoop", "POST", "snoop"),
    ("/channels/{channelId}/snoop/{snoopId}", "POST", "snoop"),
    ("/channels/{channelId}/dial", "POST", "dial"),
    ("/channels/{channelId}/rtp_statistics", "GET", "rtp_statistics"),
    ("/bridges", "GET", "bridges"),
    ("/bridges", "POST", "bridge_create"),
    ("/bridges/{bridgeId}", "GET", "bridge"),
    ("/bridges/{bridgeId}", "POST", "bridge_create"),
    ("/bridges/{bridgeId}", "DELETE", "bridge_destroy"),
    ("/bridges/{bridgeId}/addChannel", "POST", "bridge_add"),
    ("/bridges/{bridgeId}/removeChannel", "POST", "bridge_remove"),
    ("/bridges/{bridgeId}/play", "POST", "bridge_play"),
    ("/bridges/{bridgeId}/play/{playbackId}", "POST", "bridge_play"),
    ("/bridges/{bridgeId}/record", "POST", "bridge_record"),
    ("/bridges/{bridgeId}/moh", "POST", "bridge_noop"),
    ("/bridges/{bridgeId}/moh", "DELETE", "bridge_noop"),
    ("/recordings/stored", "GET", "stored_list"),
    ("/recordings/stored/{recordingName}", "GET", "stored"),
    ("/recordings/stored/{recordingName}", "DELETE", "stored_delete"),
    ("/recordings/stored/{recordingName}/file", "GET", "stored_file"),
    ("/recordings/stored/{recordingName}/copy", "POST", "stored_copy"),
    ("/recordings/live/{recordingName}", "GET", "live"),
    ("/recordings/live/{recordingName}", "DELETE", "live_cancel"),
    ("/recordings/live/{recordingName}/stop", "POST", "live_stop"),
    ("/recordings/live/{recordingName}/pause", "POST", "live:pause"),
    ("/recordings/live/{recordingName}/pause", "DELETE", "live:unpause"),
    ("/recordings/live/{recordingName}/mute", "POST", "live:mute"),
    ("/recordings/live/{recordingName}/mute", "DELETE", "live:unmute"),
    ("/playbacks/{playbackId}", "GET", "playback"),
    ("/playbacks/{playbackId}", "DELETE", "playback_stop"),
    ("/playbacks/{playbackId}/control", "POST", "playback_control"),
    ("/sounds", "GET", "sounds"),
    ("/sounds/{soundId}", "GET", "sound"),
    ("/deviceStates", "GET", "empty_list"),
    ("/mailboxes", "GET", "empty_list"),
    ("/events", "GET", "events"),
]

MODULES = {
    "res_ari.so": ("Asterisk RESTful Interface", 13),
    "res_stasis.so": ("Stasis application support", 12),
    "res_ari_channels.so": ("RESTful API module - Channel resources", 0),
    "res_ari_bridges.so": ("RESTful API module - Bridge resources", 0),
    "chan_audiosocket.so": ("AudioSocket Channel", 0),
    "res_audiosocket.so": ("AudioSocket support", 1),
    "app_audiosocket.so": ("AudioSocket Application", 0),
}


class AriResource(Resource):
    """
    The whole HTTP tree of the fake Asterisk (``/ari/...`` plus the ``/ari/events`` WebSocket); other paths get
    Asterisk's HTML 404.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, fake: FakeAsterisk) -> None:
        super().__init__()
        self._fake = fake
        self._routes = build_routes(ROUTES)

    # ----------------------------------------------------------------------------------------------------------------
    # Request plumbing

    def render(self, request: Any) -> Any:
        """Dispatch one request (see the class docstring)."""
        fake = self._fake
        if fake.status == "down":
            transport = request.channel.transport
            if transport is not None:
                transport.abortConnection()
            return NOT_DONE_YET
        fake.http_channels.add(request.channel)
        path = request.path.decode("latin-1")
        if fake.status == "booting" or not (path == "/ari" or path.startswith("/ari/")):
            self._html(request, 404, "Not Found", "The requested URL was not found on this server.")
            return NOT_DONE_YET
        query = [(k, v) for k, v in parse_qsl(urlsplit(request.uri.decode("latin-1")).query, keep_blank_values=True)]
        if path == "/ari/events":
            return fake.render_events(request, query)
        try:
            params, body = self._params(request, query)
        except AriHttpError as error:
            fake.note_request(RecordedRequest(request.method.decode(), path, dict(query), None, True))
            self._json(request, error.status, error.body)
            return NOT_DONE_YET
        authorized = fake.authorized(_header(request, b"authorization"), dict(query).get("api_key"))
        fake.note_request(RecordedRequest(request.method.decode(), path, params, body, authorized))
        if not authorized:
            self._json(request, 401, {"message": "Authentication required"},
                       headers=(("WWW-Authenticate", f'Basic realm="{REALM}"'),))  # fmt: skip
            return NOT_DONE_YET
        method = request.method.decode()
        node, path_args = self._match(path[4:])
        if node is None or not node.methods:
            self._json(request, 404, {"message": "Resource not found"})
            return NOT_DONE_YET
        if method == "OPTIONS":
            self._json(request, 204, None, headers=(("Allow", self._allow(node)),))
            return NOT_DONE_YET
        handler_name = node.methods.get(method)
        if handler_name is None:
            self._json(request, 405, {"message": "Invalid method"}, headers=(("Allow", self._allow(node)),))
            return NOT_DONE_YET
        self._invoke(request, handler_name, AriRequest(method, path_args, params, body))
        return NOT_DONE_YET

    @staticmethod
    def _allow(node: _Route) -> str:
        return ",".join(["OPTIONS", *[m for m in METHOD_ORDER if m in node.methods]])

    def _match(self, path: str) -> tuple[_Route | None, dict]:
        node = self._routes
        args: dict[str, str] = {}
        for segment in path.strip("/").split("/") if path.strip("/") else []:
            if segment in node.literal:
                node = node.literal[segment]
            elif node.wildcard is not None and segment:
                args[node.wildcard[0]] = unquote(segment)
                node = node.wildcard[1]
            else:
                return None, {}
        if path.endswith("/") and path != "/":
            return None, {}
        return node, args

    @staticmethod
    def _params(request: Any, query: list[tuple[str, str]]) -> tuple[dict, Any]:
        """Query (last value wins, fact 20), then a form or JSON body on top (``variables`` stays an object)."""
        params: dict[str, Any] = {}
        for key, value in query:
            params[key] = value
        raw = request.content.read() if request.content is not None else b""
        content_type = (_header(request, b"content-type") or "").split(";")[0].strip().lower()
        body: Any = None
        if raw and content_type == "application/json":
            try:
                body = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise AriHttpError(400, "Error parsing request body") from None
            if isinstance(body, dict):
                for key, value in body.items():
                    params[key] = value if isinstance(value, (dict, list)) else param_str(value)
        elif raw and content_type == "application/x-www-form-urlencoded":
            for key, value in parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True):
                params[key] = value
        return params, body

    def _invoke(self, request: Any, handler_name: str, ari: AriRequest) -> None:
        name, _, arg = handler_name.partition(":")
        handler: Callable[..., Any] = getattr(self, f"h_{name}")
        try:
            result = handler(ari, arg) if arg else handler(ari)
        except AriHttpError as error:
            self._json(request, error.status, error.body)
            return
        except Exception:
            self.log.failure("Fake ARI handler {handler} failed", handler=handler_name)
            self._json(request, 500, {"message": "Internal Server Error"})
            return
        if isinstance(result, defer.Deferred):
            finished = request.notifyFinish()
            finished.addErrback(lambda _f: None)
            gone: list[bool] = []
            finished.addBoth(lambda _r: gone.append(True))

            def done(outcome: Any) -> None:
                """Write the handler's late result, unless the client has gone."""
                if gone:
                    return
                if isinstance(outcome, Failure):
                    if outcome.check(AriHttpError):
                        error = outcome.value
                        self._json(request, error.status, error.body)
                        return
                    self.log.failure("Fake ARI handler {handler} failed", outcome, handler=handler_name)
                    self._json(request, 500, {"message": "Internal Server Error"})
                    return
                self._respond(request, outcome)

            result.addBoth(done)
            return
        self._respond(request, result)

    def _respond(self, request: Any, result: Any) -> None:
        if not isinstance(result, AriResponse):
            result = AriResponse(204) if result is None else AriResponse(200, result)
        if result.raw is not None:
            write_response(request, self._fake.engine.wall(), result.status, body=result.raw,
                           content_type=result.content_type, headers=result.headers)  # fmt: skip
            return
        self._json(request, result.status, result.body, headers=result.headers)

    def _json(self, request: Any, status: int, body: Any, headers: tuple = ()) -> None:
        data = b"" if body is None else json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        write_response(request, self._fake.engine.wall(), status, body=data, content_type="application/json",
                       headers=headers)  # fmt: skip

    def _html(self, request: Any, status: int, title: str, text: str) -> None:
        write_response(request, self._fake.engine.wall(), status, body=html_error(status, title, text),
                       content_type="text/html")  # fmt: skip

    # ----------------------------------------------------------------------------------------------------------------
    # Lookups

    @property
    def _engine(self):  # type: ignore[no-untyped-def]
        return self._fake.engine

    def _channel(self, ari: AriRequest, message: str = "Channel not found"):  # type: ignore[no-untyped-def]
        ch = self._engine.channels.get(ari.path_args["channelId"])
        if ch is None or ch.gone:
            raise AriHttpError(404, message)
        return ch

    def _bridge(self, ari: AriRequest):  # type: ignore[no-untyped-def]
        bridge = self._engine.bridges.get(ari.path_args["bridgeId"])
        if bridge is None:
            raise AriHttpError(404, "Bridge not found")
        return bridge

    def _app(self, ari: AriRequest):  # type: ignore[no-untyped-def]
        app = self._engine.apps.get(ari.path_args["applicationName"])
        if app is None:
            raise AriHttpError(404, "Application not found")
        return app

    def _playback(self, ari: AriRequest):  # type: ignore[no-untyped-def]
        pb = self._engine.playbacks.get(ari.path_args["playbackId"])
        if pb is None:
            raise AriHttpError(404, "Playback not found")
        return pb

    def _live(self, ari: AriRequest):  # type: ignore[no-untyped-def]
        rec = self._engine.live_recordings.get(ari.path_args["recordingName"])
        if rec is None:
            raise AriHttpError(404, "Recording not found")
        return rec

    def _stored(self, ari: AriRequest):  # type: ignore[no-untyped-def]
        stored = self._engine.stored.get(ari.path_args["recordingName"])
        if stored is None:
            raise AriHttpError(404, "Recording not found")
        return stored

    @staticmethod
    def _variables(ari: AriRequest) -> dict[str, str] | None:
        variables = ari.params.get("variables")
        if variables is None or not isinstance(variables, dict):
            return None
        out = {}
        for key, value in variables.items():
            if isinstance(value, dict):
                value = value.get("value", "")
            if not isinstance(value, str):
                raise AriHttpError(400, "Only string values in the 'variables' object allowed")
            out[key] = value
        return out

    # ----------------------------------------------------------------------------------------------------------------
    # /asterisk

    def h_asterisk_info(self, ari: AriRequest) -> dict:
        """``GET /asterisk/info[?only=build,system,config,status]``."""
        engine = self._engine
        sections = {
            "build": {"os": "Linux", "kernel": "6.18.44-fc-v445", "machine": "x86_64", "options": "OPTIONAL_API",
                      "date": "2026-11-21 11:32:09 UTC", "user": "root"},
            "system": {"version": ASTERISK_VERSION, "entity_id": ASTERISK_ID},
            "config": {"name": "", "default_language": "en", "setid": {"user": "", "group": ""},
                       "max_open_files": 4096},
            "status": {"startup_time": format_timestamp(engine.startup_time),
                       "last_reload_time": format_timestamp(engine.startup_time)},
        }  # fmt: skip
        only = [s for s in param_str(ari.params.get("only")).split(",") if s]
        if not only:
            return sections
        for name in only:
            if name not in sections:
                raise AriHttpError(400, f"Invalid only value {name}")
        return {name: sections[name] for name in sections if name in only}

    def h_asterisk_ping(self, ari: AriRequest) -> dict:
        """``GET /asterisk/ping``."""
        return {"ping": "pong", "timestamp": format_timestamp(self._engine.wall()), "asterisk_id": ASTERISK_ID}

    def h_global_get(self, ari: AriRequest) -> dict:
        """``GET /asterisk/variable`` (an unset variable is ``""``)."""
        name = param_str(ari.params.get("variable"))
        if not name:
            raise AriHttpError(400, "Variable name is required")
        return {"value": self._engine.global_vars.get(name, "")}

    def h_global_set(self, ari: AriRequest) -> None:
        """``POST /asterisk/variable``."""
        name = param_str(ari.params.get("variable"))
        if not name:
            raise AriHttpError(400, "Variable name is required")
        self._engine.global_vars[name] = param_str(ari.params.get("value"))

    def h_modules(self, ari: AriRequest) -> list:
        """``GET /asterisk/modules``."""
        return [self._module_json(name) for name in sorted(MODULES)]

    def h_module(self, ari: AriRequest) -> dict:
        """``GET /asterisk/modules/{name}``."""
        name = ari.path_args["moduleName"]
        if name not in MODULES:
            raise AriHttpError(404, "Module could not be found in running modules")
        return self._module_json(name)

    @staticmethod
    def _module_json(name: str) -> dict:
        description, use_count = MODULES[name]
        return {"name": name, "description": description, "use_count": use_count, "status": "Running",
                "support_level": "core"}  # fmt: skip

    # ----------------------------------------------------------------------------------------------------------------
    # /applications

    def h_apps(self, ari: AriRequest) -> list:
        """``GET /applications`` (only apps with a socket or a channel: fact 28)."""
        return [self._engine.apps[name].to_json() for name in sorted(self._engine.apps)]

    def h_app(self, ari: AriRequest) -> dict:
        """``GET /applications/{name}``."""
        return self._app(ari).to_json()

    def h_app_subscribe(self, ari: AriRequest) -> dict:
        """``POST /applications/{name}/subscription``."""
        return self._engine.app_subscription(self._app(ari), ari.params, True)

    def h_app_unsubscribe(self, ari: AriRequest) -> dict:
        """``DELETE /applications/{name}/subscription``."""
        return self._engine.app_subscription(self._app(ari), ari.params, False)

    def h_app_filter(self, ari: AriRequest) -> dict:
        """``PUT /applications/{name}/eventFilter``."""
        return self._engine.app_filter(self._app(ari), ari.body if ari.body is not None else {})

    # ----------------------------------------------------------------------------------------------------------------
    # /endpoints

    def _endpoint_json(self, endpoint: Any) -> dict:
        ids = [c.id for c in self._engine.channels.values() if c.endpoint is endpoint and c.alive]
        return {"technology": endpoint.technology, "resource": endpoint.resource, "state": endpoint.state,
                "channel_ids": ids}  # fmt: skip

    def h_endpoints(self, ari: AriRequest) -> list:
        """``GET /endpoints`` (Local channels are not endpoints: fact from endpoints.json)."""
        return [self._endpoint_json(e) for e in self._engine.endpoints.values()]

    def h_endpoints_tech(self, ari: AriRequest) -> list:
        """``GET /endpoints/{tech}``."""
        tech = ari.path_args["tech"]
        found = [e for e in self._engine.endpoints.values() if e.technology == tech]
        if not found:
            raise AriHttpError(404, f"No Endpoints found - invalid tech {tech}")
        return [self._endpoint_json(e) for e in found]

    def h_endpoint(self, ari: AriRequest) -> dict:
        """``GET /endpoints/{tech}/{resource}``."""
        endpoint = self._engine.endpoints.get((ari.path_args["tech"], ari.path_args["resource"]))
        if endpoint is None:
            raise AriHttpError(404, "Endpoint not found")
        return self._endpoint_json(endpoint)

    # ----------------------------------------------------------------------------------------------------------------
    # /channels

    def h_channels(self, ari: AriRequest) -> list:
        """``GET /channels``."""
        return [c.to_json() for c in self._engine.channels.values() if c.alive]

    def h_channel(self, ari: AriRequest) -> dict:
        """``GET /channels/{id}``."""
        return self._channel(ari).to_json()

    def h_originate(self, ari: AriRequest) -> dict:
        """``POST /channels`` and ``POST /channels/{id}``."""
        return self._engine.originate(ari.params, self._variables(ari), ari.path_args.get("channelId"))

    def h_channel_create(self, ari: AriRequest) -> dict:
        """``POST /channels/create``."""
        return self._engine.create(ari.params, self._variables(ari))

    def h_hangup(self, ari: AriRequest) -> None:
        """``DELETE /channels/{id}``."""
        self._engine.hangup(self._channel(ari), ari.params)

    def h_continue(self, ari: AriRequest) -> None:
        """``POST /channels/{id}/continue``."""
        self._engine.continue_in_dialplan(self._channel(ari), ari.params)

    def h_move(self, ari: AriRequest) -> None:
        """``POST /channels/{id}/move``."""
        self._engine.move(self._channel(ari), ari.params)

    def h_redirect(self, ari: AriRequest) -> None:
        """``POST /channels/{id}/redirect``."""
        self._engine.redirect(self._channel(ari), ari.params)

    def h_answer(self, ari: AriRequest) -> None:
        """``POST /channels/{id}/answer``."""
        self._engine.answer(self._channel(ari))

    def h_op(self, ari: AriRequest, op: str) -> None:
        """ring, progress, mute, hold, moh, silence and their DELETE forms."""
        self._engine.simple_op(self._channel(ari), op, ari.params)

    def h_dtmf(self, ari: AriRequest) -> None:
        """``POST /channels/{id}/dtmf``."""
        self._engine.send_dtmf(self._channel(ari), ari.params)

    def h_channel_play(self, ari: AriRequest) -> AriResponse:
        """``POST /channels/{id}/play[/{playbackId}]``: 201 + ``Location``."""
        body = self._engine.play(self._channel(ari), ari.params, ari.path_args.get("playbackId"))
        return AriResponse(201, body, headers=(("Location", f"/ari/playbacks/{body['id']}"),))

    def h_channel_record(self, ari: AriRequest) -> AriResponse:
        """``POST /channels/{id}/record``: 201 + ``Location``."""
        limits = (("maxDurationSeconds", "max_duration_seconds"), ("maxSilenceSeconds", "max_silence_seconds"))
        for name, label in limits:
            if param_int(ari.params.get(name), 0) < 0:
                raise AriHttpError(400, f"{label} cannot be negative")  # checked before the channel, as Asterisk does
        body, location = self._engine.record(self._channel(ari), ari.params)
        return AriResponse(201, body, headers=(("Location", location),))

    def h_var_get(self, ari: AriRequest) -> dict:
        """``GET /channels/{id}/variable`` (works outside Stasis)."""
        name = param_str(ari.params.get("variable"))
        if not name:
            raise AriHttpError(400, "Variable name is required")
        ch = self._channel(ari, "Provided channel was not found")
        return {"value": self._engine.get_variable(ch, name)}

    def h_var_set(self, ari: AriRequest) -> None:
        """``POST /channels/{id}/variable``."""
        name = param_str(ari.params.get("variable"))
        if not name:
            raise AriHttpError(400, "Variable name is required")
        value = ari.params.get("value")
        self._engine.set_variable(self._channel(ari), name, None if value is None else param_str(value),
                                  param_str(ari.params.get("report_events")) == "true")  # fmt: skip

    def h_vars_get(self, ari: AriRequest) -> dict:
        """``GET /channels/{id}/variables?variables=A,B``."""
        names = [n for n in param_str(ari.params.get("variables")).split(",") if n]
        if not names:
            raise AriHttpError(400, "Variable names are required")
        ch = self._channel(ari, "Provided channel was not found")
        return {"variables": {name: self._engine.get_variable(ch, name) for name in names}}

    def h_vars_set(self, ari: AriRequest) -> None:
        """``POST /channels/{id}/variables`` with a JSON body ``{"variables": {...}}``."""
        variables = self._variables(ari)
        if not variables:
            raise AriHttpError(400, "Variables are required")
        ch = self._channel(ari)
        for name, value in variables.items():
            self._engine.set_variable(ch, name, value)

    def h_snoop(self, ari: AriRequest) -> dict:
        """``POST /channels/{id}/snoop[/{snoopId}]``."""
        return self._engine.snoop(ari.path_args["channelId"], ari.params, ari.path_args.get("snoopId"))

    def h_dial(self, ari: AriRequest) -> None:
        """``POST /channels/{id}/dial``."""
        self._engine.dial(self._channel(ari), ari.params)

    def h_rtp_statistics(self, ari: AriRequest) -> dict:
        """``GET /channels/{id}/rtp_statistics``: the fake has no RTP."""
        self._channel(ari)
        raise AriHttpError(404, "Channel RTP statistics not found")

    def h_external_media(self, ari: AriRequest) -> Any:
        """``POST /channels/externalMedia``: for audiosocket, the TCP connection and UUID frame happen first."""
        return self._fake.external_media(ari.params, self._variables(ari))

    # ----------------------------------------------------------------------------------------------------------------
    # /bridges

    def h_bridges(self, ari: AriRequest) -> list:
        """``GET /bridges``."""
        return [b.to_json() for b in self._engine.bridges.values()]

    def h_bridge(self, ari: AriRequest) -> dict:
        """``GET /bridges/{id}``."""
        return self._bridge(ari).to_json()

    def h_bridge_create(self, ari: AriRequest) -> dict:
        """``POST /bridges`` and ``POST /bridges/{id}``."""
        return self._engine.bridge_create(ari.params, ari.path_args.get("bridgeId"))

    def h_bridge_destroy(self, ari: AriRequest) -> None:
        """``DELETE /bridges/{id}``."""
        self._engine.bridge_destroy(self._bridge(ari))

    def h_bridge_add(self, ari: AriRequest) -> None:
        """``POST /bridges/{id}/addChannel``."""
        self._engine.bridge_add(self._bridge(ari), ari.params)

    def h_bridge_remove(self, ari: AriRequest) -> None:
        """``POST /bridges/{id}/removeChannel``."""
        self._engine.bridge_remove(self._bridge(ari), ari.params)

    def h_bridge_play(self, ari: AriRequest) -> AriResponse:
        """``POST /bridges/{id}/play[/{playbackId}]``."""
        body = self._engine.play(self._bridge(ari), ari.params, ari.path_args.get("playbackId"))
        return AriResponse(201, body, headers=(("Location", f"/ari/playbacks/{body['id']}"),))

    def h_bridge_record(self, ari: AriRequest) -> AriResponse:
        """``POST /bridges/{id}/record``."""
        body, location = self._engine.record(self._bridge(ari), ari.params)
        return AriResponse(201, body, headers=(("Location", location),))

    def h_bridge_noop(self, ari: AriRequest) -> None:
        """Bridge music on hold (accepted, no effect)."""
        self._bridge(ari)

    # ----------------------------------------------------------------------------------------------------------------
    # /recordings, /playbacks, /sounds

    def h_stored_list(self, ari: AriRequest) -> list:
        """``GET /recordings/stored``."""
        return [self._engine.stored[name].to_json() for name in sorted(self._engine.stored)]

    def h_stored(self, ari: AriRequest) -> dict:
        """``GET /recordings/stored/{name}``."""
        return self._stored(ari).to_json()

    def h_stored_delete(self, ari: AriRequest) -> None:
        """``DELETE /recordings/stored/{name}``."""
        del self._engine.stored[self._stored(ari).name]

    def h_stored_file(self, ari: AriRequest) -> AriResponse:
        """``GET /recordings/stored/{name}/file`` (``Content-Type: audio/wav`` for wav)."""
        stored = self._stored(ari)
        return AriResponse(200, raw=stored.data, content_type=recording_mime(stored.format))

    def h_stored_copy(self, ari: AriRequest) -> dict:
        """``POST /recordings/stored/{name}/copy``."""
        return self._engine.stored_copy(ari.path_args["recordingName"], ari.params)

    def h_live_cancel(self, ari: AriRequest) -> None:
        """``DELETE /recordings/live/{name}``: stop and discard."""
        self._engine.recording_stop(self._live(ari), cancel=True)

    def h_live_stop(self, ari: AriRequest) -> None:
        """``POST /recordings/live/{name}/stop``: stop and keep."""
        self._engine.recording_stop(self._live(ari), cancel=False)

    def h_live(self, ari: AriRequest, op: str = "") -> Any:
        """``GET /recordings/live/{name}``, and pause/unpause/mute/unmute."""
        rec = self._live(ari)
        if not op:
            return rec.to_json()
        self._engine.recording_control(rec, op)
        return None

    def h_playback(self, ari: AriRequest) -> dict:
        """``GET /playbacks/{id}``."""
        return self._playback(ari).to_json()

    def h_playback_stop(self, ari: AriRequest) -> None:
        """``DELETE /playbacks/{id}``."""
        self._engine.playback_stop(self._playback(ari))

    def h_playback_control(self, ari: AriRequest) -> None:
        """``POST /playbacks/{id}/control?operation=``."""
        pb = self._playback(ari)
        operation = param_str(ari.params.get("operation"))
        if not operation:
            raise AriHttpError(400, "Missing parameter operation")
        self._engine.playback_control(pb, operation)

    def h_sounds(self, ari: AriRequest) -> list:
        """``GET /sounds``."""
        return [self._sound_json(name) for name in sorted(self._engine.sounds)]

    def h_sound(self, ari: AriRequest) -> dict:
        """``GET /sounds/{id}``."""
        name = ari.path_args["soundId"]
        if name not in self._engine.sounds:
            raise AriHttpError(404, "Sound not found")
        return self._sound_json(name)

    @staticmethod
    def _sound_json(name: str) -> dict:
        return {"id": name, "formats": [{"language": "en", "format": "gsm"}]}

    def h_empty_list(self, ari: AriRequest) -> list:
        """Device states and mailboxes: none."""
        return []

    def h_events(self, ari: AriRequest) -> None:
        """``/ari/events`` is served by `FakeAsterisk.render_events` before routing."""
        raise AriHttpError(404, "Resource not found")


def _header(request: Any, name: bytes) -> str | None:
    values = request.requestHeaders.getRawHeaders(name)
    return values[-1].decode("latin-1") if values else None


def valid_app_names(value: str) -> list[str]:
    """The application names of an ``app=a,b`` parameter."""
    return [name for name in re.split(r",", value) if name]
