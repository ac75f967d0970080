#!/usr/bin/env python3
"""
Measure one (or a few) simulated calls against a real ``twistd avr`` process with the built-in echo agent.

The server runs as its own process (``python -m twisted avr``); this process is the simulated Asterisk. Every
20 ms frame sent carries its sequence number in its first samples, so each frame heard back is matched to the frame
that was sent: that gives the echo delay, and the arrival times give the outbound frame interval.

    .venv/bin/python benchmarks/call_timing.py --duration 60 [--rate 16000] [--calls 1]

Prints a JSON report (and writes it with --output).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from twisted.internet import reactor  # noqa: E402  (a script: the process edge)
from twisted.internet.defer import ensureDeferred  # noqa: E402
from twisted.internet.task import LoopingCall, deferLater  # noqa: E402

from avr.frames import AUDIO_KIND_RATES, Frame, Kind, audio_kind_for_rate, encode_frame  # noqa: E402
from avr.testing.asterisk import connect_simulated_asterisk  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def summary_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ms = [v * 1000 for v in values]
    return {"mean": round(statistics.fmean(ms), 3), "p50": round(percentile(ms, 50), 3),
            "p99": round(percentile(ms, 99), 3), "max": round(max(ms), 3), "min": round(min(ms), 3)}


class Call:
    """One simulated caller sending numbered frames and matching what comes back."""

    def __init__(self, index: int, kind: int) -> None:
        self.index = index
        self.kind = kind
        self.frame_bytes = AUDIO_KIND_RATES[kind] // 50 * 2
        self.sent: dict[int, float] = {}
        self.heard: list[tuple[float, int | None]] = []
        self.seq = 0
        self.asterisk: Any = None

    def frame(self) -> bytes:
        # Sequence number in the first two samples, a quiet ramp after it.
        body = struct.pack("<II", 0xA5A50000 | self.index, self.seq)
        return encode_frame(self.kind, body + bytes(self.frame_bytes - len(body)))

    def send(self) -> None:
        if self.asterisk is not None and self.asterisk.connected:
            self.sent[self.seq] = time.monotonic()
            self.asterisk.send_frame(self.frame())
            self.seq += 1

    def on_frame(self, _: float, frame: Frame) -> None:
        if frame.kind == Kind.HANGUP:
            return
        marker, seq = struct.unpack_from("<II", frame.payload)
        self.heard.append((time.monotonic(), seq if marker == 0xA5A50000 | self.index else None))

    def report(self) -> dict[str, Any]:
        times = [t for t, _ in self.heard]
        intervals = [b - a for a, b in zip(times, times[1:])]
        deviation = [abs(i - 0.020) for i in intervals]
        delays = [t - self.sent[s] for t, s in self.heard if s is not None and s in self.sent]
        return {
            "frames_sent": len(self.sent),
            "frames_heard": len(self.heard),
            "frames_matched": len(delays),
            "interval_ms": summary_ms(intervals),
            "interval_deviation_ms": summary_ms(deviation),
            "echo_delay_ms": summary_ms(delays),
            "stayed_up": self.asterisk is not None and self.asterisk.end_reason is None,
        }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    env = dict(os.environ, PORT=str(port), PYTHONPATH=f"{ROOT}:{ROOT / 'src'}")
    env.pop("STS_URL", None)
    env.pop("HTTP_PORT", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "twisted", "avr"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                await deferLater(reactor, 0.05, lambda: None)
        else:
            raise SystemExit("avr did not start")
        kind = audio_kind_for_rate(args.rate)
        calls = [Call(i, kind) for i in range(args.calls)]
        for call in calls:
            call.asterisk, _ = await connect_simulated_asterisk(
                reactor, "127.0.0.1", port, None, record=False, on_frame=call.on_frame
            )
        # One timer for all callers, on an absolute 20 ms schedule (LoopingCall), like RTP.
        loop = LoopingCall(lambda: [c.send() for c in calls])
        loop.clock = reactor
        loop.start(0.020)
        started = time.monotonic()
        await deferLater(reactor, args.duration, lambda: None)
        loop.stop()
        await deferLater(reactor, 0.3, lambda: None)  # let the last echoes arrive
        elapsed = time.monotonic() - started
        reports = [c.report() for c in calls]
        for call in calls:
            call.asterisk.hang_up()
        return {"duration_s": round(elapsed, 3), "rate": args.rate, "calls": args.calls, "per_call": reports}
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--rate", type=int, default=8000)
    parser.add_argument("--calls", type=int, default=1)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    result: dict[str, Any] = {}

    def done(r: Any) -> None:
        result["report"] = r
        reactor.stop()

    def failed(f: Any) -> None:
        result["error"] = f.getTraceback()
        reactor.stop()

    reactor.callWhenRunning(lambda: ensureDeferred(run(args)).addCallbacks(done, failed))
    reactor.run()
    if "error" in result:
        sys.exit(result["error"])
    text = json.dumps(result["report"], indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
