"""
Real ``twistd -n avr`` processes on loopback ports: what an operator sees when it starts, fails to start, and logs a
call, in both formats. Each waits on the process's output or exit, with a timeout; nothing sleeps.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from avr import __version__
from avr.config import SETTINGS
from avr.frames import HANGUP_FRAME, Kind, encode_frame, encode_uuid

pytestmark = pytest.mark.integration

TWISTD = Path(sys.executable).with_name("twistd")
TIMEOUT = 30


@pytest.fixture(autouse=True)
def needs_twistd() -> None:
    if not TWISTD.exists():
        pytest.skip("twistd is not installed next to this Python (run the suite with scripts/test)")


def free_port() -> int:
    """A loopback port nobody listens on now (the kernel's pick; twistd's options cannot say 0 and report it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def environment(**settings: str) -> dict[str, str]:
    """This process's environment without avr's settings, plus ``settings``."""
    names = {s.env for s in SETTINGS} | {"PYTHONPATH"}
    return {**{k: v for k, v in os.environ.items() if k not in names}, **settings}


def run_to_exit(tmp_path: Path, *args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(TWISTD), "-n", "--pidfile=", "avr", *args], cwd=tmp_path, env=environment(**settings),
                          capture_output=True, text=True, timeout=TIMEOUT)


class Twistd:
    """A running ``twistd -n avr``; its standard output read line by line on a thread, into a queue."""

    def __init__(self, tmp_path: Path, *args: str, **settings: str) -> None:
        self.process = subprocess.Popen(
            [str(TWISTD), "-n", "--pidfile=", "avr", *args], cwd=tmp_path, env=environment(**settings),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, text: str) -> str:
        """The first line (from now on) containing ``text``; fails after `TIMEOUT` seconds or at the end of output."""
        while True:
            try:
                line = self._queue.get(timeout=TIMEOUT)
            except queue.Empty:
                raise AssertionError(f"no line with {text!r} within {TIMEOUT} s:\n" + "\n".join(self.lines)) from None
            if line is None:
                raise AssertionError(f"twistd ended without a line with {text!r}:\n" + "\n".join(self.lines))
            self.lines.append(line)
            if text in line:
                return line

    def stop(self) -> list[str]:
        """SIGTERM, wait for the exit; every line it wrote."""
        self.process.terminate()
        self.process.wait(timeout=TIMEOUT)
        while (line := self._queue.get(timeout=TIMEOUT)) is not None:
            self.lines.append(line)
        return self.lines


@pytest.fixture
def ports() -> Iterator[tuple[int, int]]:
    yield free_port(), free_port()


def one_call(port: int, call_id: str, frames: int = 10) -> None:
    """An AudioSocket call as Asterisk makes it: UUID, ``frames`` of 8 kHz audio, the hang-up frame."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(encode_uuid(call_id) + encode_frame(Kind.SLIN8, bytes(320)) * frames + HANGUP_FRAME)
        while s.recv(4096):  # avr closes its side once the call ended
            pass


def test_version_is_avrs(tmp_path: Path) -> None:
    """``twistd avr --version`` prints avr's version (and Twisted's after it), not only Twisted's."""
    done = run_to_exit(tmp_path, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"avr {__version__} (Twisted ")


def test_bad_configuration_is_the_first_thing_said_without_the_usage_text(tmp_path: Path) -> None:
    """Every problem, first, on stderr; no usage text; a non-zero exit."""
    done = run_to_exit(tmp_path, "--port", "99999", WEBHOOK_TIMEOUT="soon")
    assert done.returncode != 0
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines[0] == "twistd avr: invalid configuration:"
    assert any("--port" in line for line in lines[1:]) and any("WEBHOOK_TIMEOUT" in line for line in lines[1:])
    assert len(lines) == 3, done.stderr
    assert "Usage:" not in done.stderr and "--sts-url" not in done.stderr


def test_port_in_use_is_one_line(tmp_path: Path) -> None:
    """A port someone else holds: one error line naming it and the settings, a non-zero exit, no traceback."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = run_to_exit(tmp_path, "--port", str(port))
    assert done.returncode != 0
    errors = [line for line in done.stdout.splitlines() if " ERROR " in line]
    assert len(errors) == 1, done.stdout
    assert errors[0].endswith(f" ERROR [avr.tap.TwistdService] avr cannot start: cannot listen on 127.0.0.1:{port} "
                              "(PORT, BIND_ADDRESS): Address already in use")
    assert "Traceback" not in done.stdout + done.stderr and done.stderr == ""


def test_bad_bind_address_is_one_line_in_json_too(tmp_path: Path) -> None:
    """An address that is not one is refused in one line too; in JSON, a JSON line."""
    done = run_to_exit(tmp_path, "--port", str(free_port()), BIND_ADDRESS="999.1.1.1", LOG_FORMAT="json")
    assert done.returncode != 0
    records = [json.loads(line) for line in done.stdout.splitlines()]
    errors = [r for r in records if r["level"] == "error"]
    assert [e["message"].partition(":")[0] for e in errors] == ["avr cannot start"], done.stdout
    assert "cannot listen on 999.1.1.1:" in errors[0]["message"] and "BIND_ADDRESS" in errors[0]["message"]
    assert "Traceback" not in done.stdout + done.stderr and done.stderr == ""


def test_json_lines_with_a_call(tmp_path: Path, ports: tuple[int, int]) -> None:
    """
    ``--log-format=json``: every line twistd writes, from its first to its last, is one JSON object; the call's
    lines carry its UUID as ``call_id``, and its summary line has the figures as fields.
    """
    audiosocket, http = ports
    call_id = str(uuid.uuid4())
    avr = Twistd(tmp_path, "--port", str(audiosocket), "--http-port", str(http), "--log-format=json")
    try:
        avr.wait_for("AVR AudioSocket Server listening")
        one_call(audiosocket, call_id)
        summary = json.loads(avr.wait_for("Call summary"))
    finally:
        lines = avr.stop()
    records = [json.loads(line) for line in lines]  # raises on any line that is not JSON
    assert all(isinstance(r, dict) and {"time", "level", "namespace", "message"} <= r.keys() for r in records)
    assert summary["call_id"] == call_id and summary["level"] == "info"
    assert summary["frames_in"] == 10 and summary["ended_by"] == "caller" and summary["sts_mode"] == "echo"
    assert summary["webhook_failures"] == 0 and summary["sts_connect_failures"] == 0
    about_call = [r for r in records if call_id in r["message"]]
    assert len(about_call) >= 2 and all(r.get("call_id") == call_id for r in about_call)
    assert not any("Starting factory" in r["message"] for r in records)


def test_text_lines_with_milliseconds_at_info(tmp_path: Path, ports: tuple[int, int]) -> None:
    """The default: readable lines with millisecond timestamps, no debug line."""
    audiosocket, http = ports
    call_id = str(uuid.uuid4())
    avr = Twistd(tmp_path, "--port", str(audiosocket), "--http-port", str(http))
    try:
        avr.wait_for("AVR AudioSocket Server listening")
        one_call(audiosocket, call_id)
        summary = avr.wait_for("Call summary")
    finally:
        lines = avr.stop()
    assert f"Call summary {call_id}: " in summary and " INFO  [avr.call_summary.CallSummaries] " in summary
    stamp = summary.split(" ")[0]
    assert len(stamp) == len("2026-01-01T12:00:00.000+0000") and stamp[19] == "."
    assert not any(" DEBUG " in line for line in lines)


def test_debug_level_shows_the_chatter(tmp_path: Path, ports: tuple[int, int]) -> None:
    """``LOG_LEVEL=debug``: Twisted's factory line for a webhook's connection shows, as a debug line."""
    audiosocket, http = ports
    avr = Twistd(tmp_path, "--port", str(audiosocket), "--http-port", str(http), LOG_LEVEL="debug",
                 WEBHOOK_URL=f"http://127.0.0.1:{free_port()}/hooks")
    try:
        avr.wait_for("AVR AudioSocket Server listening")
        one_call(audiosocket, str(uuid.uuid4()))
        line = avr.wait_for("Starting factory")
    finally:
        avr.stop()
    assert " DEBUG [" in line
