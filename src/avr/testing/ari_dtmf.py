"""
DTMF in the fake Asterisk: ``POST /channels/{id}/dtmf`` (played in the channel's command queue; 204 at once),
``SendDTMF()`` in the dialplan, and digits pressed by a far end. A digit is reported when it ends, on the
receiving channel: the other half of a Local pair, the AudioSocket connection of an externalMedia channel, or
(for a far end outside the fake) `Dtmf.sent` (facts 4, 22). Timing as ``ast_dtmf_stream``: 100 ms of quiet, then
per digit ``duration`` then ``between``.
"""

from __future__ import annotations

from typing import Any

from attrs import define, field
from twisted.logger import Logger

from avr.testing.ari_applications import Applications
from avr.testing.ari_clock import AsteriskClock, TimerOwner
from avr.testing.ari_model import Channel, Command
from avr.testing.ari_params import AriHttpError, param_int, param_str
from avr.testing.ari_recordings import Recordings
from avr.testing.ari_stasis import CommandQueue

DTMF_DIGITS = frozenset("0123456789ABCDabcd*#")


def dtmf_schedule(digits: str, before: int, between: int, duration: int, after: int) -> tuple[list, float]:
    """
    When each digit of ``digits`` ends, relative to the start, and how long the whole send takes (``w``/``W`` are
    pauses of 0.5/1 s; other characters that are not digits are skipped).

    :param before: ms before the first digit; ``between`` and ``duration`` are per digit; ``after`` ms at the end.
    :return: ``([(seconds, digit), ...], total seconds)``.
    """
    t = max(before, 0) / 1000 + 0.1
    ends = []
    for char in digits:
        if char == "w":
            t += 0.5
        elif char == "W":
            t += 1.0
        elif char in DTMF_DIGITS:
            t += max(duration, 0) / 1000
            ends.append((t, char))
            t += max(between, 0) / 1000
    return ends, t + max(after, 0) / 1000


@define(eq=False)
class Dtmf:
    """
    Sends and receives digits.

    :param clock: digit timing.
    :param apps: ChannelDtmfReceived.
    :param commands: the queue ``/dtmf`` runs in.
    :param recordings: stopped by ``terminateOn`` digits.
    :param loopback: digits sent to a channel whose far end is outside the fake come back as ChannelDtmfReceived.
    :ivar sent: those digits, by channel id.
    """

    log = Logger()

    _clock: AsteriskClock
    _apps: Applications
    _commands: CommandQueue
    _recordings: Recordings
    loopback: bool = False
    sent: dict[str, list[str]] = field(factory=dict, init=False)

    def send(self, ch: Channel, params: dict[str, Any]) -> None:
        """``POST /channels/{id}/dtmf`` (after the control's checks): queued; a hangup waits until it is done."""
        dtmf = param_str(params.get("dtmf"))
        if not dtmf:
            raise AriHttpError(400, "DTMF is required")
        spec = (dtmf, param_int(params.get("before"), 0), param_int(params.get("between"), 100),
                param_int(params.get("duration"), 100), param_int(params.get("after"), 0))  # fmt: skip
        cmd = Command(spec, lambda: self._begin(ch, cmd), interruptible=False)
        self._commands.enqueue(ch, cmd)

    def _begin(self, ch: Channel, cmd: Command) -> None:
        digits, before, between, duration, after = cmd.obj
        receiver = ch.peer if ch.tech == "Local" and ch.peer is not None else None
        total = self.stream(ch, receiver, digits, before, between, duration, after, owner=cmd)
        self._clock.later(cmd, total, self._commands.done, ch, cmd)

    def stream(self, sender: Channel, receiver: Channel | None, digits: str, before: int, between: int,
               duration: int, after: int, *, owner: TimerOwner) -> float:  # fmt: skip
        """Schedule the digits (timers on ``owner``); returns how long the send takes."""
        ends, total = dtmf_schedule(digits, before, between, duration, after)
        for offset, digit in ends:
            self._clock.later(owner, offset, self._digit_sent, sender, receiver, digit, duration)
        return total

    def _digit_sent(self, sender: Channel, receiver: Channel | None, digit: str, duration: int) -> None:
        if receiver is not None:
            if receiver.alive:
                self.received(receiver, digit, duration)
            return
        if sender.audiosocket is not None:
            try:
                sender.audiosocket.send_dtmf(digit)
            except Exception:
                self.log.failure("Sending DTMF on the fake AudioSocket connection failed")
            return
        self.sent.setdefault(sender.id, []).append(digit)
        if self.loopback and sender.alive:
            self.received(sender, digit, duration)

    def received(self, ch: Channel, digit: str, duration_ms: int = 100) -> None:
        """
        ``ch`` received one digit (at its end): ChannelDtmfReceived, recordings with ``terminateOn`` stop, and the
        digit passes through ``ch``'s bridge to its AudioSocket members (a 0x03 frame each, as the externalMedia
        capture shows for a bridged caller's DTMF).
        """
        self._apps.emit("ChannelDtmfReceived", [("digit", digit), ("duration_ms", duration_ms), ("channel", ch)],
                        channels=[ch])  # fmt: skip
        self._recordings.dtmf(ch, digit)
        if ch.bridge is not None:
            for member in ch.bridge.channels:
                if member is not ch and member.audiosocket is not None:
                    member.audiosocket.send_dtmf(digit)

    def remote(self, ch: Channel, digits: str, duration_ms: int, between_ms: int) -> None:
        """The far end of ``ch`` presses ``digits`` (each reported when it ends)."""
        t = 0.0
        for char in digits:
            if char in DTMF_DIGITS:
                t += duration_ms / 1000
                self._clock.later(ch, t, self.received, ch, char, duration_ms)
                t += between_ms / 1000
