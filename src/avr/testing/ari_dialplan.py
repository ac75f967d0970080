"""
The small dialplan interpreter of the fake Asterisk (for Local channels and ``continue``), mixed into
`avr.testing.ari_engine.AsteriskEngine`. Applications: Answer (then 500 ms before the next priority, as
``__ast_answer`` waits for media), Wait, Hangup, Ringing, Progress, Busy, Congestion, Playback (sound lengths from
the engine's table; ``PLAYBACKSTATUS``), SendDTMF (digits reach the Local peer), Set, Stasis; anything else runs as
NoOp. Each application publishes ChannelDialplan, as Asterisk does.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from avr.testing.ari_model import Channel, param_float, param_int

if TYPE_CHECKING:
    from avr.testing.ari_engine import AsteriskEngine


class DialplanMixin:
    """``_pbx_start`` runs ``context,exten,priority`` on a channel until it hangs up or enters Stasis."""

    def _pbx_start(self: AsteriskEngine, ch: Channel, context: str, exten: str, priority: int,
                   nested: bool = False) -> None:  # fmt: skip
        steps = self.dialplan.get(context, {}).get(exten)
        if not steps or priority > len(steps) or priority < 1:
            self.log.info("Fake Asterisk: no extension {exten}@{context} for {name}", exten=exten, context=context,
                          name=ch.name)  # fmt: skip
            ch.context, ch.exten, ch.priority = context, exten, priority
            self._end_channel(ch, 0)
            return
        ch.pbx_started = True
        if not ch.pbx_kind:
            ch.pbx_kind = "nested" if nested else "real"
            if ch.nested_app is None:
                ch.nested_app = (ch.app_name, ch.app_data)
        ch.context, ch.exten, ch.priority = context, exten, priority
        self._pbx_run(ch)

    def _pbx_run(self: AsteriskEngine, ch: Channel) -> None:
        while ch.alive and not ch.ending and ch.stasis is None:
            steps = self.dialplan.get(ch.context, {}).get(ch.exten, [])
            if ch.priority > len(steps):
                self._end_channel(ch, ch.hangupcause if ch.hangupcause is not None else 16)
                return
            step = steps[ch.priority - 1]
            data = self._substitute(ch, step.data)
            ch.saved_app = (ch.app_name, ch.app_data)
            ch.app_name, ch.app_data = step.app, data
            self.emit("ChannelDialplan", [("dialplan_app", step.app), ("dialplan_app_data", data),
                                          ("channel", ch)], channels=[ch])  # fmt: skip
            delay = self._exec_app(ch, step.app, data)
            if delay is None or not ch.alive or ch.ending or ch.stasis is not None:
                return
            if delay > 0:
                self._later(ch, delay, self._pbx_next, ch)
                return
            ch.priority += 1

    def _pbx_next(self: AsteriskEngine, ch: Channel) -> None:
        if not ch.alive or ch.ending:
            return
        if ch.pbx_app == "Playback":
            self._setvar(ch, "PLAYBACKSTATUS", "SUCCESS")
        ch.pbx_app = ""
        ch.priority += 1
        self._pbx_run(ch)

    def _substitute(self: AsteriskEngine, ch: Channel, data: str) -> str:
        return re.sub(r"\$\{([^}]+)\}", lambda m: ch.variables.get(m.group(1), self.global_vars.get(m.group(1), "")),
                      data)  # fmt: skip

    def _exec_app(self: AsteriskEngine, ch: Channel, app: str, data: str) -> float | None:
        """Run one dialplan application; returns the delay before the next priority, or None to stop here."""
        name = app.lower()
        args = [a.strip() for a in data.split(",")] if data else []
        if name == "answer":
            if ch.state == "Up":
                return 0.0
            self._answer(ch)
            return 0.5  # Answer() waits up to 500 ms for media before the next priority
        if name == "wait":
            return param_float(args[0] if args else "0")
        if name == "hangup":
            cause = param_int(args[0] if args else "", 0) or (ch.hangupcause if ch.hangupcause is not None else 16)
            ch.hangupcause = cause
            self._end_channel(ch, cause)
            return None
        if name in ("ringing", "progress"):
            peer = ch.peer
            if peer is not None and peer.dialing and name == "ringing":
                self._state(peer, "Ringing")
                self._dial_event(peer, "RINGING")
            return 0.0
        if name in ("busy", "congestion"):
            cause, status = (17, "BUSY") if name == "busy" else (34, "CONGESTION")
            self._state(ch, "Busy" if name == "busy" else ch.state)
            ch.hangupcause = cause
            peer = ch.peer
            if peer is not None and peer.dialing:
                self._dial_event(peer, status)
                self._end_channel(peer, 0)
            else:
                self._end_channel(ch, cause)
            return None
        if name == "playback":
            seconds = self.sounds.get(args[0] if args else "")
            if seconds is None:
                self._setvar(ch, "PLAYBACKSTATUS", "FAILED")
                return 0.0
            ch.pbx_app = "Playback"
            return seconds
        if name == "senddtmf":
            digits = args[0] if args else ""
            between = param_int(args[1] if len(args) > 1 else "", 0) or 250
            duration = param_int(args[2] if len(args) > 2 else "", 0) or 100
            receiver = ch.peer if ch.peer is not None and ch.peer.alive else None
            return self._dtmf_stream(ch, receiver, digits, 0, between, duration, 0, owner=ch)
        if name == "set":
            var, _, value = data.partition("=")
            if var:
                self._set_any(ch, var.strip(), value)
            return 0.0
        if name == "stasis":
            stasis_app = args[0] if args else ""
            if not self._enter_stasis(ch, stasis_app, args[1:], "dialplan", saved=ch.saved_app):
                self._setvar(ch, "STASISSTATUS", "FAILED")
                return 0.0
            return None
        return 0.0  # NoOp, Verbose, Log and anything else the fake does not model

    def _answer(self: AsteriskEngine, ch: Channel) -> None:
        self._state(ch, "Up")
        peer = ch.peer
        if peer is not None and peer.dialing:
            self._dial_answered(peer)
