"""
Real-time playback to Asterisk.

Asterisk neither buffers nor paces what an AudioSocket server sends (protocols.md A8): a burst becomes an RTP burst
that the far end's jitter buffer drops. So agent audio is cut into 20 ms frames (`PlaybackQueue`, sans-IO) and one
shared `FrameTicker` releases one frame per call every 20 ms on an absolute schedule, so that the stream never drifts
however long the call.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Protocol

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from avr.histogram import Buckets

#: Frame duration, seconds: Asterisk's own ptime and the rate its softmix bridges expect.
FRAME_SECONDS = 0.020

#: Groups of calls the server's ticker serves in turn (see `FrameTicker`): a tick every 5 ms, a quarter of the calls
#: each.
PLAYOUT_PHASES = 4

#: How far (in frames: 2 s) queued playback may fall behind its real-time schedule, because the ticker had to skip
#: slots while the server was overloaded, before its oldest frames are dropped to bring it back (`PlaybackQueue`).
MAX_LAG_FRAMES = 100

#: Frames (100 ms) that may stand queued behind the one playing because playback ran dry mid-stream, before the
#: queue catches up (`PlaybackQueue`).
CATCH_UP_DEPTH = 5

#: Ticks between two frames dropped while catching up: a 20 ms cut at most every 100 ms.
CATCH_UP_SPACING = 5

#: Ticks (500 ms) a queue may run dry and still be one stream with a hiccup in it, rather than a pause between two.
HICCUP_TICKS = 25

#: Ticks (500 ms) more than `CATCH_UP_DEPTH` frames must have stood queued before any is dropped: an agent that
#: streams in real time but in chunks (say 140 ms at a time) fills the queue after each chunk and lets it drain
#: before the next, which is not a standing queue.
STANDING_TICKS = 25


#: A frame is *late* when it left more than this many seconds (one whole frame) after its slot on the ticker's
#: schedule: by then the slot of the frame after it has come (`FrameTicker`, ``Player.late_frames``).
LATE_SECONDS = FRAME_SECONDS

#: Upper bounds (seconds) of the buckets of `FrameTicker.lateness`; `LATE_SECONDS` is one of them, so the late frames
#: are exactly those above that bucket.
LATENESS_BOUNDS = (0.001, 0.002, 0.005, 0.01, LATE_SECONDS, 0.04, 0.06, 0.1, 0.25)

#: Frames of agent audio a call's playback queue holds by default (300 s: ``PLAYBACK_MAX_SECONDS``).
PLAYBACK_MAX_FRAMES = 50 * 300


def frame_bytes_for_rate(rate: int) -> int:
    """Bytes of one 20 ms frame of mono PCM16 at ``rate`` Hz (320 at 8 kHz, 640 at 16 kHz, 1764 at 44.1 kHz)."""
    return rate // 50 * 2


@define(eq=False)
class PlaybackQueue:
    """
    Audio waiting to be played, cut into frames of ``frame_bytes``, whatever the sizes of the chunks fed in.

    A trailing partial frame is held for one tick in case the rest of it is on its way; if nothing arrives by then
    it is padded with silence and played, so the end of an utterance is never stuck.

    Queued audio plays one frame per tick, so it is behind real time only by the ticks that were skipped while it
    waited (`fell_behind`): a long answer an agent sent in one burst is ahead of real time, not behind, and plays in
    full. Once the skipped ticks add up to more than ``max_lag``, the oldest frames are dropped (counted in
    `late_dropped`) and playback is back on schedule: an overloaded server's calls sound cut, but stay live.

    A frame of a real-time stream that arrives just after its tick leaves that tick empty and plays one tick late,
    and so does every frame after it, since they keep coming one per tick: without a remedy, each hiccup of the
    network or of the agent would add 20 ms to the rest of the call. The queue counts those empty ticks of a stream
    (its *slip*: dry for at most `HICCUP_TICKS`, then fed again; a longer gap is a pause and starts afresh), and
    once more than `CATCH_UP_DEPTH` frames have stood behind the one playing for `STANDING_TICKS` it drops one frame
    every `CATCH_UP_SPACING` ticks, never more than the slip (counted in `caught_up`). A queue deeper than the slip
    explains was sent ahead of real time: nothing of it is dropped.
    """

    frame_bytes: int
    #: Most frames held (older audio keeps playing; audio beyond this is dropped and counted in `dropped`).
    max_frames: int = PLAYBACK_MAX_FRAMES
    dropped: int = 0
    #: Called with `dropped` the first time audio is dropped because the queue is full (to report it once).
    on_full: Callable[[int], None] | None = None
    #: Frames playback may fall behind real time before the oldest are dropped.
    max_lag: int = MAX_LAG_FRAMES
    #: Frames dropped to catch up with real time.
    late_dropped: int = 0
    _frames: deque[bytes] = field(factory=deque)
    _partial: bytes = b""
    _partial_waited: bool = False
    # Ticks missed while frames were waiting, since the queue last ran dry.
    _lag: int = 0
    #: Frames dropped to take back the delay that ticks with nothing to play added to a stream.
    caught_up: int = 0
    # Ticks in a row with nothing to play; the stream's slip (see above); ticks since a frame was dropped for it;
    # ticks so far, and the last one at which no more than CATCH_UP_DEPTH frames stood behind the one playing.
    _dry: int = 0
    _slip: int = 0
    _since_cut: int = CATCH_UP_SPACING
    _ticks: int = 0
    _shallow: int = 0

    def feed(self, pcm: bytes) -> None:
        """Queue ``pcm`` (PCM16LE at the playback rate) behind what is already queued."""
        if self._dry:
            self._slip = self._slip + self._dry if self._dry <= HICCUP_TICKS else 0
            self._dry = 0
        frames = self._frames
        if len(pcm) == self.frame_bytes and not self._partial and len(frames) < self.max_frames:
            frames.append(pcm)  # the common case: one whole frame
            return
        if self._partial:
            pcm = self._partial + pcm
            self._partial = b""
            self._partial_waited = False
        size = self.frame_bytes
        whole = len(pcm) - len(pcm) % size
        if whole:
            room = self.max_frames - len(self._frames)
            count = whole // size
            if count > room:
                first = not self.dropped
                self.dropped += count - room
                count = room
                if first and self.on_full is not None:
                    self.on_full(self.dropped)
            if count == 1 and whole == len(pcm):
                self._frames.append(pcm)
            else:
                self._frames.extend(pcm[i : i + size] for i in range(0, count * size, size))
        self._partial = pcm[whole:]

    def next_frame(self) -> bytes | None:
        """The frame to play at this tick, or ``None`` when there is nothing to play."""
        frames = self._frames
        self._ticks += 1
        if frames:
            if len(frames) <= CATCH_UP_DEPTH + 1:
                self._shallow = self._ticks
            elif self._slip and self._ticks - self._shallow >= STANDING_TICKS:
                self._catch_up(frames)
            return frames.popleft()
        self._shallow = self._ticks
        self._lag = 0  # ran dry: whatever comes next is on time
        self._dry += 1
        if not self._partial:
            return None
        if not self._partial_waited:
            self._partial_waited = True
            return None
        self._dry = 0
        frame = self._partial + bytes(self.frame_bytes - len(self._partial))
        self._partial = b""
        self._partial_waited = False
        return frame

    def _catch_up(self, frames: deque[bytes]) -> None:
        """
        More than `CATCH_UP_DEPTH` frames have stood behind the one about to play for `STANDING_TICKS`: drop the
        oldest if the slip explains them (see above).
        """
        self._since_cut += 1
        behind = len(frames) - 1
        if behind > self._slip + CATCH_UP_DEPTH:  # sent ahead of real time: the slip is absorbed
            self._slip = 0
        elif self._since_cut >= CATCH_UP_SPACING:
            frames.popleft()
            self._slip -= 1
            self.caught_up += 1
            self._since_cut = 0

    def clear(self) -> int:
        """Drop everything queued (barge-in). :return: the number of whole frames dropped."""
        dropped = len(self._frames)
        self._frames.clear()
        self._partial = b""
        self._partial_waited = False
        self._lag = 0
        self._dry = self._slip = 0
        return dropped

    def fell_behind(self, ticks: int) -> int:
        """
        ``ticks`` of this queue's ticks were skipped (the reactor was held up): the frames waiting now play that much
        later than they should (at most as many ticks as frames count, since a tick can only delay a frame that is
        there). When the queue is more than ``max_lag`` behind, drop that many of its oldest frames.

        :return: the frames dropped now (0 most of the time).
        """
        frames = self._frames
        self._lag += min(ticks, len(frames))
        if self._lag <= self.max_lag:
            return 0
        count = min(self._lag, len(frames))
        for _ in range(count):
            frames.popleft()
        self.late_dropped += count
        self._lag = 0
        return count

    def __len__(self) -> int:
        """Whole frames queued."""
        return len(self._frames)

    @property
    def idle(self) -> bool:
        """True when nothing at all (not even a partial frame) is queued."""
        return not self._frames and not self._partial


class Player(Protocol):
    """Something the ticker drives: plays at most one frame per call of `play_frame`."""

    #: Frames this player sent that left more than `LATE_SECONDS` after their slot (the ticker counts them).
    late_frames: int

    def play_frame(self) -> bool:
        """Send the next frame, if any. :return: whether a frame was sent."""

    def missed(self, ticks: int) -> None:
        """The ticker skipped ``ticks`` of this player's ticks (the reactor was held up beyond ``max_catch_up``)."""


@define(eq=False)
class FrameTicker:
    """
    One 20 ms clock for every call's playback.

    Ticks follow ``start + n × 20 ms`` (`LoopingCall` schedules from its start time, not from the previous tick), so
    there is no drift. If the reactor was held up for more than a tick, each player gets the missed frames at once,
    up to ``max_catch_up`` (a lead Asterisk's softmix bridge tolerates); the ticks beyond are skipped, and each player
    is told how many of its own were (`Player.missed`), so that its queued audio does not fall further and further
    behind real time (see `PlaybackQueue.fell_behind`). The ticker runs only while at least one player is registered.

    How late each frame left is measured once per step, not per frame: every frame sent in one step shares the
    step's lateness (the clock at the start of the step minus the step's slot, ``start + n × 20 ms / phases``), and
    `lateness` counts the step's frames in that lateness's bucket. A player's frames sent in a step more than
    `LATE_SECONDS` late are added to its ``late_frames``.

    With ``phases`` > 1 the players are dealt into that many groups (a new player joins the smallest), served in
    turn every ``20 ms / phases``: each player still gets one frame per 20 ms on an absolute schedule, but a tick
    sends only a share of all calls' frames, so the frames of the calls served last in a tick are not held up behind
    everyone else's, and received audio is handled between the groups.
    """

    clock: IReactorTime
    interval: float = FRAME_SECONDS
    max_catch_up: int = 3
    phases: int = 1
    _groups: list[dict[int, Player]] = field(init=False)
    _group_of: dict[int, int] = field(factory=dict)
    #: How late the frames left (seconds after their slot), every frame sent so far; read by ``/metrics``.
    lateness: Buckets = field(factory=lambda: Buckets(LATENESS_BOUNDS))
    _loop: LoopingCall | None = None
    _served: int = 0
    log = Logger()

    def __attrs_post_init__(self) -> None:
        if self.phases < 1:
            raise ValueError(f"phases must be at least 1, got {self.phases}")
        self._groups = [{} for _ in range(self.phases)]

    def add(self, player: Player) -> None:
        """Start driving ``player`` (its first frame comes within 20 ms)."""
        key = id(player)
        if key in self._group_of:
            return
        group = min(range(self.phases), key=lambda g: len(self._groups[g]))
        self._groups[group][key] = player
        self._group_of[key] = group
        if self._loop is None:
            loop = LoopingCall.withCount(self._tick)
            loop.clock = self.clock
            self._loop = loop
            self._served = 0
            # now=False: the first tick comes one step later.
            loop.start(self.interval / self.phases, now=False).addErrback(
                lambda f: self.log.failure("Playback ticker stopped", f)
            )

    def discard(self, player: Player) -> None:
        """Stop driving ``player`` (idempotent)."""
        key = id(player)
        group = self._group_of.pop(key, None)
        if group is not None:
            del self._groups[group][key]
        if not self._group_of and self._loop is not None:
            self._loop.stop()
            self._loop = None

    def __len__(self) -> int:
        return len(self._group_of)

    def _tick(self, count: int) -> None:
        # ``count`` steps have passed since the last call; serve each step's group, but no player more than
        # max_catch_up times.
        last = self._served + count
        first = max(self._served + 1, last - self.max_catch_up * self.phases + 1)
        if first > self._served + 1:
            self._skipped(self._served + 1, first - 1)
        self._served = last
        loop = self._loop
        assert loop is not None and loop.starttime is not None
        start, step_seconds, now = loop.starttime, self.interval / self.phases, self.clock.seconds()
        for step in range(first, last + 1):
            late = now - start - step * step_seconds
            if late > LATE_SECONDS:
                self._serve_late(step, late)
                continue
            sent = 0
            for player in list(self._groups[step % self.phases].values()):
                try:
                    if player.play_frame():
                        sent += 1
                except Exception:
                    # One call's failure must never stop the others' audio.
                    self.log.failure("Playback failed for {player!r}", player=player)
                    self.discard(player)
            if sent:
                self.lateness.observe(max(late, 0.0), sent)

    def _serve_late(self, step: int, late: float) -> None:
        """Serve a step more than `LATE_SECONDS` after its slot: as `_tick` does, and count late frames per player."""
        sent = 0
        for player in list(self._groups[step % self.phases].values()):
            try:
                if player.play_frame():
                    sent += 1
                    player.late_frames += 1
            except Exception:
                self.log.failure("Playback failed for {player!r}", player=player)
                self.discard(player)
        if sent:
            self.lateness.observe(late, sent)

    def _skipped(self, first: int, last: int) -> None:
        """Steps ``first`` to ``last`` (inclusive) were skipped: tell each group's players how many were theirs."""
        phases = self.phases
        for group in range(phases):
            ticks = (last - group) // phases - (first - 1 - group) // phases
            if not ticks:
                continue
            for player in list(self._groups[group].values()):
                try:
                    player.missed(ticks)
                except Exception:
                    self.log.failure("Playback failed for {player!r}", player=player)
                    self.discard(player)
