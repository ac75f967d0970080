"""
Channels of the fake Asterisk that carry a call's media elsewhere: externalMedia (AudioSocket over TCP, whose
connection really is made during the POST, and UnicastRTP, which only has the shape) and snoop.

What the captures fixed (facts 1, 5-7, 14, 15, 24): the AudioSocket connection sends the UUID frame at once and
sets TCP_NODELAY; a 0x00 frame closes it, any kind other than 0x10-0x18 resets it; the response is ``state: Down``
with ``channelvars``, then Up and StasisStart with ``args: [<data>]``; DELETE closes the connection (FIN); a data
value that is not a UUID or a refused connection is 500.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from attrs import define, field
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from avr.testing.ari_applications import Applications
from avr.testing.ari_channels import Channels
from avr.testing.ari_clock import AsteriskClock
from avr.testing.ari_dialing import Dialer
from avr.testing.ari_hangups import Hangups
from avr.testing.ari_model import Channel
from avr.testing.ari_params import AriHttpError, check_codec, param_str, split_args
from avr.testing.ari_stasis import Stasis
from avr.testing.ari_variables import Variables

UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
SNOOP_DIRECTIONS = ("both", "out", "in")
INTERNAL_ERROR = "An internal error prevented this request from being handled"


class FakeAudioSocketConnection(Protocol):
    """
    Asterisk's end of an externalMedia AudioSocket connection: sends the UUID frame ``01 00 10 <16 bytes>`` on
    connect (fact 1), records what the server sends, closes on a 0x00 frame and resets on an invalid kind (facts
    6-7). Tests drive it with `send_audio`/`send_dtmf`.

    :ivar frames: ``(kind, payload)`` frames received from the server.
    :ivar channel: the externalMedia channel, once created.
    """

    log = Logger()
    transport: Any

    def __init__(self, uuid_bytes: bytes, on_lost: Callable[[FakeAudioSocketConnection], None]) -> None:
        self.uuid_bytes = uuid_bytes
        self._on_lost = on_lost
        self._buffer = bytearray()
        self.frames: list[tuple[int, bytes]] = []
        self.connected = False
        self.channel: Channel | None = None

    @property
    def channel_id(self) -> str | None:
        """The externalMedia channel's id."""
        return self.channel.id if self.channel is not None else None

    def connectionMade(self) -> None:
        """Send the UUID frame at once."""
        self.connected = True
        set_nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            set_nodelay(True)
        self.transport.write(b"\x01\x00\x10" + self.uuid_bytes)

    def dataReceived(self, data: bytes) -> None:
        """Parse server frames (kind:u8, length:u16 BE, payload)."""
        self._buffer += data
        while len(self._buffer) >= 3:
            kind = self._buffer[0]
            if kind == 0x00:
                self.frames.append((0, b""))
                self._buffer.clear()
                self.transport.loseConnection()
                return
            if not 0x10 <= kind <= 0x18:
                self.log.error("Received AudioSocket message other than hangup or audio (kind {kind:#04x})", kind=kind)
                self._buffer.clear()
                self.transport.abortConnection()
                return
            length = int.from_bytes(self._buffer[1:3], "big")
            if len(self._buffer) < 3 + length:
                return
            self.frames.append((kind, bytes(self._buffer[3 : 3 + length])))
            del self._buffer[: 3 + length]

    def send_audio(self, kind: int, payload: bytes) -> None:
        """Send one audio frame to the server (as the caller's audio would arrive)."""
        self.transport.write(bytes([kind]) + len(payload).to_bytes(2, "big") + payload)

    def send_dtmf(self, digit: str) -> None:
        """Send a DTMF frame (kind 0x03, one ASCII digit; fact 4)."""
        self.transport.write(b"\x03\x00\x01" + digit.encode("ascii"))

    def close(self) -> None:
        """Close the connection (FIN, no frame: fact 5)."""
        if self.connected and self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        """Tell the fake the server side is gone."""
        self.connected = False
        try:
            self._on_lost(self)
        except Exception:
            self.log.failure("Handling the end of a fake AudioSocket connection failed")


@define(eq=False)
class MediaChannels:
    """
    externalMedia and snoop channels.

    :param connect: ``(host, port) -> IStreamClientEndpoint`` for AudioSocket connections; ``None`` creates the
        channel without one (pure unit tests).
    :ivar audiosockets: the open AudioSocket connections by channel id.
    """

    log = Logger()

    _clock: AsteriskClock
    _apps: Applications
    _channels: Channels
    _variables: Variables
    _stasis: Stasis
    _dialer: Dialer
    _hangups: Hangups
    _connect: Callable[[str, int], Any] | None
    audiosockets: dict[str, FakeAudioSocketConnection] = field(factory=dict, init=False)

    def snoop(self, target_id: str, params: dict[str, Any], snoop_id: str | None) -> dict:
        """``POST /channels/{id}/snoop[/{snoopId}]``: a ``Snoop/…`` channel, already Up, in ``app``."""
        spy = param_str(params.get("spy")) or "none"
        whisper = param_str(params.get("whisper")) or "none"
        if spy != "none" and spy not in SNOOP_DIRECTIONS:
            raise AriHttpError(400, "Invalid direction specified for spy")
        if whisper != "none" and whisper not in SNOOP_DIRECTIONS:
            raise AriHttpError(400, "Invalid direction specified for whisper")
        if spy == "none" and whisper == "none":
            raise AriHttpError(400, "Direction must be specified for at least spy or whisper")
        app = param_str(params.get("app"))
        if not app:
            raise AriHttpError(400, "Application name is required")
        target = self._channels.by_id.get(target_id)
        if target is None:
            raise AriHttpError(404, "Provided channel was not found")
        snoop_id = snoop_id or param_str(params.get("snoopId")) or None
        self._channels.check_ids(snoop_id)
        number = self._channels.next_number("snoop")
        ch = self._channels.new(f"Snoop/{target.id}-{number:08x}", "Snoop", snoop_id, state="Up")
        target.snoops.append(ch)
        snapshot = ch.to_json()
        if not self._stasis.enter(ch, app, split_args(param_str(params.get("appArgs"))), "snoop"):
            self._hangups.end(ch, 16)
        return snapshot

    def external_media(self, params: dict[str, Any], variables: Mapping[str, str] | None) -> Any:
        """
        ``POST /channels/externalMedia``: the response body, or for AudioSocket (with `connect`) a Deferred that
        fires with it once the connection is up and the UUID frame sent.
        """
        kind, host, port, fmt, data = self._check(params)
        if kind != "audiosocket" or self._connect is None:
            return self._create(params, kind, host, port, fmt, data, None, variables)
        d = self._connect(host, int(port)).connect(_AudioSocketFactory(uuid.UUID(data).bytes, self._lost))
        d.addTimeout(5, self._clock.reactor)

        def refused(failure: Any) -> None:
            """No connection: 500, as Asterisk answers."""
            self.log.info("Fake Asterisk: AudioSocket connection to {host}:{port} failed: {why}", host=host,
                          port=port, why=failure.getErrorMessage())  # fmt: skip
            raise AriHttpError(500, INTERNAL_ERROR)

        def connected(conn: FakeAudioSocketConnection) -> dict:
            """Connected (UUID frame sent): create the channel."""
            try:
                body = self._create(params, kind, host, port, fmt, data, conn, variables)
            except Exception:
                conn.close()
                raise
            conn.channel = self._channels.by_id[body["id"]]
            self.audiosockets[body["id"]] = conn
            if not conn.connected:
                self._lost(conn)
            return body

        d.addCallbacks(connected, refused)
        return d

    def _check(self, params: dict[str, Any]) -> tuple[str, str, str, str, str]:
        """Validate before any connection is made: ``(kind, host, port, format, data)``, kind audiosocket or rtp."""
        host = param_str(params.get("external_host"))
        fmt = param_str(params.get("format"))
        encapsulation = (param_str(params.get("encapsulation")) or "rtp").lower()
        transport = (param_str(params.get("transport")) or "udp").lower()
        data = param_str(params.get("data"))
        if not param_str(params.get("app")):
            raise AriHttpError(400, "app cannot be empty")
        if not host:
            raise AriHttpError(400, "external_host cannot be empty")
        if not fmt:
            raise AriHttpError(400, "format cannot be empty")
        if encapsulation == "audiosocket" and transport != "tcp":
            raise AriHttpError(400, "transport must be 'tcp' for audiosocket encapsulation")
        if (encapsulation, transport) not in (("rtp", "udp"), ("audiosocket", "tcp")):
            raise AriHttpError(501, "The encapsulation and/or transport is not supported")
        check_codec(fmt)
        hostname, colon, port = host.rpartition(":")
        if not colon or not hostname or not port.isdigit():
            raise AriHttpError(400, "external_host must be specified as <host>:<port>")
        if encapsulation == "audiosocket":
            if not data:
                raise AriHttpError(400, "data can not be empty")
            if not UUID_RE.match(data):
                raise AriHttpError(500, INTERNAL_ERROR)
        self._channels.check_ids(param_str(params.get("channelId")) or None)
        return encapsulation, hostname, port, fmt, data

    def _create(self, params: dict[str, Any], kind: str, host: str, port: str, fmt: str, data: str,
                connection: FakeAudioSocketConnection | None, variables: Mapping[str, str] | None) -> dict:  # fmt: skip
        """Create the channel once its connection (if any) is up; returns the response body."""
        app = param_str(params.get("app"))
        cid = param_str(params.get("channelId")) or None
        self._channels.check_ids(cid)
        if kind == "audiosocket":
            ch = self._channels.new(f"AudioSocket/{host}:{port}-{data}", "AudioSocket", cid)
            ch.dialstring = f"{host}:{port}/{data}"
            extra = {"AUDIOSOCKET_SERVICE": f"{host}:{port}", "AUDIOSOCKET_UUID": data}
            ch.audiosocket = connection
        else:
            pointer = 0x7F6418000000 + 0x1D0 * self._channels.sequence  # an address in the capture's name
            ch = self._channels.new(f"UnicastRTP/{host}:{port}-0x{pointer:x}", "UnicastRTP", cid)
            ch.dialstring = f"{host}:{port}/c({fmt})"
            extra = {"UNICASTRTP_LOCAL_PORT": str(10000 + 2 * (self._channels.sequence % 5000)),
                     "UNICASTRTP_LOCAL_ADDRESS": "127.0.0.1"}  # fmt: skip
        ch.formats = fmt
        ch.variables.update(extra)
        self._variables.assign_quietly(ch, variables)
        ch.app_name, ch.app_data = "AppDial2", "(Outgoing Line)"
        self._apps.subscribe_channel(app, ch)
        snapshot = ch.to_json()
        snapshot["channelvars"] = extra
        ch.originate_app = app
        ch.originate_args = [data] if data else []
        ch.dialing = True
        self._channels.dial_event(ch, "")
        self._dialer.dial_answered(ch)
        return snapshot

    def _lost(self, conn: FakeAudioSocketConnection) -> None:
        """The AudioSocket server closed the connection: the channel hangs up like a far-end hangup."""
        ch = conn.channel
        if ch is None:
            return
        self.audiosockets.pop(ch.id, None)
        if ch.alive and not ch.ending and ch.audiosocket is not None:
            ch.audiosocket = None
            self._hangups.remote_hangup(ch, 16)

    def close_all(self) -> None:
        """Close every AudioSocket connection (stop, restart, teardown)."""
        for ch in self._channels.by_id.values():
            if ch.audiosocket is not None:
                conn, ch.audiosocket = ch.audiosocket, None
                conn.close()


class _AudioSocketFactory(Factory):
    def __init__(self, uuid_bytes: bytes, on_lost: Callable[[FakeAudioSocketConnection], None]) -> None:
        self._uuid_bytes = uuid_bytes
        self._on_lost = on_lost

    def buildProtocol(self, addr: Any) -> FakeAudioSocketConnection:
        """One connection's protocol."""
        proto = FakeAudioSocketConnection(self._uuid_bytes, self._on_lost)
        proto.factory = self
        return proto
