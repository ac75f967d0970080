"""
How channels end in the fake Asterisk: ``DELETE /channels/{id}``, a far-end hangup, the end of a dialplan, and
``core restart now``, with Asterisk's event order and causes (facts 19, 23, 30).

With ``soft`` in ChannelHangupRequest, ``cause`` holds the soft-hangup flag (32 explicit, 16 app unload, 4
shutdown), not a Q.850 cause; the Q.850 cause is in ChannelDestroyed.
"""

from __future__ import annotations

from attrs import define
from twisted.logger import Logger

from avr.testing.ari_applications import Applications
from avr.testing.ari_bridges import Bridges
from avr.testing.ari_channels import Channels
from avr.testing.ari_clock import AsteriskClock
from avr.testing.ari_model import Channel
from avr.testing.ari_params import AriHttpError, param_str
from avr.testing.ari_playbacks import Playbacks
from avr.testing.ari_stasis import Stasis

SOFT_EXPLICIT = 32
SOFT_APPUNLOAD = 16
SOFT_SHUTDOWN = 4

#: ``ast_cause2str`` texts for the causes a fake call can end with.
Q850_CAUSES: dict[int, str] = {
    0: "Unknown", 1: "Unallocated (unassigned) number", 2: "No route to specified transmit network",
    3: "No route to destination", 6: "Channel unacceptable", 16: "Normal Clearing", 17: "User busy",
    18: "No user responding", 19: "User alerting, no answer", 20: "Subscriber absent", 21: "Call Rejected",
    22: "Number changed", 26: "Answered elsewhere", 27: "Destination out of order", 28: "Invalid number format",
    29: "Facility rejected", 31: "Normal, unspecified", 34: "Circuit/channel congestion", 38: "Network out of order",
    41: "Temporary failure", 42: "Switching equipment congestion", 44: "Requested channel not available",
    58: "Bearer capability not available", 127: "Interworking, unspecified",
}  # fmt: skip

#: ``DELETE /channels/{id}?reason=`` names (Asterisk 22.10).
HANGUP_REASONS: dict[str, int] = {
    "normal": 16, "busy": 17, "congestion": 34, "no_answer": 19, "timeout": 18, "rejected": 21, "unallocated": 1,
    "normal_unspecified": 31, "number_incomplete": 28, "codec_mismatch": 58, "interworking": 127, "failure": 38,
    "answered_elsewhere": 26,
}  # fmt: skip

#: Dial statuses of a channel that fails while it is being dialled, by cause.
DIAL_FAILURES = {17: "BUSY", 34: "CONGESTION", 42: "CONGESTION", 18: "NOANSWER", 19: "NOANSWER"}


@define(eq=False)
class Hangups:
    """
    Ends channels.

    :param clock: cancels an ending channel's timers.
    :param apps: ChannelDestroyed; forgets the channel's subscriptions.
    :param channels: the registry, hangup requests.
    :param bridges: a bridged channel leaves first.
    :param stasis: a channel in Stasis leaves it (StasisEnd).
    :param playbacks: forgets playbacks left on the channel.
    """

    log = Logger()

    _clock: AsteriskClock
    _apps: Applications
    _channels: Channels
    _bridges: Bridges
    _stasis: Stasis
    _playbacks: Playbacks

    def hangup(self, ch: Channel, params: dict[str, str]) -> None:
        """``DELETE /channels/{id}[?reason=|reason_code=]``: works on any channel (fact 19)."""
        reason, code = param_str(params.get("reason")), param_str(params.get("reason_code"))
        if reason and code:
            raise AriHttpError(400, "The reason and reason_code can't both be specified")
        if code:
            if not code.lstrip("-").isdigit():
                raise AriHttpError(400, "Invalid reason for hangup reason provided")
            cause = int(code)
        elif reason:
            if reason not in HANGUP_REASONS:
                raise AriHttpError(400, "Invalid reason for hangup reason provided")
            cause = HANGUP_REASONS[reason]
        else:
            cause = 16
        if ch.ending:
            return
        ch.hangupcause = cause
        self._channels.hangup_request(ch, SOFT_EXPLICIT, soft=True)
        self.end(ch, cause)

    def remote_hangup(self, ch: Channel, cause: int) -> None:
        """The far end hangs up: ChannelHangupRequest ``{cause}`` (no ``soft``), then the channel ends (fact 19)."""
        if ch.gone or ch.ending:
            return
        ch.hangupcause = cause
        if ch.dialing:
            self._channels.dial_event(ch, DIAL_FAILURES.get(cause, "CHANUNAVAIL"))
        else:
            self._channels.hangup_request(ch, cause)
        self.end(ch, cause)

    def end(self, ch: Channel, cause: int, force: bool = False) -> None:
        """
        ``ch`` goes away with ``cause``: its activity is interrupted (bridge, Stasis, dialplan app), a Local ;2
        half reports ``{cause:16, soft:true}``, the Local peer gets a hangup request, then ChannelDestroyed, then the
        peer ends too (facts 19, 23; ordering as in the captures). A hangup waits for an uninterruptible command
        (DTMF) unless ``force``.
        """
        if ch.gone:
            return
        state = ch.stasis
        if state is not None and state.current is not None and not state.current.interruptible and not force:
            state.pending_end = cause
            ch.ending = True
            return
        ch.ending = True
        self._clock.cancel(ch)
        ch.dialing = False
        if ch.bridge is not None:
            self._bridges.leave(ch, ch.bridge, by_hangup=True)
        restore = None
        if ch.stasis is not None:
            restore = self._stasis.leave(ch, report_status=True)
        elif ch.deferred_stasis_status:
            self._channels.setvar(ch, "STASISSTATUS", "SUCCESS")
        if ch.pbx_app == "Playback":
            self._channels.setvar(ch, "PLAYBACKSTATUS", "SUCCESS")
        ch.pbx_app = ""
        if ch.pbx_kind == "real":
            self._channels.hangup_request(ch, SOFT_APPUNLOAD, soft=True)
        if restore is not None:
            ch.app_name, ch.app_data = restore  # pbx_exec returns from Stasis()
        peer = ch.peer
        peer_cause = cause
        if peer is not None and not peer.gone and not peer.ending:
            if not (peer.half == 1 and peer.dialing):
                self._channels.hangup_request(peer, cause)
            if peer.hangupcause is not None:
                peer_cause = peer.hangupcause
        else:
            peer = None
        if ch.pbx_kind and ch.nested_app is not None:
            ch.app_name, ch.app_data = ch.nested_app  # the PBX has ended: the application before it shows again
        self._apps.emit("ChannelDestroyed", [("cause", cause), ("cause_txt", Q850_CAUSES.get(cause, "Unknown")),
                                             ("channel", ch)], channels=[ch])  # fmt: skip
        self._destroy(ch)
        if peer is not None:
            self.end(peer, peer_cause, force=force)
        for snoop in list(ch.snoops):
            if snoop.alive and not snoop.ending:
                self.remote_hangup(snoop, 16)

    def _destroy(self, ch: Channel) -> None:
        ch.gone = True
        self._clock.cancel(ch)
        self._channels.forget(ch)
        self._apps.forget_channel(ch)
        self._playbacks.forget_target(ch)
        if ch.audiosocket is not None:
            conn, ch.audiosocket = ch.audiosocket, None
            try:
                conn.close()
            except Exception:
                self.log.failure("Closing the fake AudioSocket connection failed")

    def shutdown(self) -> None:
        """
        Hang every channel up the way ``core restart now`` does (fact 30): ChannelHangupRequest ``{cause:4,
        soft:true}`` for all channels, then each ends with cause 0, ;2 halves first.
        """
        chans = [c for c in self._channels.by_id.values() if c.alive]
        for ch in chans:
            self._channels.hangup_request(ch, SOFT_SHUTDOWN, soft=True)
        for ch in sorted(chans, key=lambda c: c.half != 2):
            if ch.alive and not ch.ending:
                ch.hangupcause = 0
                self.end(ch, 0, force=True)
