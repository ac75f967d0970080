"""Tests for avr.testing.asterisk: capture loading and the simulated Asterisk AudioSocket client."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from avr.frames import HANGUP_FRAME, Frame, FrameParser, Kind, encode_frame, encode_uuid
from avr.testing.asterisk import (
    APP_IDLE_TIMEOUT,
    FIXTURES_ENV,
    Continuous,
    Replay,
    SimulatedAsterisk,
    chunk_payloads,
    fixtures_dir,
    load_capture,
)

UUID = "b5768917-0f8e-47b3-89df-6b961073e64d"


class TimedTransport(StringTransport):
    """Records the clock time and bytes of every write."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.writes: list[tuple[float, bytes]] = []
        self.no_delay = False

    def write(self, data: bytes) -> None:
        """Record one write."""
        self.writes.append((self.clock.seconds(), data))
        super().write(data)

    def setTcpNoDelay(self, enabled: bool) -> None:
        """Record TCP_NODELAY."""
        self.no_delay = enabled


def start(plan: Replay | Continuous | None = None, clock: Clock | None = None, **options: object
          ) -> tuple[SimulatedAsterisk, TimedTransport, Clock]:
    """A simulator connected to a TimedTransport at clock time 100."""
    clock = clock or Clock()
    clock.advance(100)
    asterisk = SimulatedAsterisk(clock, plan, **options)  # type: ignore[arg-type]
    transport = TimedTransport(clock)
    asterisk.makeConnection(transport)
    return asterisk, transport, clock


def pump(clock: Clock, until: float) -> None:
    """Advance exactly to each pending call's time, up to ``until``."""
    while True:
        due = [c.getTime() for c in clock.getDelayedCalls()]
        if not due or min(due) > until:
            break
        clock.advance(max(0.0, min(due) - clock.seconds()))
    if clock.seconds() < until:
        clock.advance(until - clock.seconds())


def close(asterisk: SimulatedAsterisk, error: Exception | None = None) -> None:
    """Deliver connectionLost."""
    asterisk.connectionLost(Failure(error or ConnectionDone()))


# --- captures --------------------------------------------------------------------------------------------------------

def test_load_capture_matches_the_json() -> None:
    """A capture gives the UUID, every frame with its time, the exact bytes, and how it ended."""
    capture = load_capture("a_app_slin8_hello_dtmf_caller_hangup")
    assert capture.uuid == UUID
    assert len(capture.frames) == 75 and capture.frames[0][1].kind == Kind.UUID
    assert capture.frames[1][0] == 20.1 and capture.frames[1][1].kind == Kind.SLIN8
    assert capture.dtmf() == ((1602.4, "1"), (1802.9, "2"), (2003.3, "3"), (2203.8, "#"))
    assert b"".join(capture.encoded) == (fixtures_dir() / f"{capture.name}.bin").read_bytes()
    assert (capture.end_ms, capture.asterisk_closed) == (2804.9, True)
    assert (capture.audio_kind, capture.audio_frame_bytes) == (Kind.SLIN8, 320)
    assert len(capture.audio()) == 69 * 320 + 24


def test_server_ended_captures_are_marked() -> None:
    """Captures where the server hung up or misbehaved are not 'closed by Asterisk on its own'."""
    assert not load_capture("e_app_server_sends_hangup").asterisk_closed
    assert not load_capture("f_app_server_sends_kind_0xff").asterisk_closed
    assert load_capture("g_app_idle_timeout_no_media").asterisk_closed


def test_capture_that_disagrees_with_its_bin_is_refused(tmp_path: Path) -> None:
    """A .json whose frame list does not match the .bin raises ValueError."""
    source = fixtures_dir()
    name = "c_dial_chan_native_ulaw_caller"
    shutil.copy(source / f"{name}.bin", tmp_path / f"{name}.bin")
    meta = json.loads((source / f"{name}.json").read_text())
    meta["frames"][3]["length"] = 161
    (tmp_path / f"{name}.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="frame 3"):
        load_capture(name, tmp_path)


def test_fixtures_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """AVR_FIXTURES may name the asterisk folder or its audiosocket subfolder; a missing one is a clear error."""
    (tmp_path / "audiosocket").mkdir()
    name = "g_app_idle_timeout_no_media"
    for suffix in (".bin", ".json"):
        shutil.copy(fixtures_dir() / f"{name}{suffix}", tmp_path / "audiosocket" / f"{name}{suffix}")
    monkeypatch.setenv(FIXTURES_ENV, str(tmp_path))
    assert fixtures_dir() == tmp_path / "audiosocket"
    assert load_capture(name).uuid == "444622e3-7f51-4c32-980f-9f6921e06a86"
    monkeypatch.setenv(FIXTURES_ENV, str(tmp_path / "audiosocket"))
    assert fixtures_dir() == tmp_path / "audiosocket"
    with pytest.raises(FileNotFoundError, match=FIXTURES_ENV):
        fixtures_dir(tmp_path / "nowhere")


def test_chunk_payloads() -> None:
    """Audio is cut into equal payloads; the tail is padded or dropped."""
    assert chunk_payloads(b"abcde", 2) == (b"ab", b"cd", b"e\x00")
    assert chunk_payloads(b"abcde", 2, pad=b"\xff") == (b"ab", b"cd", b"e\xff")
    assert chunk_payloads(b"abcde", 2, pad=None) == (b"ab", b"cd")
    with pytest.raises(ValueError):
        chunk_payloads(b"a", 2, pad=None)


# --- replay -----------------------------------------------------------------------------------------------------------

def test_replay_sends_uuid_then_frames_at_capture_times() -> None:
    """The UUID goes in one 19-byte write at connect; each frame goes in its own write at its captured time."""
    capture = load_capture("a_app_slin8_hello_dtmf_caller_hangup")
    asterisk, transport, clock = start(Replay(capture))
    assert transport.no_delay
    assert transport.writes == [(100.0, encode_uuid(UUID))]
    pump(clock, 102.8048)
    times = [round((t - 100.0) * 1000, 6) for t, _ in transport.writes]
    assert times == [t for t, _ in capture.frames]
    assert transport.value() == (fixtures_dir() / f"{capture.name}.bin").read_bytes()
    assert not transport.disconnecting
    # The caller hangs up at the captured time (2804.9 ms): FIN, not RST.
    pump(clock, 102.805)
    assert transport.disconnecting and not transport.disconnected
    assert asterisk.end_reason == "caller hung up"
    close(asterisk)
    assert clock.getDelayedCalls() == []


def test_replay_with_a_different_uuid_and_gap() -> None:
    """The externalMedia capture replays its 2 s silence gap; the UUID can be replaced for a new call."""
    capture = load_capture("d_ari_external_media_slin16")
    other = "43bd824e-4838-4b39-8b7c-b0b7484576fa"
    asterisk, transport, clock = start(Replay(capture), uuid=other)
    assert transport.writes[0][1] == encode_uuid(other)
    pump(clock, 101.9)
    assert len(transport.writes) == 1
    pump(clock, 102.1)
    assert [data[0] for _, data in transport.writes[1:]] == [Kind.SLIN16] * 5


def test_replay_of_a_server_ended_capture_stays_connected() -> None:
    """Replaying a capture where the server hung up: after the last frame the simulator waits for the server."""
    capture = load_capture("e_app_server_sends_hangup")
    asterisk, transport, clock = start(Replay(capture))
    pump(clock, 130)
    assert len(transport.writes) == 101 and not transport.disconnecting
    assert clock.getDelayedCalls() == []
    asterisk.dataReceived(HANGUP_FRAME)
    assert transport.disconnecting and not transport.disconnected


# --- continuous -------------------------------------------------------------------------------------------------------

def test_continuous_keeps_absolute_20ms_spacing_over_3000_frames() -> None:
    """A clock ticking in odd 7 ms steps: frame n leaves within one step of n*20 ms, with no drift, then FIN."""
    plan = Continuous.from_pcm(bytes(range(256)) * 5, kind=Kind.SLIN8, duration=60.0)
    asterisk, transport, clock = start(plan)
    while clock.seconds() < 161:
        clock.advance(0.007)
    frames = transport.writes[1:]
    assert len(frames) == 3000
    for n, (t, data) in enumerate(frames):
        assert 0 <= (t - 100.0) - n * 0.020 < 0.007 + 1e-9
        assert len(data) == 323 and data[0] == Kind.SLIN8
    assert transport.disconnecting and asterisk.end_reason == "caller hung up"
    close(asterisk)
    assert clock.getDelayedCalls() == []


def test_continuous_exact_schedule_and_catch_up() -> None:
    """On an exact clock each frame leaves at n*20 ms; after a stall the overdue frames go out, then the grid
    resumes."""
    plan = Continuous.from_pcm(bytes(640), kind=Kind.SLIN16)
    asterisk, transport, clock = start(plan)
    pump(clock, 100.1)
    assert [round(t - 100, 9) for t, _ in transport.writes[1:]] == [0.0, 0.02, 0.04, 0.06, 0.08, 0.1]
    clock.advance(0.095)  # a stall: frames due at 0.12 ... 0.18 are late
    assert len(transport.writes) == 1 + 10
    assert [round(t - 100, 9) for t, _ in transport.writes[7:]] == [0.195] * 4  # 0.12, 0.14, 0.16, 0.18
    pump(clock, 100.26)
    assert [round(t - 100, 9) for t, _ in transport.writes[11:]] == [0.2, 0.22, 0.24, 0.26]
    asterisk.stop_audio()
    sent = len(transport.writes)
    pump(clock, 101)
    assert len(transport.writes) == sent and not transport.disconnecting


def test_continuous_loops_the_source_and_sends_dtmf() -> None:
    """Payloads loop in order; DTMF digits go out at their times, each as its own 4-byte write."""
    plan = Continuous(kind=Kind.SLIN8, payloads=(b"\x01" * 320, b"\x02" * 320, b"\x03" * 320), duration=0.2,
                      dtmf=((0.05, "1"), (0.13, "#")))
    asterisk, transport, clock = start(plan)
    pump(clock, 101)
    frames = FrameParser().feed(transport.value())
    audio = [f.payload[0] for f in frames if f.kind == Kind.SLIN8]
    assert audio == [1, 2, 3, 1, 2, 3, 1, 2, 3, 1]
    dtmf = [(round(t - 100, 6), data) for t, data in transport.writes if data[0] == Kind.DTMF]
    assert dtmf == [(0.05, b"\x03\x00\x011"), (0.13, b"\x03\x00\x01#")]


def test_continuous_from_the_ulaw_capture() -> None:
    """Looping the µ-law capture gives 160-byte kind-0x10 frames, as Asterisk sends them without c()."""
    plan = Continuous.from_capture(load_capture("c_dial_chan_native_ulaw_caller"), duration=0.1)
    assert plan.kind == Kind.SLIN8 and {len(p) for p in plan.payloads} == {160}
    asterisk, transport, clock = start(plan)
    pump(clock, 101)
    assert [len(d) for _, d in transport.writes] == [19] + [163] * 5


# --- reactions to the server ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("data,what", [
    (b"\x01\x00\x10" + bytes(16), "UUID (0x01)"),
    (b"\xff\x00\x01\x01", "ERROR (0xff)"),
    (b"\x03\x00\x011", "DTMF (0x03)"),
    (b"\x10\x00\x00", "zero-length audio"),
    (b"\x02\x00\x00", "unknown message kind 0x02"),
])
def test_bad_server_frames_reset_the_connection(data: bytes, what: str) -> None:
    """Like Asterisk, anything but audio or 0x00 (or empty audio) resets the connection (RST) and is recorded."""
    plan = Continuous.from_pcm(bytes(320))
    asterisk, transport, clock = start(plan)
    asterisk.dataReceived(encode_frame(Kind.SLIN8, b"\x00\x01") + data)
    assert transport.disconnected  # abortConnection
    assert len(asterisk.violations) == 1 and what in asterisk.violations[0]
    assert clock.getDelayedCalls() == []
    sent = len(transport.writes)
    clock.advance(1)
    assert len(transport.writes) == sent
    ended: list[str] = []
    asterisk.done.addCallback(ended.append)
    close(asterisk, ConnectionLost())
    assert ended == [f"protocol violation: {asterisk.violations[0]}"]


def test_hangup_frame_closes_with_fin() -> None:
    """0x00 from the server: Asterisk closes (FIN) at once and stops sending."""
    asterisk, transport, clock = start(Continuous.from_pcm(bytes(320)))
    clock.advance(0.5)
    asterisk.dataReceived(HANGUP_FRAME)
    assert transport.disconnecting and not transport.disconnected
    assert asterisk.violations == [] and asterisk.end_reason == "server sent hangup frame"
    assert clock.getDelayedCalls() == []
    sent = len(transport.writes)
    clock.advance(1)
    assert len(transport.writes) == sent
    ended: list[str] = []
    asterisk.done.addCallback(ended.append)
    close(asterisk)
    assert ended == ["server sent hangup frame"]


def test_received_frames_are_recorded_with_times() -> None:
    """Every server frame is parsed (across reads) and stored with its arrival time; all audio kinds are accepted."""
    asterisk, _, clock = start()
    data = b"".join(encode_frame(kind, b"\x00\x01" * 10) for kind in range(0x10, 0x19))
    asterisk.dataReceived(data[:7])
    clock.advance(0.02)
    asterisk.dataReceived(data[7:])
    assert [(t, f.kind) for t, f in asterisk.received] == [(100.02, k) for k in range(0x10, 0x19)]
    assert asterisk.received[0][1] == Frame(Kind.SLIN8, b"\x00\x01" * 10)
    assert asterisk.audio_bytes_received == 9 * 20 and asterisk.frames_received == 9
    assert asterisk.violations == []


def test_record_off_keeps_counters_and_calls_back() -> None:
    """With record=False nothing is kept per frame, but counters and on_frame still work."""
    seen: list[tuple[float, int]] = []
    asterisk, _, _ = start(record=False, on_frame=lambda t, f: seen.append((t, f.kind)))
    asterisk.dataReceived(encode_frame(Kind.SLIN8, bytes(320)) * 3)
    assert asterisk.received == [] and asterisk.frames_received == 3 and len(seen) == 3


def test_server_close_is_reported() -> None:
    """The server closing the socket ends the simulated call with that reason."""
    asterisk, _, clock = start(Continuous.from_pcm(bytes(320)))
    ended: list[str] = []
    asterisk.done.addCallback(ended.append)
    close(asterisk)
    assert ended == ["server closed the connection"] and clock.getDelayedCalls() == []


# --- idle timeout, no UUID, delayed UUID ----------------------------------------------------------------------------

def test_app_idle_timeout() -> None:
    """With the app's 2 s timeout: no frame either way for 2 s closes (FIN); a server frame restarts the wait."""
    asterisk, transport, clock = start(idle_timeout=APP_IDLE_TIMEOUT)
    clock.advance(1.5)
    asterisk.dataReceived(encode_frame(Kind.SLIN8, bytes(320)))
    clock.advance(1.999)
    assert not transport.disconnecting
    clock.advance(0.002)
    assert transport.disconnecting and not transport.disconnected
    assert asterisk.end_reason == "idle timeout"
    assert clock.getDelayedCalls() == []


def test_no_idle_timeout_while_streaming() -> None:
    """A continuous caller keeps the app's timer from firing."""
    asterisk, transport, clock = start(Continuous.from_pcm(bytes(320)), idle_timeout=APP_IDLE_TIMEOUT)
    for _ in range(500):
        clock.advance(0.02)
    assert not transport.disconnecting
    asterisk.hang_up()
    assert clock.getDelayedCalls() == []


def test_without_uuid_and_delayed_uuid() -> None:
    """send_uuid=False sends nothing (unanswered-channel case); uuid_delay holds the UUID back."""
    asterisk, transport, clock = start(send_uuid=False)
    clock.advance(5)
    assert transport.writes == []
    asterisk.hang_up()
    assert transport.disconnecting and not transport.disconnected

    asterisk, transport, clock = start(Continuous.from_pcm(bytes(320)), uuid=UUID, uuid_delay=0.011)
    assert transport.writes == []
    pump(clock, 100.05)
    assert transport.writes[0] == (pytest.approx(100.011), encode_uuid(UUID))
    assert [round(t - 100.011, 6) for t, _ in transport.writes[1:]] == [0.0, 0.02]
