"""
Channels under Stasis control in the fake Asterisk: entering and leaving an application (StasisStart, StasisEnd,
``STASISSTATUS``: facts 18, 19, 25), ``move``, the checks every channel operation makes first (``find_control``,
``channel_state_invalid``), the operations that only signal (ring, hold, mute, redirect), and each control's
command queue, which runs playbacks, recordings and DTMF one at a time, in order, as ``stasis_app_control`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from attrs import define
from twisted.logger import Logger

from avr.testing.ari_applications import Applications
from avr.testing.ari_channels import Channels
from avr.testing.ari_clock import AsteriskClock
from avr.testing.ari_model import Channel, Command, StasisState
from avr.testing.ari_params import AriHttpError, param_str, split_args


@define(eq=False)
class CommandQueue:
    """
    The command queue of each channel's Stasis control.

    :param clock: cancels a command's timers when it is interrupted.
    :param end_channel: ends a channel whose hangup waited for an uninterruptible command (``(channel, cause)``).
    """

    _clock: AsteriskClock
    _end_channel: Callable[[Channel, int], None]

    def enqueue(self, ch: Channel, cmd: Command) -> None:
        """Queue ``cmd``; it begins at once if nothing runs."""
        state = ch.stasis
        assert state is not None
        state.queue.append(cmd)
        if state.current is None:
            self._next(ch)

    def _next(self, ch: Channel) -> None:
        state = ch.stasis
        while state is not None and state.current is None and state.queue:
            cmd = state.current = state.queue.popleft()
            cmd.begin()
            state = ch.stasis

    def done(self, ch: Channel, cmd: Command) -> None:
        """``cmd`` has finished: a hangup that waited for it happens now, else the next command begins."""
        state = ch.stasis
        if state is None or state.current is not cmd:
            return
        state.current = None
        if state.pending_end is not None:
            cause, state.pending_end = state.pending_end, None
            ch.ending = False
            self._end_channel(ch, cause)
            return
        self._next(ch)

    def finished(self, ch: Channel, obj: Any) -> None:
        """The playback or recording ``obj`` ended: if it is the running command, that command is done."""
        state = ch.stasis
        if state is not None and state.current is not None and state.current.obj is obj:
            self.done(ch, state.current)

    def withdraw(self, ch: Channel, obj: Any) -> None:
        """Remove the queued (not yet running) command for ``obj``."""
        if ch.stasis is not None:
            for cmd in list(ch.stasis.queue):
                if cmd.obj is obj:
                    ch.stasis.queue.remove(cmd)

    def abort(self, ch: Channel, *, hangup: bool) -> None:
        """The channel leaves Stasis: queued commands are dropped, the running one is interrupted."""
        state = ch.stasis
        if state is None:
            return
        queued = list(state.queue)
        state.queue.clear()
        current, state.current = state.current, None
        for cmd in queued:
            cmd.drop()
        if current is not None:
            self._clock.cancel(current)
            current.interrupt(hangup)

    def cancel_timers(self, ch: Channel) -> None:
        """Cancel the timers of every command of ``ch`` (stop, restart, teardown)."""
        if ch.stasis is not None:
            for cmd in [ch.stasis.current, *ch.stasis.queue]:
                if cmd is not None:
                    self._clock.cancel(cmd)


@define(eq=False)
class Stasis:
    """
    Entering, leaving and moving between Stasis applications, and the checks and signalling operations of a
    channel's control.

    :param apps: the applications (subscriptions, StasisStart/StasisEnd).
    :param channels: ``STASISSTATUS`` updates.
    :param commands: interrupted when a channel leaves.
    """

    log = Logger()

    _apps: Applications
    _channels: Channels
    _commands: CommandQueue

    @staticmethod
    def control(ch: Channel) -> StasisState:
        """``find_control``: the channel's Stasis state, or 409 if it is not in an application."""
        if ch.stasis is None or ch.ending:
            raise AriHttpError(409, "Channel not in Stasis application")
        return ch.stasis

    @classmethod
    def check_state(cls, ch: Channel) -> None:
        """`control`, then ``channel_state_invalid``: 412 for Down, Rsrved and Ringing channels."""
        cls.control(ch)
        if ch.state in ("Down", "Rsrved", "Ringing"):
            raise AriHttpError(412, "Channel in invalid state")

    def enter(self, ch: Channel, app: str, args: Iterable[str], origin: str,
              saved: tuple[str, str] | None = None) -> bool:  # fmt: skip
        """
        Run ``Stasis(app,args)`` on ``ch``: ``STASISSTATUS=""`` then StasisStart; False if the app does not exist
        (``STASISSTATUS=FAILED``, no event: fact 28).

        :param origin: how the channel got there (see `StasisState.origin`).
        :param saved: the dialplan application ``pbx_exec`` shows again when Stasis returns (default: the current).
        """
        args = list(args)
        if saved is None:
            saved = (ch.app_name, ch.app_data)
        ch.app_name, ch.app_data = "Stasis", ",".join([app, *args])
        if app not in self._apps.by_name:
            self.log.info("Fake Asterisk: Stasis app '{app}' doesn't exist", app=app)
            ch.variables["STASISSTATUS"] = "FAILED"
            return False
        self._channels.setvar(ch, "STASISSTATUS", "")
        self._start(ch, StasisState(app=app, origin=origin, saved_app=saved), args)
        return True

    def _start(self, ch: Channel, state: StasisState, args: list[str]) -> None:
        ch.stasis = state
        self._apps.entered(state.app, ch)
        self._apps.emit("StasisStart", [("args", args), ("channel", ch)], channels=[ch], only_app=state.app)

    def leave(self, ch: Channel, *, report_status: bool) -> tuple[str, str]:
        """
        StasisEnd. On a hangup (``report_status``) the running media fails and ``STASISSTATUS=SUCCESS`` is reported;
        otherwise (``continue``) the dialplan application shown before Stasis is restored.

        :return: that application, ``(name, data)``.
        """
        state = ch.stasis
        assert state is not None
        self._end(ch, state, hangup=report_status)
        if report_status:
            self._channels.setvar(ch, "STASISSTATUS", "SUCCESS")
        elif state.origin == "dialplan":
            ch.variables["STASISSTATUS"] = "SUCCESS"
        else:
            ch.deferred_stasis_status = True
        if not report_status:
            ch.app_name, ch.app_data = state.saved_app
        return state.saved_app

    def _end(self, ch: Channel, state: StasisState, *, hangup: bool) -> None:
        self._commands.abort(ch, hangup=hangup)
        self._apps.emit("StasisEnd", [("channel", ch)], channels=[ch], only_app=state.app)
        ch.stasis = None
        self._apps.left(state.app, ch)

    def move(self, ch: Channel, params: dict[str, Any]) -> None:
        """``POST /channels/{id}/move``: to a registered app, or ApplicationMoveFailed (204 either way; fact 25)."""
        state = self.control(ch)
        app = param_str(params.get("app"))
        if not app:
            raise AriHttpError(400, "Missing parameter app")
        args = split_args(param_str(params.get("appArgs")))
        if not self._apps.active(app):
            self._apps.emit("ApplicationMoveFailed", [("channel", ch), ("destination", app), ("args", args)],
                            channels=[ch], only_app=state.app)  # fmt: skip
            return
        self._end(ch, state, hangup=False)
        ch.deferred_stasis_status = True
        self._start(ch, StasisState(app=app, origin=state.origin, saved_app=state.saved_app), args)

    def signal(self, ch: Channel, op: str, params: dict[str, Any]) -> None:
        """ring, ring stop, progress, hold, unhold, moh, silence, mute, unmute: 204 after the usual checks."""
        self.check_state(ch)
        if op in ("mute", "unmute"):
            direction = param_str(params.get("direction")) or "both"
            if direction not in ("both", "in", "out"):
                raise AriHttpError(400, "Invalid direction specified")
        if op == "hold":
            self._apps.channel_event("ChannelHold", ch)
        elif op == "unhold":
            self._apps.channel_event("ChannelUnhold", ch)

    def redirect(self, ch: Channel, params: dict[str, Any]) -> None:
        """``POST /channels/{id}/redirect``: Local channels cannot be redirected (204 and nothing happens)."""
        self.check_state(ch)
        endpoint = param_str(params.get("endpoint"))
        if not endpoint:
            raise AriHttpError(400, "Required parameter 'endpoint' not provided.")
        tech, slash, resource = endpoint.partition("/")
        if not slash or not tech:
            raise AriHttpError(422, f"Endpoint parameter '{endpoint}' does not contain tech/resource")
        if not resource:
            raise AriHttpError(422, f"No resource provided in endpoint parameter '{endpoint}'")
        if tech.lower() != ch.tech.lower():
            raise AriHttpError(422, f"Endpoint technology '{tech}' does not match channel technology '{ch.tech}'")
