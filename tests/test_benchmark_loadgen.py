"""
The load generator's clock (`benchmarks.loadgen.Sender`) and how it places callers over the 20 ms period, on a
`task.Clock`: what the benchmark claims about arrivals ("evenly spread", "random", "in groups") is what it sends.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from benchmarks.loadgen import MAX_CATCH_UP, PERIOD, Sender, arrival_offsets


class RecordingCaller:
    """Stands in for a `Caller`: remembers when it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[float] = []

    def send(self, now: float) -> None:
        self.sent.append(now)


def run_sender(offsets: list[float], seconds: float, step: float = 0.0001) -> tuple[Sender, list[RecordingCaller]]:
    clock = Clock()
    clock.advance(1000.0)
    callers = [RecordingCaller() for _ in offsets]
    sender = Sender(clock, callers, offsets)
    sender.start()
    for _ in range(round(seconds / step)):
        clock.advance(step)
    sender.stop()
    return sender, callers


def test_even_arrivals_spread_the_callers_over_the_period() -> None:
    """At N = 200, one caller every 0.1 ms: the whole period is covered, no two callers share an instant."""
    offsets = arrival_offsets(200, "even")
    assert offsets[0] == 0.0
    assert [round(b - a, 9) for a, b in zip(offsets, offsets[1:], strict=False)] == [round(PERIOD / 200, 9)] * 199
    assert max(offsets) < PERIOD


def test_random_arrivals_are_reproducible_and_inside_the_period() -> None:
    first, again, other = (arrival_offsets(100, "random", seed=s) for s in (1, 1, 2))
    assert first == again != other
    assert all(0.0 <= o < PERIOD for o in first)
    assert len(set(first)) == 100


def test_groups_deal_the_callers_into_phases() -> None:
    """4 phases: callers 0, 4, 8 … at 0 ms, 1, 5, 9 … at 5 ms; 1 phase: everyone at once."""
    offsets = arrival_offsets(8, "groups", phases=4)
    assert offsets == [0.0, 0.005, 0.01, 0.015] * 2
    assert set(arrival_offsets(5, "groups", phases=1)) == {0.0}
    with pytest.raises(ValueError):
        arrival_offsets(5, "groups", phases=0)
    with pytest.raises(ValueError):
        arrival_offsets(5, "bursty")


def test_each_caller_keeps_its_own_absolute_20_ms_schedule() -> None:
    """Every caller sends one frame per period at start + offset + k × 20 ms, on time when the reactor is."""
    offsets = arrival_offsets(50, "even")
    sender, callers = run_sender(offsets, seconds=0.2)
    for offset, caller in zip(offsets, callers, strict=True):
        assert len(caller.sent) == 10
        for k, at in enumerate(caller.sent):
            assert at - 1000.0 == pytest.approx(offset + k * PERIOD, abs=0.00011)
    assert sender.missed == 0
    assert len(sender.lateness) == 500 and max(sender.lateness) < 0.00011


def test_a_late_wake_up_sends_what_was_due_and_skips_what_is_too_old() -> None:
    """Held up for 10 periods, a caller sends the frames of the last `MAX_CATCH_UP` periods at once; older ones are
    skipped and counted, and each send's lateness is kept."""
    clock = Clock()
    callers = [RecordingCaller(), RecordingCaller()]
    sender = Sender(clock, callers, [0.0, 0.010])
    sender.start()
    assert [len(c.sent) for c in callers] == [1, 0]
    clock.advance(10 * PERIOD + 0.001)  # one wake-up, 201 ms after the start
    # Due by now: caller 0 at 20, 40 … 200 ms (10 frames), caller 1 at 10, 30 … 190 ms (10 frames).
    sent_now = [len(c.sent) for c in callers]
    assert sent_now == [1 + MAX_CATCH_UP, MAX_CATCH_UP]
    assert sender.missed == 20 - 2 * MAX_CATCH_UP
    assert max(sender.lateness) < MAX_CATCH_UP * PERIOD
    clock.advance(0.009)  # caller 1's next frame, due at 210 ms, goes on time
    assert len(callers[1].sent) == MAX_CATCH_UP + 1
    sender.stop()
    assert not clock.getDelayedCalls()
