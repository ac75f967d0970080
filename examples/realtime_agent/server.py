"""
The example agent's program: a WebSocket server speaking the AVR STS protocol to avr, and per call one WebSocket
client to an OpenAI-Realtime-compatible endpoint, joined by a `CallBridge`.

Run it from avr's checkout (its ``.venv`` has everything)::

    OPENAI_API_KEY=sk-... .venv/bin/python -m examples.realtime_agent          # listens on ws://127.0.0.1:6030
    STS_URL=ws://127.0.0.1:6030 scripts/serve                                  # avr, in another terminal

Settings come from options or environment variables (``--help``); the API key only from the environment
(``OPENAI_API_KEY``), so that it is not on the command line, and it is never logged: autobahn writes the handshake
(headers included) in its debug lines, so autobahn's messages below warnings are never shown.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from typing import Any, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python.failure import Failure

from examples.realtime_agent.bridge import DEFAULT_INSTRUCTIONS, AgentSettings, CallBridge

log = Logger()

DEFAULT_REALTIME_URL = "wss://api.openai.com/v1/realtime"
DEFAULT_MODEL = "gpt-realtime"


@frozen
class RealtimeEndpoint:
    """
    Where the Realtime sessions are opened.

    :ivar url: the WebSocket URL, ``model`` in its query.
    :ivar api_key: sent as ``Authorization: Bearer``; ``None`` sends no such header (a local server).
    """

    url: str
    api_key: str | None = None

    def __repr__(self) -> str:
        return f"RealtimeEndpoint(url={self.url!r}, api_key={'***' if self.api_key else None})"

    def redact(self, text: str) -> str:
        """``text`` with the API key masked (for error messages that may quote a request)."""
        return text.replace(self.api_key, "***") if self.api_key else text


def realtime_url(url: str, model: str) -> str:
    """``url`` with ``model=<model>`` in its query, unless it names a model already."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not any(name == "model" for name, _ in query):
        query.append(("model", model))
    return urlunsplit(parts._replace(query=urlencode(query)))


class RealtimeClientProtocol(WebSocketClientProtocol):
    """The Realtime side of one call: events to and from its `AvrCallProtocol`."""

    def __init__(self, call: AvrCallProtocol) -> None:
        super().__init__()
        self.call = call

    def onOpen(self) -> None:
        self.call.realtime_opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            return
        try:
            event = json.loads(payload)
        except ValueError:
            log.warn("Call {uuid}: ignoring a Realtime message that is not JSON", uuid=self.call.bridge.uuid)
            return
        if isinstance(event, dict):
            self.call.bridge.realtime_event(event)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.call.realtime_closed(self.wasNotCleanReason or reason or f"code {code}")


class AvrCallProtocol(WebSocketServerProtocol):
    """
    One call from avr (one WebSocket connection): opens the Realtime session, hands both sides' messages to its
    `CallBridge`, and ends the call (closes avr's connection) when the Realtime session ends or cannot be opened.
    """

    bridge: CallBridge

    def __init__(self) -> None:
        super().__init__()
        self._realtime: RealtimeClientProtocol | None = None
        self._connecting: Deferred[Any] | None = None
        self._ended = False

    def onConnect(self, request: Any) -> None:
        # The URL avr dialled: its query holds the POST /call payload (from, to, uniqueid, channel...).
        self._query = dict(request.params)

    def onOpen(self) -> None:
        factory: AgentFactory = self.factory
        self.bridge = CallBridge(factory.settings, factory.reactor, self._send_avr, self._send_realtime)
        self._connecting = factory.connect_realtime(self)
        self._connecting.addErrback(self._realtime_failed)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary or self._ended:
            return
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if isinstance(message, dict):
            self.bridge.avr_message(message)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        # avr ended the call (or the connection broke): end the Realtime session too.
        self._ended = True
        if not hasattr(self, "bridge"):
            return
        self.bridge.close()
        log.info("Call {uuid}: avr closed the session ({reason})", uuid=self.bridge.uuid, reason=reason or code)
        if self._connecting is not None:
            self._connecting.cancel()
        if self._realtime is not None:
            self._realtime.sendClose(1000)

    # -- the Realtime session

    def realtime_opened(self, realtime: RealtimeClientProtocol) -> None:
        self._connecting = None
        if self._ended:
            realtime.sendClose(1000)
            return
        self._realtime = realtime
        self.bridge.realtime_opened()

    def realtime_closed(self, reason: str) -> None:
        self._realtime = None
        if not self._ended:
            self._end(f"the Realtime session ended: {self.factory.endpoint.redact(reason)}")

    def _realtime_failed(self, failure: Failure) -> None:
        self._connecting = None
        if not self._ended:
            self._end(f"cannot reach the Realtime endpoint: {self.factory.endpoint.redact(failure.getErrorMessage())}")

    def _end(self, why: str) -> None:
        log.warn("Call {uuid}: {why}", uuid=self.bridge.uuid, why=why)
        self._send_avr({"type": "error", "message": why})
        self._ended = True
        self.bridge.close()
        self.sendClose(1000, why[:120])

    def _send_avr(self, message: dict[str, Any]) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(json.dumps(message, separators=(",", ":")).encode(), isBinary=False)

    def _send_realtime(self, event: dict[str, Any]) -> None:
        realtime = self._realtime
        if realtime is not None and realtime.state == realtime.STATE_OPEN:
            realtime.sendMessage(json.dumps(event, separators=(",", ":")).encode(), isBinary=False)


class AgentFactory(WebSocketServerFactory):
    """
    The agent's WebSocket server, for avr's ``STS_URL``.

    :param reactor: for connections and timers.
    :param settings: every call's settings.
    :param endpoint: where each call's Realtime session is opened.
    :param connect_timeout: seconds to reach the Realtime endpoint.
    """

    protocol = AvrCallProtocol

    def __init__(self, reactor: Any, settings: AgentSettings, endpoint: RealtimeEndpoint,
                 connect_timeout: float = 10.0) -> None:
        super().__init__(reactor=reactor)
        self.settings = settings
        self.endpoint = endpoint
        self.connect_timeout = connect_timeout

    def connect_realtime(self, call: AvrCallProtocol) -> Deferred[Any]:
        """Connect ``call``'s Realtime session (the Deferred fires once TCP/TLS is up; `realtime_opened` follows)."""
        headers = {"Authorization": f"Bearer {self.endpoint.api_key}"} if self.endpoint.api_key else {}
        factory = WebSocketClientFactory(self.endpoint.url, headers=headers, reactor=self.reactor)
        factory.protocol = partial(RealtimeClientProtocol, call)  # type: ignore[assignment]
        endpoint: Any = HostnameEndpoint(self.reactor, factory.host, factory.port, timeout=self.connect_timeout)
        if factory.isSecure:
            endpoint = wrapClientTLS(optionsForClientTLS(factory.host), endpoint)
        d: Deferred[Any] = endpoint.connect(factory)
        return d


def log_observer(level: LogLevel = LogLevel.info, out: Any = sys.stdout) -> ILogObserver:
    """Log lines to ``out`` from ``level`` up; autobahn's only from warnings up (its debug lines quote headers)."""
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    predicate.setLogLevelForNamespace("autobahn", LogLevel.warn)
    return FilteringLogObserver(textFileLogObserver(out), [predicate])


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with environment variables as defaults."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.realtime_agent",
        description="An AVR STS agent bridging each call to an OpenAI-Realtime-compatible endpoint. The API key is "
                    "read from OPENAI_API_KEY.")
    add = parser.add_argument
    add("--host", default=_env("AGENT_HOST", "127.0.0.1"), help="interface to listen on (AGENT_HOST)")
    add("--port", type=int, default=int(_env("AGENT_PORT", "6030") or 6030), help="port (AGENT_PORT)")
    add("--sample-rate", type=int, default=int(_env("STS_SAMPLE_RATE", "8000") or 8000),
        help="rate of the PCM exchanged with avr: avr's STS_SAMPLE_RATE (same variable); 24000 spares the agent "
             "any resampling")
    add("--url", default=_env("REALTIME_URL", DEFAULT_REALTIME_URL), help="Realtime WebSocket URL (REALTIME_URL)")
    add("--model", default=_env("REALTIME_MODEL", DEFAULT_MODEL), help="model, added to the URL (REALTIME_MODEL)")
    add("--voice", default=_env("REALTIME_VOICE", "marin"), help="voice (REALTIME_VOICE)")
    add("--instructions", default=_env("REALTIME_INSTRUCTIONS", DEFAULT_INSTRUCTIONS),
        help="system instructions (REALTIME_INSTRUCTIONS)")
    add("--transcription-model", default=_env("REALTIME_TRANSCRIPTION_MODEL", "gpt-4o-mini-transcribe"),
        help="model transcribing the caller, 'none' = no user transcripts (REALTIME_TRANSCRIPTION_MODEL)")
    add("--greeting", default=_env("REALTIME_GREETING"), help="the agent speaks first, saying this (REALTIME_GREETING)")
    add("--transfer-endpoint", default=_env("AGENT_TRANSFER_ENDPOINT"),
        help="give the model a transfer_call tool to this dial string, e.g. PJSIP/1002 (AGENT_TRANSFER_ENDPOINT)")
    add("--log-level", default=_env("AGENT_LOG_LEVEL", "info"), choices=["debug", "info", "warn", "error"],
        help="AGENT_LOG_LEVEL")
    return parser.parse_args(argv)


def build(reactor: Any, args: argparse.Namespace, api_key: str | None) -> AgentFactory:
    """The agent's server factory from the parsed settings."""
    transcription = args.transcription_model if args.transcription_model not in ("", "none") else None
    settings = AgentSettings(instructions=args.instructions, voice=args.voice, transcription_model=transcription,
                             greeting=args.greeting, transfer_endpoint=args.transfer_endpoint,
                             sample_rate=args.sample_rate)
    return AgentFactory(reactor, settings, RealtimeEndpoint(realtime_url(args.url, args.model), api_key))


def main(argv: Sequence[str] | None = None) -> None:
    """Run the agent until interrupted."""
    from twisted.internet import reactor

    args = parse_args(argv)
    api_key = os.environ.get("OPENAI_API_KEY") or None
    if api_key is None and urlsplit(args.url).hostname == "api.openai.com":
        sys.exit("OPENAI_API_KEY is not set")
    globalLogBeginner.beginLoggingTo([log_observer(LogLevel.levelWithName(args.log_level))],
                                     redirectStandardIO=False)
    factory = build(reactor, args, api_key)
    port = reactor.listenTCP(args.port, factory, interface=args.host)
    where: Any = port.getHost()
    log.info("Realtime agent listening on ws://{host}:{port} (STS_URL for avr), PCM at {rate} Hz, Realtime: {url}",
             host=where.host, port=where.port, rate=args.sample_rate, url=factory.endpoint.url)
    reactor.run()
