"""
The benchmark's load generator: N simulated Asterisk callers against a relay's AudioSocket port.

Every caller is a `avr.testing.asterisk.SimulatedAsterisk` connection sending a 20 ms frame of a tone in real time;
one timer sends the frames of all callers, their 20 ms phases spread over a few groups as real calls' are (see
`Sender`), and the frames are built once up front. Each frame carries its caller and sequence slot in the least
significant bit of its first 32 samples, inaudible and exact through an echo that does not resample, so each frame
heard back is matched to the frame sent.

Measured over a steady window that starts after a warm-up:

- the outbound frame interval (arrival to arrival) and its deviation from 20 ms;
- the echo delay: from writing a frame to receiving the same audio back;
- lost frames (sent in the window, never heard back) and late ones (heard back more than `LATE_AFTER` after sending);
- whether each call stayed up;
- this process's own send lateness (how far each tick ran behind its slot), so a saturated harness shows;
- CPU time (utime + stime) and RSS of the watched processes, read from ``/proc`` at the window's edges.

Prints one JSON object. Normally started by `benchmarks.run`.

    python -m benchmarks.loadgen --port 5001 --calls 100 --rate 8000 --watch server=1234 --watch echo=1235
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from array import array
from typing import Any

from attrs import define, field, frozen
from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.task import deferLater

from avr.frames import AUDIO_KIND_RATES, Frame, Kind, audio_kind_for_rate, encode_frame
from avr.testing.asterisk import SimulatedAsterisk, connect_simulated_asterisk

#: Frame period, seconds.
PERIOD = 0.020
#: Distinct frames per caller; a frame heard back is matched to the latest frame sent in its slot, so echo delays up
#: to ``SLOTS × 20 ms`` (2 s) are measured exactly.
SLOTS = 100
#: A frame heard back later than this after it was sent counts as late: a 60 ms jitter buffer would have dropped it.
LATE_AFTER = 0.060
#: Most missed ticks one late tick makes up for (the rest of the lateness is skipped, as a stalled RTP source would).
MAX_CATCH_UP = 5
_MARK_SAMPLES = 32
_TONE_HZ = 400
_TONE_AMPLITUDE = 6000


def caller_frames(index: int, kind: int) -> tuple[tuple[bytes, ...], dict[bytes, int]]:
    """
    The `SLOTS` encoded frames caller ``index`` sends in turn, and the map from a frame's first bytes to its slot.

    The audio is a 400 Hz tone (a whole number of periods per 20 ms frame at every audio rate), so the stream is
    continuous and a relay's G.711 detection recognises slin at once, as it would speech.
    """
    rate = AUDIO_KIND_RATES[kind]
    samples = rate // 50
    tone = array("h", (round(_TONE_AMPLITUDE * math.sin(2 * math.pi * _TONE_HZ * i / rate)) for i in range(samples)))
    frames = []
    slots = {}
    for slot in range(SLOTS):
        mark = (index << 16) | slot
        pcm = array("h", tone)
        for bit in range(_MARK_SAMPLES):
            pcm[bit] = (pcm[bit] & ~1) | ((mark >> bit) & 1)
        payload = pcm.tobytes() if sys.byteorder == "little" else _swapped(pcm)
        frames.append(encode_frame(kind, payload))
        slots[payload[: 2 * _MARK_SAMPLES]] = slot
    return tuple(frames), slots


def _swapped(pcm: array) -> bytes:
    copy = array("h", pcm)
    copy.byteswap()
    return copy.tobytes()


@frozen
class ProcessSample:
    """CPU seconds used so far (user + system; and the system part alone) and resident memory of one process."""

    cpu: float
    system: float
    rss_kb: int

    @classmethod
    def read(cls, pid: int | str) -> ProcessSample:
        """Sample process ``pid`` (or ``"self"``)."""
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        utime, stime = int(fields[11]) / ticks, int(fields[12]) / ticks  # fields 14 and 15 of proc_pid_stat(5)
        rss_kb = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss_kb = int(line.split()[1])
                    break
        return cls(utime + stime, stime, rss_kb)


@define(eq=False)
class Caller:
    """One simulated call: what it sent, when, and what came back."""

    frames: tuple[bytes, ...]
    slots: dict[bytes, int]
    asterisk: SimulatedAsterisk | None = None
    seq: int = 0
    sent_at: array = field(factory=lambda: array("d"))
    heard: bytearray = field(factory=bytearray)
    #: The measured window [start, end), clock times.
    window: tuple[float, float] | None = None
    last_arrival: float | None = None
    intervals: list[float] = field(factory=list)
    delays: list[float] = field(factory=list)
    late: int = 0
    foreign: int = 0
    duplicates: int = 0

    def send(self, now: float) -> None:
        """Send the next frame."""
        asterisk = self.asterisk
        if asterisk is not None and asterisk.connected:
            self.sent_at.append(now)
            self.heard.append(0)
            asterisk.send_frame(self.frames[self.seq % SLOTS])
            self.seq += 1

    def on_frame(self, now: float, frame: Frame) -> None:
        """A frame from the relay: match it to the frame sent and record interval and delay inside the window."""
        if frame.kind == Kind.HANGUP:
            return
        window = self.window
        in_window = window is not None and window[0] <= now < window[1]
        if in_window and self.last_arrival is not None and self.last_arrival >= window[0]:  # type: ignore[index]
            self.intervals.append(now - self.last_arrival)
        self.last_arrival = now
        slot = self.slots.get(frame.payload[: 2 * _MARK_SAMPLES])
        if slot is None:
            self.foreign += 1
            return
        last = self.seq - 1
        seq = last - (last - slot) % SLOTS
        if seq < 0:
            self.foreign += 1
            return
        if self.heard[seq]:
            self.duplicates += 1
            return
        self.heard[seq] = 1
        sent = self.sent_at[seq]
        if window is not None and window[0] <= sent < window[1]:
            delay = now - sent
            self.delays.append(delay)
            if delay > LATE_AFTER:
                self.late += 1

    def sent_in_window(self) -> list[int]:
        """Sequence numbers of the frames sent inside the window."""
        lo, hi = self.window  # type: ignore[misc]
        return [i for i, t in enumerate(self.sent_at) if lo <= t < hi]

    @property
    def up(self) -> bool:
        """Still connected, and the relay never ended it."""
        return self.asterisk is not None and self.asterisk.connected and self.asterisk.end_reason is None


@define(eq=False)
class Sender:
    """
    The one timer of all callers.

    Real calls are not in step: each one's frames follow its own RTP stream, so their 20 ms phases are spread out.
    The callers are dealt into ``phases`` groups whose frames are due ``20 ms / phases`` apart: tick ``k`` is due at
    ``start + k × 20 ms / phases`` and sends one frame for each caller of group ``k mod phases`` (``phases=1``: every
    caller in the same instant, the worst case for a relay). A late tick also sends what the ticks it missed should
    have sent, up to `MAX_CATCH_UP` frames per caller; how late each tick ran is kept in ``lateness``.
    """

    reactor: Any
    callers: list[Caller]
    phases: int = 1
    lateness: list[float] = field(factory=list)
    missed: int = 0
    _groups: list[list[Caller]] = field(init=False)
    _step: float = field(init=False)
    _start: float = 0.0
    _tick: int = 0
    _call: Any = None

    def __attrs_post_init__(self) -> None:
        self._groups = [self.callers[g::self.phases] for g in range(self.phases)]
        self._step = PERIOD / self.phases

    def start(self) -> None:
        """Send the first frames now."""
        self._start = self.reactor.seconds()
        self._run()

    def stop(self) -> None:
        """Send nothing more."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _run(self) -> None:
        now = self.reactor.seconds()
        due = int((now - self._start) / self._step + 1e-6)  # the latest tick due by now
        self.lateness.append(now - (self._start + self._tick * self._step))
        self.missed += due - self._tick
        for tick in range(max(self._tick, due - MAX_CATCH_UP * self.phases + 1), due + 1):
            for caller in self._groups[tick % self.phases]:
                caller.send(now)
        self._tick = due + 1
        self._call = self.reactor.callLater(max(0.0, self._start + self._tick * self._step - now), self._run)


def percentiles_ms(values: list[float]) -> dict[str, float | None]:
    """p50, p99 and max of ``values`` (seconds), in milliseconds."""
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values)
    last = len(ordered) - 1

    def at(p: float) -> float:
        return round(ordered[min(last, int(round(p * last)))] * 1000, 3)

    return {"p50": at(0.50), "p99": at(0.99), "max": round(ordered[-1] * 1000, 3)}


async def run(reactor: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Connect the callers, send for warm-up + window, drain, and report."""
    watch = dict(args.watch)
    idle = {name: ProcessSample.read(pid) for name, pid in watch.items()}
    kind = audio_kind_for_rate(args.rate)
    callers = [Caller(*caller_frames(i, kind)) for i in range(args.calls)]

    async def connect(caller: Caller) -> None:
        caller.asterisk, _ = await connect_simulated_asterisk(
            reactor, args.host, args.port, None, record=False, on_frame=caller.on_frame)

    results = await DeferredList([ensureDeferred(connect(c)) for c in callers], consumeErrors=True)
    failed = [r for ok, r in results if not ok]
    if failed:
        raise SystemExit(f"{len(failed)} of {len(callers)} calls could not connect: {failed[0].getErrorMessage()}")

    # Let every STS session open before audio starts, so that no caller audio is held back during connection and
    # then echoed in one burst (which would leave a standing queue, and so extra echo delay, for the whole run).
    await deferLater(reactor, args.settle, lambda: None)
    sender = Sender(reactor, callers, args.phases)
    sender.start()
    await deferLater(reactor, args.warmup, lambda: None)

    sender.lateness = []
    sender.missed = 0
    start = reactor.seconds()
    before = {name: ProcessSample.read(pid) for name, pid in watch.items()}
    before["loadgen"] = ProcessSample.read("self")
    for caller in callers:
        caller.window = (start, start + args.duration)
    await deferLater(reactor, args.duration, lambda: None)
    after = {name: ProcessSample.read(pid) for name, pid in watch.items()}
    after["loadgen"] = ProcessSample.read("self")
    end = reactor.seconds()
    lateness, missed = sender.lateness, sender.missed
    sender.stop()
    await deferLater(reactor, args.drain, lambda: None)

    window = end - start
    processes = {}
    for name in after:
        cpu = after[name].cpu - before[name].cpu
        entry: dict[str, Any] = {
            "cpu_s": round(cpu, 3),
            "cpu_share_of_core": round(cpu / window, 3),
            "cpu_ms_per_call_second": round(cpu * 1000 / (args.calls * window), 4),
            "system_share": round((after[name].system - before[name].system) / cpu, 3) if cpu else None,
            "rss_kb": after[name].rss_kb,
        }
        if name in idle:
            entry["rss_idle_kb"] = idle[name].rss_kb
            entry["rss_kb_per_call"] = round((after[name].rss_kb - idle[name].rss_kb) / args.calls, 1)
        processes[name] = entry

    sent = lost = 0
    intervals: list[float] = []
    delays: list[float] = []
    per_call = []
    for caller in callers:
        in_window = caller.sent_in_window()
        missing = sum(1 for seq in in_window if not caller.heard[seq])
        sent += len(in_window)
        lost += missing
        intervals += caller.intervals
        delays += caller.delays
        deviation = [abs(i - PERIOD) for i in caller.intervals]
        per_call.append({"up": caller.up, "sent": len(in_window), "lost": missing, "late": caller.late,
                         "foreign": caller.foreign, "duplicates": caller.duplicates,
                         "deviation_ms": percentiles_ms(deviation)})
    for caller in callers:
        if caller.asterisk is not None and caller.asterisk.connected:
            caller.asterisk.hang_up()
    return {
        "calls": args.calls,
        "rate": args.rate,
        "phases": args.phases,
        "window_s": round(window, 3),
        "processes": processes,
        "frames_sent": sent,
        "frames_lost": lost,
        "frames_late": sum(c["late"] for c in per_call),
        "frames_foreign": sum(c["foreign"] for c in per_call),
        "frames_duplicated": sum(c["duplicates"] for c in per_call),
        "calls_up": sum(1 for c in per_call if c["up"]),
        "interval_deviation_ms": percentiles_ms([abs(i - PERIOD) for i in intervals]),
        "interval_ms": percentiles_ms(intervals),
        "echo_delay_ms": percentiles_ms(delays),
        "worst_call_deviation_p99_ms": max((c["deviation_ms"]["p99"] or 0.0) for c in per_call),
        "send_lateness_ms": percentiles_ms(lateness),
        "send_ticks_missed": missed,
        "per_call": per_call,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--rate", type=int, default=8000, choices=sorted(set(AUDIO_KIND_RATES.values())))
    parser.add_argument("--phases", type=int, default=4,
                        help="groups of callers whose frames are due 20 ms / PHASES apart (1: all at once)")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds between connecting the calls (UUID sent) and their first audio frame")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds sent before the window starts")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of the measured window")
    parser.add_argument("--drain", type=float, default=0.5, help="seconds to wait for the last echoes")
    parser.add_argument("--watch", action="append", default=[], type=lambda s: tuple(s.split("=", 1)),
                        metavar="NAME=PID", help="a process whose CPU and RSS to report")
    args = parser.parse_args()
    from twisted.internet import reactor  # the process edge

    outcome: dict[str, Any] = {}

    def finished(result: Any) -> None:
        outcome["result"] = result
        reactor.stop()

    reactor.callWhenRunning(lambda: ensureDeferred(run(reactor, args)).addBoth(finished))
    reactor.run()
    result = outcome.get("result")
    if hasattr(result, "getTraceback"):
        sys.stderr.write(result.getTraceback())
        sys.exit(1)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
