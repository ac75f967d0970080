"""
The dialplan of the fake Asterisk: ``extensions.conf`` parsing and a small interpreter for Local channels,
inbound calls and ``continue``. Applications: Answer (then 500 ms before the next priority, as ``__ast_answer``
waits for media), Wait, Hangup, Ringing, Progress, Busy, Congestion, Playback (sound lengths from the sound table;
``PLAYBACKSTATUS``), SendDTMF (digits reach the Local peer), Set, Stasis; anything else runs as NoOp. Each
application publishes ChannelDialplan, as Asterisk does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from attrs import define, frozen
from twisted.logger import Logger

from avr.testing.ari_applications import Applications
from avr.testing.ari_channels import Channels
from avr.testing.ari_clock import AsteriskClock
from avr.testing.ari_dtmf import Dtmf
from avr.testing.ari_hangups import Hangups
from avr.testing.ari_model import Channel
from avr.testing.ari_params import AriHttpError, param_int, param_str
from avr.testing.ari_stasis import Stasis
from avr.testing.ari_variables import Variables

#: The dialplan of the capture system (fixtures README), so ``Local/6100@cap-ari`` etc. behave as captured.
FIXTURE_DIALPLAN = """
[avr-stasis]
exten => 6000,1,NoOp(Entering Stasis app avr-ari)
 same => n,Stasis(avr-ari)
 same => n,Hangup()

[cap-caller]
exten => s,1,Answer()
 same => n,Playback(hello-world)
 same => n,SendDTMF(123#,100)
 same => n,Wait(0.5)
 same => n,Hangup()

[cap-caller-long]
exten => s,1,Answer()
 same => n,Playback(demo-congrats)
 same => n,Hangup()

[cap-caller-delayed]
exten => s,1,Answer()
 same => n,Wait(1.5)
 same => n,Playback(hello-world)
 same => n,SendDTMF(123#,100)
 same => n,Wait(0.5)
 same => n,Hangup()

[cap-caller-silent]
exten => s,1,Answer()
 same => n,Wait(6)
 same => n,Hangup()

[cap-ari]
exten => 6100,1,Answer()
 same => n,Wait(60)
 same => n,Hangup()
exten => 6101,1,Answer()
 same => n,Playback(hello-world)
 same => n,Playback(demo-congrats)
 same => n,Wait(60)
 same => n,Hangup()
exten => 6102,1,NoOp(cap-ari 6102: Stasis without Answer)
 same => n,Stasis(avr-ari,inbound,6102)
 same => n,NoOp(Stasis app returned STASISSTATUS=${STASISSTATUS})
 same => n,Hangup()
exten => 6103,1,NoOp(cap-ari 6103: continued from Stasis, STASISSTATUS=${STASISSTATUS})
 same => n,Wait(2)
 same => n,Hangup()
exten => 6104,1,Answer()
 same => n,Wait(1)
 same => n,SendDTMF(59*#,150)
 same => n,Wait(60)
 same => n,Hangup()
exten => 6105,1,Ringing()
 same => n,Wait(60)
 same => n,Hangup()
exten => 6106,1,Answer()
 same => n,Wait(2)
 same => n,Hangup(16)
exten => 6107,1,Busy(5)
"""



@frozen
class DialplanStep:
    """One priority of an extension: ``App(data)``."""

    app: str
    data: str


def parse_dialplan(text: str) -> dict[str, dict[str, list[DialplanStep]]]:
    """
    Parse ``extensions.conf`` text (contexts, ``exten =>`` and ``same =>`` lines with ``n`` or numeric priorities;
    ``;`` comments) into ``{context: {exten: [steps in priority order]}}``.

    :param text: the dialplan text.
    :raises ValueError: a line that is neither a context header, an ``exten``/``same`` line nor blank.
    """
    contexts: dict[str, dict[str, list[DialplanStep]]] = {}
    context: str | None = None
    exten: str | None = None
    for raw in text.splitlines():
        line = re.split(r"(?<!\\);", raw, maxsplit=1)[0].strip()
        if not line:
            continue
        header = re.fullmatch(r"\[([^\]]+)\].*", line)
        if header:
            context = header.group(1).strip()
            contexts.setdefault(context, {})
            continue
        match = re.fullmatch(r"(exten|same)\s*=>?\s*(.*)", line)
        if not match or context is None:
            raise ValueError(f"Cannot parse dialplan line: {raw!r}")
        rest = match.group(2)
        if match.group(1) == "exten":
            exten, _, rest = rest.partition(",")
            exten = exten.strip()
        if exten is None:
            raise ValueError(f"'same' before any 'exten': {raw!r}")
        _priority, _, app_part = rest.partition(",")
        app_match = re.fullmatch(r"\s*([A-Za-z0-9_]+)\s*(?:\((.*)\))?\s*", app_part)
        if not app_match:
            raise ValueError(f"Cannot parse application in dialplan line: {raw!r}")
        contexts[context].setdefault(exten, []).append(DialplanStep(app_match.group(1), app_match.group(2) or ""))
    return contexts


def _seconds(value: str) -> float:
    """A ``Wait()`` argument: non-negative seconds, 0.0 for garbage."""
    try:
        return max(float(value), 0.0)
    except ValueError:
        return 0.0


@define(eq=False)
class Dialplan:
    """
    Runs ``context,exten,priority`` on a channel until it hangs up or enters Stasis.

    :param contexts: ``{context: {exten: [DialplanStep]}}``.
    :param sounds: ``{name: seconds}`` for ``Playback()``.
    :param answer: answers a channel (a Local ;2 answering also answers its dialling ;1 half).
    """

    log = Logger()

    _clock: AsteriskClock
    _apps: Applications
    _channels: Channels
    _variables: Variables
    _stasis: Stasis
    _dtmf: Dtmf
    _hangups: Hangups
    contexts: dict[str, dict[str, list[DialplanStep]]]
    _sounds: Mapping[str, float]
    _answer: Callable[[Channel], None]

    def load(self, text: str) -> None:
        """Add extensions from ``extensions.conf`` text (an extension given again replaces the old one)."""
        for context, extensions in parse_dialplan(text).items():
            self.contexts.setdefault(context, {}).update(extensions)

    def has(self, context: str, exten: str) -> bool:
        """Whether ``exten@context`` exists."""
        return bool(self.contexts.get(context, {}).get(exten))

    def continue_in_dialplan(self, ch: Channel, params: dict[str, Any]) -> None:
        """``POST /channels/{id}/continue`` (StasisEnd, then the dialplan runs; fact 25)."""
        self._stasis.check_state(ch)
        context_p, exten_p = param_str(params.get("context")), param_str(params.get("extension"))
        priority = param_int(params.get("priority"), 0)
        label = param_str(params.get("label"))
        if context_p:
            context, exten = context_p, exten_p or "s"
        else:
            context, exten = ch.context, exten_p or ch.exten
        if label:
            if not label.isdigit():
                raise AriHttpError(404, "Requested label can not be found")
            priority = int(label)
            if priority == 0:
                raise AriHttpError(400, "Requested priority is illegal")
        elif not priority:
            priority = ch.priority + 1 if not context_p and not exten_p else 1
        state = self._stasis.control(ch)
        nested = state.origin != "dialplan"
        if nested and ch.nested_app is None:
            ch.nested_app = state.saved_app
        self._stasis.leave(ch, report_status=False)
        self.start(ch, context, exten, priority, nested=nested)

    def start(self, ch: Channel, context: str, exten: str, priority: int, nested: bool = False) -> None:
        """
        Run the dialplan on ``ch`` from ``context,exten,priority`` (a missing extension hangs it up, cause 0).

        :param nested: run inside the Stasis() an originate started (after ``continue``), not as its own PBX.
        """
        steps = self.contexts.get(context, {}).get(exten)
        if not steps or priority > len(steps) or priority < 1:
            self.log.info("Fake Asterisk: no extension {exten}@{context} for {name}", exten=exten, context=context,
                          name=ch.name)  # fmt: skip
            ch.context, ch.exten, ch.priority = context, exten, priority
            self._hangups.end(ch, 0)
            return
        if not ch.pbx_kind:
            ch.pbx_kind = "nested" if nested else "real"
            if ch.nested_app is None:
                ch.nested_app = (ch.app_name, ch.app_data)
        ch.context, ch.exten, ch.priority = context, exten, priority
        self._run(ch)

    def _run(self, ch: Channel) -> None:
        while ch.alive and not ch.ending and ch.stasis is None:
            steps = self.contexts.get(ch.context, {}).get(ch.exten, [])
            if ch.priority > len(steps):
                self._hangups.end(ch, ch.hangupcause if ch.hangupcause is not None else 16)
                return
            step = steps[ch.priority - 1]
            data = self._variables.substitute(ch, step.data)
            ch.saved_app = (ch.app_name, ch.app_data)
            ch.app_name, ch.app_data = step.app, data
            self._apps.emit("ChannelDialplan", [("dialplan_app", step.app), ("dialplan_app_data", data),
                                                ("channel", ch)], channels=[ch])  # fmt: skip
            delay = self._exec(ch, step.app, data)
            if delay is None or not ch.alive or ch.ending or ch.stasis is not None:
                return
            if delay > 0:
                self._clock.later(ch, delay, self._next, ch)
                return
            ch.priority += 1

    def _next(self, ch: Channel) -> None:
        if not ch.alive or ch.ending:
            return
        if ch.pbx_app == "Playback":
            self._channels.setvar(ch, "PLAYBACKSTATUS", "SUCCESS")
        ch.pbx_app = ""
        ch.priority += 1
        self._run(ch)

    def _exec(self, ch: Channel, app: str, data: str) -> float | None:
        """Run one dialplan application; returns the delay before the next priority, or None to stop here."""
        name = app.lower()
        args = [a.strip() for a in data.split(",")] if data else []
        peer = ch.peer
        if name == "answer":
            if ch.state == "Up":
                return 0.0
            self._answer(ch)
            return 0.5  # Answer() waits up to 500 ms for media before the next priority
        if name == "wait":
            return _seconds(args[0] if args else "0")
        if name == "hangup":
            cause = param_int(args[0] if args else "", 0) or (ch.hangupcause if ch.hangupcause is not None else 16)
            ch.hangupcause = cause
            self._hangups.end(ch, cause)
            return None
        if name in ("ringing", "progress"):
            if peer is not None and peer.dialing and name == "ringing":
                self._channels.set_state(peer, "Ringing")
                self._channels.dial_event(peer, "RINGING")
            return 0.0
        if name in ("busy", "congestion"):
            cause, status = (17, "BUSY") if name == "busy" else (34, "CONGESTION")
            self._channels.set_state(ch, "Busy" if name == "busy" else ch.state)
            ch.hangupcause = cause
            if peer is not None and peer.dialing:
                self._channels.dial_event(peer, status)
                self._hangups.end(peer, 0)
            else:
                self._hangups.end(ch, cause)
            return None
        if name == "playback":
            seconds = self._sounds.get(args[0] if args else "")
            if seconds is None:
                self._channels.setvar(ch, "PLAYBACKSTATUS", "FAILED")
                return 0.0
            ch.pbx_app = "Playback"
            return seconds
        if name == "senddtmf":
            between = param_int(args[1] if len(args) > 1 else "", 0) or 250
            duration = param_int(args[2] if len(args) > 2 else "", 0) or 100
            receiver = peer if peer is not None and peer.alive else None
            return self._dtmf.stream(ch, receiver, args[0] if args else "", 0, between, duration, 0, owner=ch)
        if name == "set":
            var, _, value = data.partition("=")
            if var:
                self._variables.assign(ch, var.strip(), value)
            return 0.0
        if name == "stasis":
            if not self._stasis.enter(ch, args[0] if args else "", args[1:], "dialplan", saved=ch.saved_app):
                self._channels.setvar(ch, "STASISSTATUS", "FAILED")
                return 0.0
            return None
        return 0.0  # NoOp, Verbose, Log and anything else the fake does not model
