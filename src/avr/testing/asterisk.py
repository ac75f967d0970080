"""
A simulated Asterisk AudioSocket client, for integration tests and load benchmarks.

`load_capture` reads a real Asterisk capture (``<name>.bin`` + ``.json`` in `avr.testing.captures`' ``audiosocket``).
`SimulatedAsterisk` connects like Asterisk does (UUID frame in one write, TCP_NODELAY), then sends either a capture's
frames at their recorded times (`Replay`: gappy, like a Local channel) or one frame every 20 ms on an absolute
schedule (`Continuous`: like a SIP caller). It reacts to what the server sends as Asterisk 22.10 does: 0x00 → FIN at
once; any other non-audio kind, or empty audio → RST, recorded in ``violations``. Frames are encoded once up front; the
send path is a ``write`` of a prebuilt ``bytes``.
"""

from __future__ import annotations

import json
import os
import uuid as _uuid
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from avr.frames import (
    AUDIO_KIND_RATES,
    MAX_PAYLOAD,
    Frame,
    FrameError,
    FrameParser,
    Kind,
    decode_uuid,
    encode_dtmf,
    encode_frame,
    encode_uuid,
    kind_name,
)
from avr.testing.captures import FIXTURES_ENV, captures_dir
from avr.writethrough import write_through

#: Asterisk's audio frame period.
FRAME_PERIOD = 0.020

#: ``AudioSocket()`` app inactivity limit (``MAX_WAIT_TIMEOUT_MSEC``), for ``idle_timeout``.
APP_IDLE_TIMEOUT = 2.0

# Frames due within this much of "now" are sent now: float clocks (Clock.advance(0.02) n times) drift by ulps.
_EPSILON = 1e-6


def fixtures_dir(fixtures: str | os.PathLike[str] | None = None) -> Path:
    """
    The directory holding the AudioSocket captures (see `avr.testing.captures.captures_dir`).

    :raises FileNotFoundError: the directory does not exist.
    """
    return captures_dir("audiosocket", fixtures)


@frozen
class Capture:
    """
    One real Asterisk → server AudioSocket byte stream.

    :ivar name: the capture's name (file stem).
    :ivar uuid: the UUID of its 0x01 frame.
    :ivar frames: every frame as ``(t_ms, Frame)``, ``t_ms`` counted from the UUID frame's arrival; the UUID first.
    :ivar encoded: the exact bytes of each frame, as Asterisk wrote them (parallel to ``frames``).
    :ivar end_ms: when the connection ended (ms).
    :ivar asterisk_closed: Asterisk ended the connection on its own (caller hangup, idle timeout), not in answer to
        something the capture server did.
    :ivar description: the capture's description.
    """

    name: str
    uuid: str
    frames: tuple[tuple[float, Frame], ...]
    encoded: tuple[bytes, ...]
    end_ms: float | None
    asterisk_closed: bool = True
    description: str = ""

    @property
    def media(self) -> tuple[tuple[float, Frame], ...]:
        """The frames after the UUID (audio and DTMF)."""
        return self.frames[1:]

    @property
    def audio_kind(self) -> int | None:
        """The kind of the capture's audio frames (``None`` if it has none)."""
        for _, frame in self.frames:
            if frame.kind in AUDIO_KIND_RATES:
                return frame.kind
        return None

    @property
    def audio_frame_bytes(self) -> int | None:
        """The most common audio payload length (e.g. 320 for slin 8 kHz, 160 for raw µ-law)."""
        lengths = Counter(len(f.payload) for _, f in self.frames if f.kind in AUDIO_KIND_RATES)
        return lengths.most_common(1)[0][0] if lengths else None

    def audio(self) -> bytes:
        """All audio payloads, concatenated."""
        return b"".join(f.payload for _, f in self.frames if f.kind in AUDIO_KIND_RATES)

    def dtmf(self) -> tuple[tuple[float, str], ...]:
        """The DTMF digits as ``(t_ms, digit)``."""
        return tuple((t, f.payload.decode("ascii")) for t, f in self.frames if f.kind == Kind.DTMF)


def load_capture(name: str, fixtures: str | os.PathLike[str] | None = None) -> Capture:
    """
    Read capture ``name`` and check its ``.json`` frame list against the ``.bin`` bytes.

    :raises FileNotFoundError: no such capture.
    :raises ValueError: the two files disagree.
    """
    directory = fixtures_dir(fixtures)
    raw = (directory / f"{name}.bin").read_bytes()
    meta = json.loads((directory / f"{name}.json").read_text(encoding="utf-8"))
    parsed = FrameParser(max_payload=MAX_PAYLOAD).feed(raw)
    listed = meta["frames"]
    if len(parsed) != len(listed):
        raise ValueError(f"{name}: .bin has {len(parsed)} frames, .json lists {len(listed)}")
    frames = []
    encoded = []
    for frame, entry in zip(parsed, listed, strict=True):
        offset = entry["offset_bytes"]
        if (frame.kind, len(frame.payload)) != (int(entry["kind"], 16), entry["length"]):
            raise ValueError(f"{name}: frame {entry['index']} differs between .bin and .json")
        if "payload_hex" in entry and bytes.fromhex(entry["payload_hex"]) != frame.payload:
            raise ValueError(f"{name}: frame {entry['index']} payload differs between .bin and .json")
        frames.append((float(entry["t_ms"]), frame))
        encoded.append(raw[offset:offset + 3 + len(frame.payload)])
    if not frames or frames[0][1].kind != Kind.UUID:
        raise ValueError(f"{name}: the first frame is not the UUID")
    uuid = decode_uuid(frames[0][1].payload)
    if uuid != meta.get("uuid_in_0x01_frame", uuid):
        raise ValueError(f"{name}: UUID {uuid} differs from the .json's")
    end = meta.get("connection_end") or {}
    asterisk_closed = str(end.get("how", "")).startswith("EOF") and not meta.get("server_sent_non_echo")
    return Capture(name=name, uuid=uuid, frames=tuple(frames), encoded=tuple(encoded),
                   end_ms=None if end.get("t_ms") is None else float(end["t_ms"]), asterisk_closed=asterisk_closed,
                   description=meta.get("description", ""))


def chunk_payloads(data: bytes, frame_bytes: int, pad: bytes | None = b"\x00") -> tuple[bytes, ...]:
    """
    Split ``data`` into payloads of ``frame_bytes``. A short tail is padded with ``pad`` (b"\\x00" is slin silence,
    b"\\xff" µ-law, b"\\xd5" A-law), or dropped when ``pad`` is ``None``.

    :raises ValueError: no whole payload results.
    """
    if frame_bytes <= 0:
        raise ValueError("frame_bytes must be positive")
    remainder = len(data) % frame_bytes
    if remainder:
        data = data[:-remainder] if pad is None else data + pad * (frame_bytes - remainder)
    if not data:
        raise ValueError("no audio to send")
    return tuple(data[i:i + frame_bytes] for i in range(0, len(data), frame_bytes))


@frozen
class Replay:
    """
    Send a capture's media frames (audio and DTMF) at their recorded times, byte for byte.

    :ivar capture: what to replay.
    :ivar hang_up_at_end: close the connection at the capture's ``end_ms`` when Asterisk closed it on its own there
        (`Capture.asterisk_closed`); otherwise (the server ended the captured call) stay connected after the last frame.
    """

    capture: Capture
    hang_up_at_end: bool = True


@frozen
class Continuous:
    """
    One audio frame every 20 ms on an absolute schedule, looping ``payloads``, like a SIP/RTP caller.

    :ivar kind: the audio kind to send (0x10-0x18).
    :ivar payloads: the payloads to loop (see `chunk_payloads`, `from_pcm`, `from_capture`).
    :ivar duration: seconds of audio (``None``: until `SimulatedAsterisk.stop_audio` or a hangup).
    :ivar dtmf: ``(seconds, digit)`` to send, counted from the UUID frame.
    :ivar hang_up_at_end: close the connection once ``duration`` has been sent.
    """

    kind: int
    payloads: tuple[bytes, ...]
    duration: float | None = None
    dtmf: tuple[tuple[float, str], ...] = ()
    hang_up_at_end: bool = True

    @classmethod
    def from_pcm(cls, pcm: bytes, kind: int = Kind.SLIN8, frame_bytes: int | None = None, **kwargs: Any) -> Continuous:
        """Loop ``pcm`` (slin at ``kind``'s rate, or raw G.711 with ``frame_bytes=160``) in 20 ms frames."""
        if frame_bytes is None:
            frame_bytes = AUDIO_KIND_RATES[kind] // 50 * 2
        return cls(kind=kind, payloads=chunk_payloads(pcm, frame_bytes), **kwargs)

    @classmethod
    def from_capture(cls, capture: Capture, **kwargs: Any) -> Continuous:
        """Loop a capture's audio (raw µ-law included), re-chunked to its usual frame size, with its kind."""
        kind = capture.audio_kind
        size = capture.audio_frame_bytes
        if kind is None or size is None:
            raise ValueError(f"capture {capture.name} has no audio")
        return cls(kind=kind, payloads=chunk_payloads(capture.audio(), size, pad=None), **kwargs)


class SimulatedAsterisk(Protocol):
    """
    The client end of one AudioSocket connection, behaving like Asterisk.

    On connect it sets TCP_NODELAY, writes the 19-byte UUID frame and starts ``plan``. Everything the server sends is
    parsed and kept in ``received`` as ``(clock time, Frame)``.

    :param clock: time source and scheduler (the reactor, or a ``Clock`` in tests).
    :param plan: a `Replay`, a `Continuous`, or ``None`` (send nothing; drive it with `send_frame` etc.).
    :param uuid: the UUID to send; default the replayed capture's, else a random one.
    :param send_uuid: false: send no UUID, like the ``AudioSocket()`` app on an unanswered channel.
    :param uuid_delay: seconds between connecting and the UUID frame (chan_audiosocket writes it at call time).
    :param idle_timeout: emulate the ``AudioSocket()`` app: close after this many seconds with no frame in either
        direction (`APP_IDLE_TIMEOUT`); ``None`` = no timeout (channel driver / externalMedia).
    :param record: keep received frames in ``received`` (turn off for long load runs; counters are always kept).
    :param on_frame: called with ``(time, frame)`` for every frame received.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        plan: Replay | Continuous | None = None,
        uuid: str | None = None,
        *,
        send_uuid: bool = True,
        uuid_delay: float = 0.0,
        idle_timeout: float | None = None,
        record: bool = True,
        on_frame: Callable[[float, Frame], None] | None = None,
    ) -> None:
        self.clock = clock
        self.plan = plan
        if uuid is None:
            uuid = plan.capture.uuid if isinstance(plan, Replay) else str(_uuid.uuid4())
        #: The call's UUID (sent first unless ``send_uuid`` is false).
        self.uuid: str = uuid
        self._uuid_frame = encode_uuid(uuid) if send_uuid else None
        self.uuid_delay = uuid_delay
        self.idle_timeout = idle_timeout
        self.record = record
        self.on_frame = on_frame
        #: ``(clock time, Frame)`` for every frame received from the server (when ``record``).
        self.received: list[tuple[float, Frame]] = []
        #: Protocol violations by the server (non-audio kinds other than 0x00, empty audio, garbage).
        self.violations: list[str] = []
        self.frames_received = 0
        self.audio_bytes_received = 0
        self.frames_sent = 0
        self.connected = False
        self.connected_at: float | None = None
        #: Clock time of the UUID write; media times are counted from it.
        self.started_at: float | None = None
        self.closed_at: float | None = None
        #: Why this side ended the connection, or what the server did (``None`` while open).
        self.end_reason: str | None = None
        #: The connectionLost reason.
        self.lost_reason: Failure | None = None
        #: Fires with ``end_reason`` when the connection is closed.
        self.done: Deferred[str] = Deferred()
        self._parser = FrameParser(max_payload=MAX_PAYLOAD)
        self._write: Callable[[bytes], None] = lambda data: None
        self._timers: dict[str, Any] = {}
        self._last_activity = 0.0
        self._ended = False
        # Replay state
        self._replay: list[tuple[float, bytes]] = []
        self._replay_index = 0
        # Continuous state
        self._payload_frames: tuple[bytes, ...] = ()
        self._tick = 0
        self._ticks_total: int | None = None
        self._dtmf: list[tuple[float, str]] = []
        self._dtmf_index = 0
        if isinstance(plan, Replay):
            media, encoded = plan.capture.media, plan.capture.encoded[1:]
            self._replay = [(t / 1000.0, data) for (t, _), data in zip(media, encoded, strict=True)]
        elif isinstance(plan, Continuous):
            if plan.kind not in AUDIO_KIND_RATES:
                raise ValueError(f"not an audio kind: 0x{plan.kind:02x}")
            self._payload_frames = tuple(encode_frame(plan.kind, p) for p in plan.payloads)
            if plan.duration is not None:
                self._ticks_total = max(0, round(plan.duration / FRAME_PERIOD))
            self._dtmf = sorted(plan.dtmf)

    # --- driving -----------------------------------------------------------------------------------------------------

    def send_frame(self, data: bytes) -> None:
        """Write one encoded frame now (e.g. `encode_frame`, `encode_dtmf`), as Asterisk does: at once."""
        if self.connected:
            self._write(data)
            self.frames_sent += 1
            self._last_activity = self.clock.seconds()

    def send_dtmf(self, digit: str) -> None:
        """Send one DTMF digit now (as Asterisk does when the digit ends)."""
        self.send_frame(encode_dtmf(digit))

    def stop_audio(self) -> None:
        """Stop sending the plan's frames (the connection stays open)."""
        for name in ("media", "dtmf"):
            self._cancel(name)

    def hang_up(self) -> None:
        """The caller hangs up: Asterisk just closes the socket (FIN), without any frame."""
        self._close("caller hung up")

    # --- Protocol ----------------------------------------------------------------------------------------------------

    def connectionMade(self) -> None:
        """Send the UUID (now or after ``uuid_delay``)."""
        self.connected = True
        self._write = write_through(self.transport)
        self.connected_at = self._last_activity = self.clock.seconds()
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        if self.idle_timeout is not None:
            self._timers["idle"] = self.clock.callLater(self.idle_timeout, self._check_idle)
        if self._uuid_frame is None:
            return
        if self.uuid_delay > 0:
            self._timers["uuid"] = self.clock.callLater(self.uuid_delay, self._start)
        else:
            self._start()

    def dataReceived(self, data: bytes) -> None:
        """Parse what the server sent and react like Asterisk."""
        if self._ended:
            return
        now = self.clock.seconds()
        self._last_activity = now
        error = None
        try:
            frames = self._parser.feed(data)
        except FrameError as e:
            error, frames = e, e.frames
        for frame in frames:
            self.frames_received += 1
            if self.record:
                self.received.append((now, frame))
            if self.on_frame is not None:
                self.on_frame(now, frame)
            kind = frame.kind
            if kind in AUDIO_KIND_RATES:
                if not frame.payload:
                    self._violation(f"zero-length audio frame ({kind_name(kind)})")
                    return
                self.audio_bytes_received += len(frame.payload)
            elif kind == Kind.HANGUP:
                self._close("server sent hangup frame")
                return
            else:
                self._violation(f"message other than hangup or audio: {kind_name(kind)}")
                return
        if error is not None:
            self._violation(f"unparseable data: {error.reason}")

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Record the end and fire ``done``."""
        self.connected = False
        self.closed_at = self.clock.seconds()
        self.lost_reason = reason
        self._ended = True
        for name in list(self._timers):
            self._cancel(name)
        if self.end_reason is None:
            if reason is None or reason.check(ConnectionDone):
                self.end_reason = "server closed the connection"
            else:
                self.end_reason = f"connection lost: {reason.getErrorMessage()}"
        self.done.callback(self.end_reason)

    # --- internals ---------------------------------------------------------------------------------------------------

    def _start(self) -> None:
        self._timers.pop("uuid", None)
        self.started_at = self.clock.seconds()
        self.send_frame(self._uuid_frame)  # type: ignore[arg-type]
        if self._replay:
            self._schedule("media", self._replay[0][0], self._replay_due)
        elif isinstance(self.plan, Replay):
            self._replay_finished()
        elif isinstance(self.plan, Continuous):
            if self._ticks_total != 0:
                self._continuous_due()
            elif self.plan.hang_up_at_end:
                self.hang_up()
            if self._dtmf:
                self._schedule("dtmf", self._dtmf[0][0], self._dtmf_due)

    def _schedule(self, name: str, at: float, func: Callable[[], None]) -> None:
        """Run ``func`` at ``at`` seconds after the UUID frame (absolute: lateness is not carried forward)."""
        delay = self.started_at + at - self.clock.seconds()  # type: ignore[operator]
        self._timers[name] = self.clock.callLater(max(0.0, delay), func)

    def _replay_due(self) -> None:
        self._timers.pop("media", None)
        elapsed = self.clock.seconds() - self.started_at + _EPSILON  # type: ignore[operator]
        replay = self._replay
        while self._replay_index < len(replay) and replay[self._replay_index][0] <= elapsed:
            self.send_frame(replay[self._replay_index][1])
            self._replay_index += 1
            if not self.connected:
                return
        if self._replay_index < len(replay):
            self._schedule("media", replay[self._replay_index][0], self._replay_due)
        else:
            self._replay_finished()

    def _replay_finished(self) -> None:
        plan = self.plan
        assert isinstance(plan, Replay)
        if plan.hang_up_at_end and plan.capture.asterisk_closed:
            end = plan.capture.end_ms / 1000.0 if plan.capture.end_ms is not None else 0.0
            self._schedule("media", end, self.hang_up)

    def _continuous_due(self) -> None:
        self._timers.pop("media", None)
        frames = self._payload_frames
        count = len(frames)
        elapsed = self.clock.seconds() - self.started_at + _EPSILON  # type: ignore[operator]
        total = self._ticks_total
        while self._tick * FRAME_PERIOD <= elapsed and (total is None or self._tick < total):
            self.send_frame(frames[self._tick % count])
            self._tick += 1
            if not self.connected:
                return
        if total is not None and self._tick >= total:
            if self.plan.hang_up_at_end:  # type: ignore[union-attr]
                self.hang_up()
            return
        self._schedule("media", self._tick * FRAME_PERIOD, self._continuous_due)

    def _dtmf_due(self) -> None:
        self._timers.pop("dtmf", None)
        elapsed = self.clock.seconds() - self.started_at + _EPSILON  # type: ignore[operator]
        while self._dtmf_index < len(self._dtmf) and self._dtmf[self._dtmf_index][0] <= elapsed:
            self.send_dtmf(self._dtmf[self._dtmf_index][1])
            self._dtmf_index += 1
        if self._dtmf_index < len(self._dtmf):
            self._schedule("dtmf", self._dtmf[self._dtmf_index][0], self._dtmf_due)

    def _check_idle(self) -> None:
        self._timers.pop("idle", None)
        quiet = self.clock.seconds() - self._last_activity
        if quiet + _EPSILON >= self.idle_timeout:  # type: ignore[operator]
            self.log.info("Simulated Asterisk {call_id}: no activity for {timeout} s, closing",
                          call_id=self.uuid, timeout=self.idle_timeout)
            self._close("idle timeout")
        else:
            self._timers["idle"] = self.clock.callLater(self.idle_timeout - quiet, self._check_idle)  # type: ignore[operator]

    def _violation(self, what: str) -> None:
        """Asterisk's answer to a bad message: log an error and reset the connection."""
        self.violations.append(what)
        self.log.info("Simulated Asterisk {call_id}: {what}; resetting the connection", call_id=self.uuid, what=what)
        self._ended = True
        self.end_reason = f"protocol violation: {what}"
        self._stop_timers()
        self.connected = False
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _close(self, reason: str) -> None:
        if self._ended:
            return
        self._ended = True
        self.end_reason = reason
        self._stop_timers()
        self.connected = False
        self.transport.loseConnection()  # type: ignore[union-attr]

    def _stop_timers(self) -> None:
        for name in list(self._timers):
            self._cancel(name)

    def _cancel(self, name: str) -> None:
        timer = self._timers.pop(name, None)
        if timer is not None and timer.active():
            timer.cancel()


async def connect_simulated_asterisk(
    reactor: Any, host: str, port: int, plan: Replay | Continuous | None = None, **kwargs: Any
) -> tuple[SimulatedAsterisk, Deferred[str]]:
    """
    Connect a `SimulatedAsterisk` to ``host:port`` (2 s timeout, as Asterisk's connect).

    :param reactor: the reactor (also used as the simulator's clock).
    :param kwargs: passed to `SimulatedAsterisk`.
    :return: the connected protocol and its ``done`` Deferred (fires with the end reason when the connection closes).
    """
    protocol = SimulatedAsterisk(reactor, plan, **kwargs)
    await connectProtocol(HostnameEndpoint(reactor, host, port, timeout=2), protocol)
    return protocol, protocol.done


__all__ = [
    "APP_IDLE_TIMEOUT", "Capture", "Continuous", "FIXTURES_ENV", "FRAME_PERIOD", "Replay",
    "SimulatedAsterisk", "chunk_payloads", "connect_simulated_asterisk", "fixtures_dir", "load_capture",
]
