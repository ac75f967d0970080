"""Tests for avr.playout: re-framing agent audio and pacing it at 20 ms on an absolute schedule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from avr.playout import (
    CATCH_UP_DEPTH,
    CATCH_UP_SPACING,
    MAX_LAG_FRAMES,
    FrameTicker,
    PlaybackQueue,
    frame_bytes_for_rate,
)


def drain(queue: PlaybackQueue) -> list[bytes]:
    """Every frame the queue gives until it stays empty for two ticks."""
    frames = []
    misses = 0
    while misses < 2:
        frame = queue.next_frame()
        if frame is None:
            misses += 1
        else:
            misses = 0
            frames.append(frame)
    return frames


@pytest.mark.parametrize(
    "rate, size", [(8000, 320), (12000, 480), (16000, 640), (24000, 960), (44100, 1764), (48000, 1920)]
)
def test_frame_sizes(rate: int, size: int) -> None:
    """A 20 ms frame of mono PCM16 has rate/50 samples of 2 bytes."""
    assert frame_bytes_for_rate(rate) == size


@given(st.lists(st.binary(min_size=1, max_size=2000), min_size=1, max_size=30))
def test_any_chunking_gives_the_same_frames(chunks: list[bytes]) -> None:
    """However the audio is chunked, the frames are the audio cut every 320 bytes, the tail padded with silence."""
    queue = PlaybackQueue(320)
    for chunk in chunks:
        queue.feed(chunk)
    audio = b"".join(chunks)
    frames = drain(queue)
    assert all(len(f) == 320 for f in frames)
    padded = audio + bytes(-len(audio) % 320)
    assert b"".join(frames) == padded


def test_partial_frame_waits_one_tick_for_its_rest() -> None:
    """A trailing partial frame is held one tick, so audio that arrives just after it is not split by silence."""
    queue = PlaybackQueue(320)
    queue.feed(b"\x01" * 400)
    assert queue.next_frame() == b"\x01" * 320
    assert queue.next_frame() is None  # 80 bytes wait
    queue.feed(b"\x02" * 240)
    assert queue.next_frame() == b"\x01" * 80 + b"\x02" * 240
    assert queue.idle


def test_clear_drops_everything_including_the_partial_frame() -> None:
    """An interruption empties the queue: no queued audio is played after it."""
    queue = PlaybackQueue(320)
    queue.feed(bytes(320 * 250 + 17))
    assert queue.clear() == 250
    assert queue.idle
    assert drain(queue) == []


def test_queue_is_bounded() -> None:
    """Audio beyond max_frames is dropped and counted, the oldest keeps playing."""
    queue = PlaybackQueue(320, max_frames=3)
    queue.feed(b"a" * 320 + b"b" * 320 + b"c" * 320 + b"d" * 320)
    assert queue.dropped == 1
    assert drain(queue) == [b"a" * 320, b"b" * 320, b"c" * 320]


def test_falling_behind_by_more_than_max_lag_drops_the_oldest_frames() -> None:
    """Skipped ticks add up while frames wait; past max_lag that many of the oldest frames go, and are counted."""
    queue = PlaybackQueue(320, max_lag=5)
    queue.feed(b"".join(bytes([n]) * 320 for n in range(20)))
    assert queue.fell_behind(3) == 0 and queue.fell_behind(2) == 0  # 5 behind: tolerated
    assert queue.fell_behind(1) == 6
    assert queue.late_dropped == 6 and len(queue) == 14
    assert queue.next_frame() == bytes([6]) * 320
    assert queue.fell_behind(5) == 0  # back on schedule: the count starts again


def test_audio_that_arrives_ahead_of_real_time_is_never_dropped() -> None:
    """
    A 30 s answer sent in one burst is ahead of real time: it plays in full. Ticks skipped while nothing was queued
    delayed nothing, and running dry puts the queue back on schedule.
    """
    queue = PlaybackQueue(320, max_lag=100)
    assert queue.fell_behind(10_000) == 0
    queue.feed(bytes(320 * 1500))
    assert len(drain(queue)) == 1500
    queue.feed(bytes(320 * 60))
    assert queue.fell_behind(60) == 0
    assert len(drain(queue)) == 60  # ran dry: the 60 ticks behind are forgotten
    queue.feed(bytes(320 * 200))
    assert queue.fell_behind(60) == 0 and queue.late_dropped == 0
    queue.clear()
    queue.feed(bytes(320 * 200))
    assert queue.fell_behind(60) == 0 and queue.late_dropped == 0  # a barge-in starts afresh too


def test_the_lag_counts_only_frames_that_were_waiting() -> None:
    """A skipped tick can only delay a frame that is queued: 3 frames waiting through 50 skipped ticks are 3 late."""
    queue = PlaybackQueue(320, max_lag=5)
    queue.feed(bytes(320 * 3))
    assert queue.fell_behind(50) == 0
    queue.feed(bytes(320 * 10))
    assert queue.fell_behind(3) == 6 and len(queue) == 7


def play(queue: PlaybackQueue, arrivals: dict[int, int], ticks: int) -> list[tuple[int, int, int]]:
    """
    Run ``ticks`` ticks: before tick ``t`` the agent's frames numbered ``arrivals[t]``... arrive (each frame's
    bytes say its number). :return: (tick, frame number, frames queued behind it) for every frame played.
    """
    played = []
    fed = 0
    for tick in range(ticks):
        for _ in range(arrivals.get(tick, 0)):
            queue.feed(fed.to_bytes(4, "little") * 80)
            fed += 1
        frame = queue.next_frame()
        if frame is not None:
            played.append((tick, int.from_bytes(frame[:4], "little"), len(queue)))
    return played


def real_time(ticks: range, lead: int = 0) -> dict[int, int]:
    """One frame per tick (plus ``lead`` more at the first tick): an agent streaming in real time."""
    arrivals = dict.fromkeys(ticks, 1)
    arrivals[ticks.start] += lead
    return arrivals


def test_a_hiccup_in_a_real_time_stream_is_caught_up() -> None:
    """
    A real-time stream stalls for 12 ticks, then the held frames arrive at once: without a remedy they would stand
    queued (240 ms late) for the rest of the call. The queue drops one frame every CATCH_UP_SPACING ticks until no
    more than CATCH_UP_DEPTH stand behind the one playing; nothing else is lost, and the order is kept.
    """
    arrivals = real_time(range(100))  # then nothing for ticks 100-111
    arrivals[112] = 13  # the 12 stalled frames and the one due now
    arrivals.update(real_time(range(113, 400)))
    queue = PlaybackQueue(320)
    played = play(queue, arrivals, 400)
    numbers = [n for _, n, _ in played]
    assert numbers == sorted(numbers)
    dropped = sorted(set(range(400)) - set(numbers) - set(range(400 - len(queue), 400)))
    assert len(dropped) == queue.caught_up == 12 - CATCH_UP_DEPTH
    cut_ticks = [tick for tick, n, _ in played if n - 1 in dropped]
    assert all(b - a >= CATCH_UP_SPACING for a, b in zip(cut_ticks, cut_ticks[1:], strict=False))
    assert max(behind for tick, _, behind in played if tick > 200) <= CATCH_UP_DEPTH


def test_without_a_remedy_the_hiccup_would_stand() -> None:
    """The same stall with CATCH_UP_DEPTH frames or fewer held: nothing is dropped (a small cushion is kept)."""
    arrivals = real_time(range(100))
    arrivals[100 + CATCH_UP_DEPTH] = CATCH_UP_DEPTH + 1
    arrivals.update(real_time(range(101 + CATCH_UP_DEPTH, 400)))
    queue = PlaybackQueue(320)
    played = play(queue, arrivals, 400)
    assert queue.caught_up == 0 and len(played) + len(queue) == 400


def test_audio_sent_ahead_of_real_time_is_never_cut() -> None:
    """An agent that keeps 2 s ahead (a burst, then real time), with a hiccup and after a pause: all of it plays."""
    arrivals = real_time(range(50), lead=100)  # 2 s ahead from the start
    arrivals.update(real_time(range(60, 200), lead=100))  # a hiccup of 10 ticks, then 2 s ahead again
    arrivals.update(real_time(range(600, 700), lead=30))  # after a pause, 600 ms ahead
    queue = PlaybackQueue(320)
    played = play(queue, arrivals, 1500)
    assert queue.caught_up == 0
    assert [n for _, n, _ in played] == list(range(50 + 100 + 140 + 100 + 100 + 30))


def test_an_agent_streaming_in_real_time_chunks_is_never_cut() -> None:
    """
    140 ms chunks every 140 ms, one chunk in five a tick late: the queue fills after each chunk and drains before
    the next (no standing queue), so nothing is dropped however often the late chunks leave a tick empty.
    """
    arrivals: dict[int, int] = {}
    for chunk in range(100):
        arrivals[chunk * 7 + (1 if chunk % 5 == 4 else 0)] = 7
    queue = PlaybackQueue(320)
    played = play(queue, arrivals, 720)
    assert queue.caught_up == 0
    assert [n for _, n, _ in played] == list(range(700))


def test_a_pause_is_not_a_hiccup() -> None:
    """Dry for longer than a hiccup (the agent paused): the next stream's lead is its own, and kept in full."""
    arrivals = real_time(range(50))
    arrivals.update(real_time(range(80, 300), lead=10))
    queue = PlaybackQueue(320)
    play(queue, arrivals, 400)
    assert queue.caught_up == 0


def test_a_barge_in_forgets_the_slip() -> None:
    """After `clear`, the ticks that ran dry before it do not count against the next answer."""
    arrivals = real_time(range(50))
    arrivals[60] = 1  # 10 dry ticks, then one frame: a slip of 10
    queue = PlaybackQueue(320)
    play(queue, arrivals, 61)
    queue.clear()
    assert play(queue, real_time(range(100), lead=10), 100)[-1][1] == 99
    assert queue.caught_up == 0


class Recorder:
    """A player that records the clock time of every frame it is asked to play, and the ticks it missed."""

    def __init__(self, clock: Clock, frames: int | None = None) -> None:
        self.clock = clock
        self.times: list[float] = []
        self.left = frames
        self.missed_ticks: list[int] = []

    def play_frame(self) -> None:
        if self.left is None or self.left > 0:
            self.times.append(self.clock.seconds())
            if self.left is not None:
                self.left -= 1

    def missed(self, ticks: int) -> None:
        self.missed_ticks.append(ticks)


def test_ticker_has_no_drift_over_ten_minutes() -> None:
    """30,000 ticks (10 minutes) each land within the reactor's lateness of start + n x 20 ms: no accumulation."""
    clock = Clock()
    ticker = FrameTicker(clock)
    player = Recorder(clock)
    ticker.add(player)
    for _ in range(30_000):
        # Uneven steps, as a busy reactor gives: every tick fires up to 13 ms late.
        clock.advance(0.013)
        clock.advance(0.007)
    clock.advance(1e-6)  # float rounding of 60,000 additions
    assert len(player.times) == 30_000
    lateness = [t - (n + 1) * 0.020 for n, t in enumerate(player.times)]
    assert min(lateness) > -1e-6
    assert max(lateness) < 0.0131
    # The last frame is as punctual as the first: lateness does not grow.
    assert abs(lateness[-1] - lateness[0]) < 1e-6
    ticker.discard(player)
    assert not clock.getDelayedCalls()


def test_ticker_catches_up_boundedly_after_a_stall() -> None:
    """After a 100 ms stall each player gets at most max_catch_up frames at once, then the cadence resumes."""
    clock = Clock()
    ticker = FrameTicker(clock, max_catch_up=3)
    player = Recorder(clock)
    ticker.add(player)
    clock.advance(0.020)
    assert len(player.times) == 1
    clock.advance(0.100)  # 5 ticks late
    assert len(player.times) == 1 + 3
    assert player.missed_ticks == [2]  # the two beyond max_catch_up are skipped, and the player is told
    clock.advance(0.020)
    assert len(player.times) == 5 and player.missed_ticks == [2]
    ticker.discard(player)


def test_ticker_serves_every_player_and_stops_when_empty() -> None:
    """One tick serves all registered players; with none left no timer remains."""
    clock = Clock()
    ticker = FrameTicker(clock)
    players = [Recorder(clock) for _ in range(20)]
    for p in players:
        ticker.add(p)
    for _ in range(50):
        clock.advance(0.020)
    assert all(len(p.times) == 50 for p in players)
    for p in players:
        ticker.discard(p)
    assert len(ticker) == 0
    assert not clock.getDelayedCalls()


@pytest.mark.logs_errors(r"Playback failed for .*Broken")
def test_a_failing_player_does_not_stop_the_others() -> None:
    """An exception in one call's playback removes that call only."""
    clock = Clock()
    ticker = FrameTicker(clock)

    class Broken:
        def play_frame(self) -> None:
            raise RuntimeError("boom")

    good = Recorder(clock)
    ticker.add(Broken())
    ticker.add(good)
    for _ in range(5):
        clock.advance(0.020)
    assert len(good.times) == 5
    assert len(ticker) == 1
    ticker.discard(good)


def test_phased_ticker_gives_each_player_one_frame_per_20_ms_in_its_own_slot() -> None:
    """
    With 4 phases, 8 players form 4 groups of 2, served 5 ms apart; each player's n-th frame is due at its first
    frame + n x 20 ms and comes no later than the clock's own step (5 ms here): no drift.
    """
    clock = Clock()
    ticker = FrameTicker(clock, phases=4)
    players = [Recorder(clock) for _ in range(8)]
    for p in players:
        ticker.add(p)
    for _ in range(4 * 1000):
        clock.advance(0.005)
    clock.advance(1e-6)
    offsets = sorted({round(p.times[0], 6) for p in players})
    assert offsets == [0.005, 0.010, 0.015, 0.020]
    assert sorted(round(p.times[0], 6) for p in players).count(0.005) == 2
    for p in players:
        assert len(p.times) in (999, 1000)
        lateness = [t - (p.times[0] + n * 0.020) for n, t in enumerate(p.times)]
        assert min(lateness) > -1e-6 and max(lateness) < 0.0051
    for p in players:
        ticker.discard(p)
    assert not clock.getDelayedCalls()


def test_phased_ticker_catches_up_boundedly_after_a_stall() -> None:
    """After a 100 ms stall every player of a phased ticker gets at most max_catch_up frames at once."""
    clock = Clock()
    ticker = FrameTicker(clock, max_catch_up=3, phases=4)
    players = [Recorder(clock) for _ in range(4)]
    for p in players:
        ticker.add(p)
    clock.advance(0.020)
    assert [len(p.times) for p in players] == [1, 1, 1, 1]
    clock.advance(0.100)
    assert [len(p.times) for p in players] == [4, 4, 4, 4]
    assert [p.missed_ticks for p in players] == [[2], [2], [2], [2]]  # 8 steps skipped, 2 of each group's
    for _ in range(4):
        clock.advance(0.005)
    assert [len(p.times) for p in players] == [5, 5, 5, 5]
    clock.advance(0.033)  # late, but within max_catch_up: nothing is skipped
    assert [p.missed_ticks for p in players] == [[2], [2], [2], [2]]
    for p in players:
        ticker.discard(p)


def test_new_players_join_the_smallest_group() -> None:
    """Players leaving and arriving keep the groups balanced: a newcomer takes the emptiest phase."""
    clock = Clock()
    ticker = FrameTicker(clock, phases=4)
    players = [Recorder(clock) for _ in range(8)]
    for p in players:
        ticker.add(p)
    ticker.discard(players[0])
    ticker.discard(players[4])  # the same group as players[0]
    newcomer = Recorder(clock)
    ticker.add(newcomer)
    for _ in range(4):
        clock.advance(0.005)
    same_slot = [p for p in players if p.times and p.times[0] == newcomer.times[0]]
    assert same_slot == []  # it took the group players[0] and players[4] left empty
    assert len(ticker) == 7
    for p in [*players, newcomer]:
        ticker.discard(p)
    assert not clock.getDelayedCalls()


class Streamer:
    """A call whose agent sends 20 ms of audio per 20 ms of clock time, played through a PlaybackQueue."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.queue = PlaybackQueue(320)
        self.fed = 0
        self.played = 0
        self.longest = 0

    def receive(self) -> None:
        due = int(self.clock.seconds() / 0.020 + 1e-9)
        while self.fed < due:
            self.queue.feed(self.fed.to_bytes(4, "little") * 80)
            self.fed += 1
        self.longest = max(self.longest, len(self.queue))

    def play_frame(self) -> None:
        if self.queue.next_frame() is not None:
            self.played += 1

    def missed(self, ticks: int) -> None:
        self.queue.fell_behind(ticks)


@pytest.mark.parametrize("phases", [1, 4])
def test_an_overloaded_server_stays_near_real_time(phases: int) -> None:
    """
    The reactor runs only every 100 ms (CPU overload) for 2 minutes while the agent streams in real time: the ticker
    can serve 3 of every 5 frames, yet the queue (the delay) stays within about max_lag, instead of growing to
    48 s; the frames beyond it are dropped and counted.
    """
    clock = Clock()
    ticker = FrameTicker(clock, max_catch_up=3, phases=phases)
    call = Streamer(clock)
    ticker.add(call)
    for _ in range(1200):
        clock.advance(0.100)
        call.receive()
    assert call.fed == 6000
    assert call.longest <= MAX_LAG_FRAMES + 10  # 2 s (+ one reactor pass)
    assert call.queue.late_dropped > 0
    assert call.played + call.queue.late_dropped + call.queue.caught_up + len(call.queue) == call.fed
    ticker.discard(call)


def test_a_burst_answer_plays_in_full_on_a_busy_but_keeping_up_server() -> None:
    """A 60 s answer in one burst, with ticks up to 50 ms late (within max_catch_up): every frame is played."""
    clock = Clock()
    ticker = FrameTicker(clock, max_catch_up=3, phases=4)
    call = Streamer(clock)
    call.queue.feed(bytes(320 * 3000))
    ticker.add(call)
    for _ in range(1300):
        clock.advance(0.050)
    assert call.played == 3000 and call.queue.late_dropped == 0
    ticker.discard(call)
