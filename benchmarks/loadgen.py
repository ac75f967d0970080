"""
The benchmark's load generator: N simulated Asterisk callers against a relay's AudioSocket port.

Every caller is a `avr.testing.asterisk.SimulatedAsterisk` connection sending a 20 ms frame of a tone in real time;
each caller keeps its own absolute 20 ms schedule, its phase spread evenly over the period as real calls' are (or
at random, or in a few groups: see `arrival_offsets` and `Sender`), and the frames are built once up front. Each
frame carries its caller and sequence slot in the least significant bit of its first 32 samples, inaudible and exact
through an echo that does not resample, so each frame heard back is matched to the frame sent.

Measured over a steady window that starts after a warm-up:

- the outbound frame interval (arrival to arrival) and its deviation from 20 ms;
- the echo delay: from writing a frame to receiving the same audio back;
- lost frames (sent in the window, never heard back) and late ones (heard back more than `LATE_AFTER` after sending);
- whether each call stayed up;
- this process's own send lateness (how far each tick ran behind its slot), so a saturated harness shows;
- CPU time (utime + stime), time spent ready but waiting for a CPU (``/proc/PID/schedstat``: how much the processes
  on this machine delay each other) and RSS of the watched processes and of this one, read from ``/proc`` at the
  window's edges.

Prints one JSON object. Normally started by `benchmarks.run`.

    python -m benchmarks.loadgen --port 5001 --calls 100 --rate 8000 --watch server=1234 --watch echo=1235
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
from array import array
from typing import Any, Protocol, Sequence

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
    """
    CPU seconds used so far (user + system; and the system part alone), seconds its main thread spent runnable but
    waiting for a CPU (``None`` where the kernel keeps no schedstats) and resident memory of one process.
    """

    cpu: float
    system: float
    rss_kb: int
    run_wait: float | None = None

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
        run_wait = None
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                run_wait = int(f.read().split()[1]) / 1e9  # sched-stats.rst: on-CPU ns, waiting ns, timeslices
        except (OSError, IndexError, ValueError):
            pass
        return cls(utime + stime, stime, rss_kb, run_wait)


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


#: How the callers' 20 ms phases are placed (see `arrival_offsets`).
ARRIVALS = ("even", "random", "groups")


def arrival_offsets(count: int, arrivals: str, phases: int = 4, seed: int = 0) -> list[float]:
    """
    When in the 20 ms period each of ``count`` callers sends its frames, in seconds from the period's start.

    - ``even``: one caller every ``20 ms / count`` (at N = 200, every 0.1 ms), as real calls are: each Asterisk
      channel keeps its own 20 ms timing, so their frames arrive spread over the period;
    - ``random``: each caller at a uniformly random instant of the period (reproducible with ``seed``);
    - ``groups``: the callers dealt into ``phases`` groups due ``20 ms / phases`` apart (``phases=1``: every caller
      in the same instant, the worst case for a relay; more groups than calls leave some groups empty).
    """
    if arrivals == "even":
        return [i * PERIOD / count for i in range(count)]
    if arrivals == "random":
        rng = random.Random(seed)
        return [rng.random() * PERIOD for _ in range(count)]
    if arrivals == "groups":
        if phases < 1:
            raise ValueError(f"phases must be at least 1, got {phases}")
        return [(i % phases) * PERIOD / phases for i in range(count)]
    raise ValueError(f"unknown arrivals {arrivals!r} (one of {', '.join(ARRIVALS)})")


class _Sends(Protocol):
    def send(self, now: float) -> None: ...


@define(eq=False)
class Sender:
    """
    The callers' clock: caller ``i``'s ``k``-th frame is due at ``start + offsets[i] + k × 20 ms``.

    Each caller keeps its own absolute 20 ms schedule, as an Asterisk channel does, but one timer serves them all:
    it wakes at the next frame due, sends every frame due by then, in order, and sleeps until the next (the same
    sends as one timer per call, without a timer heap of N entries). Wake-ups are as fine as the reactor's poll
    timeout (1 ms with epoll), so with evenly spread callers each wake-up sends the few frames of that millisecond.
    A frame more than `MAX_CATCH_UP` periods late is skipped (counted in ``missed``), as a stalled RTP source's
    would be; how late each frame sent was is kept in ``lateness``.
    """

    reactor: Any
    callers: Sequence[_Sends]
    offsets: Sequence[float]
    lateness: array = field(factory=lambda: array("d"))
    missed: int = 0
    _order: list[tuple[float, _Sends]] = field(init=False)
    _start: float = 0.0
    _cycle: int = 0
    _pos: int = 0
    _call: Any = None

    def __attrs_post_init__(self) -> None:
        if len(self.offsets) != len(self.callers):
            raise ValueError("one offset per caller")
        self._order = sorted(zip(self.offsets, self.callers, strict=True), key=lambda pair: pair[0])

    def start(self) -> None:
        """Start the schedule now (the callers at offset 0 send at once)."""
        self._start = self.reactor.seconds()
        self._run()

    def stop(self) -> None:
        """Send nothing more."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _run(self) -> None:
        self._call = None
        order = self._order
        if not order:
            return
        now = self.reactor.seconds()
        lateness, limit = self.lateness, MAX_CATCH_UP * PERIOD
        pos, cycle = self._pos, self._cycle
        base = self._start + cycle * PERIOD
        while True:
            offset, caller = order[pos]
            due = base + offset
            if due > now:
                break
            late = now - due
            if late < limit:
                caller.send(now)
                lateness.append(late)
            else:
                self.missed += 1
            pos += 1
            if pos == len(order):
                pos, cycle = 0, cycle + 1
                base = self._start + cycle * PERIOD
        self._pos, self._cycle = pos, cycle
        self._call = self.reactor.callLater(due - now, self._run)


def percentiles_ms(values: Sequence[float]) -> dict[str, float | None]:
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
    sender = Sender(reactor, callers, arrival_offsets(len(callers), args.arrivals, args.phases, args.seed))
    sender.start()
    await deferLater(reactor, args.warmup, lambda: None)

    sender.lateness = array("d")
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
        waited, waited_before = after[name].run_wait, before[name].run_wait
        entry["run_queue_wait_ms_per_s"] = (
            None if waited is None or waited_before is None else round((waited - waited_before) * 1000 / window, 2))
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
        "arrivals": args.arrivals,
        "phases": args.phases if args.arrivals == "groups" else None,
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
    parser.add_argument("--arrivals", choices=ARRIVALS, default="even",
                        help="the callers' phases over the 20 ms period: evenly spread (default), random, or in "
                             "--phases groups")
    parser.add_argument("--phases", type=int, default=4,
                        help="with --arrivals groups: groups of callers due 20 ms / PHASES apart (1: all at once)")
    parser.add_argument("--seed", type=int, default=0, help="with --arrivals random: the random phases' seed")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds between connecting the calls (UUID sent) and their first audio frame")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds sent before the window starts")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of the measured window")
    parser.add_argument("--drain", type=float, default=SLOTS * PERIOD,
                        help="seconds to wait for the last echoes (a frame still queued in the relay after this "
                             "counts as lost; the default, 2 s, is the longest echo delay that is measured exactly)")
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
