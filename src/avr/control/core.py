"""
The shared core of the call-control model: its state, lookups, event publishing, the call state machine's single
exit (`ControlCore._end_call`), timers and background tasks. The operations and ARI event handlers live in the
mixins (`calls`, `media`, `recordings`, `bridges`, `transfer`, `resync`) that `avr.control.model.CallControl`
combines.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable, Coroutine

from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from avr.ari.client import path_segment
from avr.ari.errors import AriError, AriUnavailable
from avr.config import INBOUND_POLICIES
from avr.control.errors import Conflict, NotFound, Unavailable
from avr.control.records import (
    ANSWERED,
    BRIDGED,
    ENDED,
    MEDIA_CHANNEL_PREFIX,
    OUTBOUND,
    Bridge,
    Call,
    Playback,
    Recording,
    iso,
)
from avr.interfaces import IAriClient, IAudioInjector, IEventSink

#: Seconds an ended call stays readable through `get_call`.
DEFAULT_RETENTION = 300.0


def _new_uuid() -> str:
    return str(uuid.uuid4())


class ControlCore:
    """
    State and helpers shared by the call-control mixins.

    :param ari: the ARI REST client, or ``None`` when ARI is not configured (operations then raise `Unavailable`).
    :param clock: time source for timestamps, the ended-call retention and every timeout.
    :param sink: receives every event (the /events hub and the events webhook).
    :param app: the Stasis application name.
    :param inbound_policy: ``answer``, ``ring`` or ``none`` (see `avr.config.INBOUND_POLICIES`).
    :param injector: plays uploaded PCM through an AudioSocket connection (``None``: `play_pcm` is unavailable).
    :param audiosocket_address: ``host:port`` where Asterisk reaches avr's AudioSocket server.
    :param retention: seconds an ended call stays readable.
    :param setup_timeout: seconds to wait for Asterisk during multi-step setups (a media channel entering Stasis).
    :param new_id: makes the ids of originated channels and created bridges (UUID4 strings by default).
    :param pcm_lead_in: seconds of silence played before uploaded audio, so that the moment between Asterisk
        connecting the media channel and avr bridging it (when Asterisk drops what it receives) loses no audio.
    """

    log = Logger()

    def __init__(
        self,
        ari: IAriClient | None,
        clock: IReactorTime,
        sink: IEventSink,
        app: str,
        inbound_policy: str = "answer",
        injector: IAudioInjector | None = None,
        audiosocket_address: str | None = None,
        retention: float = DEFAULT_RETENTION,
        setup_timeout: float = 10.0,
        new_id: Callable[[], str] | None = None,
        pcm_lead_in: float = 0.3,
    ) -> None:
        if inbound_policy not in INBOUND_POLICIES:
            raise ValueError(f"inbound_policy must be one of {', '.join(INBOUND_POLICIES)}, got {inbound_policy!r}")
        self.ari = ari
        self.clock = clock
        self.sink = sink
        self.app = app
        self.inbound_policy = inbound_policy
        self.injector = injector
        self.audiosocket_address = audiosocket_address
        self.retention = retention
        self.setup_timeout = setup_timeout
        self.pcm_lead_in = pcm_lead_in
        self._new_id = new_id or _new_uuid
        self._ari_state = "not configured" if ari is None else "connecting"
        self._ari_reason: str | None = None
        self._calls: dict[str, Call] = {}
        self._bridges: dict[str, Bridge] = {}
        self._playbacks: dict[str, Playback] = {}
        self._recordings: dict[str, Recording] = {}
        #: avr's own media channels: id -> entered Stasis yet.
        self._internal: dict[str, bool] = {}
        self._stasis_waiters: dict[str, list[Deferred]] = {}
        #: Temporary playback bridges: id -> ids of the PCM playbacks using it.
        self._temp_bridges: dict[str, set[str]] = {}
        #: Channels whose originate failed ambiguously (timeout): hung up if they show up.
        self._abandoned: dict[str, IDelayedCall] = {}
        self._timers: set[IDelayedCall] = set()
        self._tasks: set[Deferred] = set()
        self._waits: set[Deferred] = set()
        self._stopped = False

    # -- status -------------------------------------------------------------------------------------------------

    def status(self) -> dict:
        """``{"ari", "ariReason", "app", "inboundPolicy", "activeCalls", "bridges"}`` (see `ICallControl.status`)."""
        return {
            "ari": self._ari_state,
            "ariReason": self._ari_reason,
            "app": self.app,
            "inboundPolicy": self.inbound_policy,
            "activeCalls": sum(1 for c in self._calls.values() if not c.ended and not c.pending),
            "bridges": len(self._bridges),
        }

    def snapshot(self) -> dict:
        """``{"calls": [active calls], "bridges": [bridges]}`` for a new /events subscriber."""
        return {
            "calls": [c.to_dict() for c in self._calls.values() if not c.ended and not c.pending],
            "bridges": [b.to_dict() for b in self._bridges.values()],
        }

    def stop(self) -> Deferred:
        """
        Shut down: cancel every timer, fail pending waits, stop uploaded-audio playbacks (their media channels are
        hung up). Live calls are left alone.

        :return: a Deferred firing once the ARI requests still in flight (cleanups) are done.
        """
        self._stopped = True
        for timer in list(self._timers):
            if timer.active():
                timer.cancel()
        self._timers.clear()
        self._abandoned.clear()
        for call in self._calls.values():
            call.retention = None
        for wait in list(self._waits):
            if not wait.called:
                wait.cancel()
        for playback in list(self._playbacks.values()):
            if playback.played is not None and not playback.played.called:
                playback.stop_requested = True
                playback.played.cancel()
        tasks = list(self._tasks)
        if not tasks:
            return succeed(None)
        return DeferredList(tasks, consumeErrors=True).addCallback(lambda _: None)

    # -- lookups and checks ------------------------------------------------------------------------------------

    def _require_ari(self) -> IAriClient:
        if self.ari is None:
            raise Unavailable("ARI is not configured (set ARI_URL, ARI_USERNAME and ARI_PASSWORD)")
        return self.ari

    def _require_connected(self) -> IAriClient:
        ari = self._require_ari()
        if self._ari_state != "connected":
            raise Unavailable("ARI is not connected: Asterisk may be unreachable")
        return ari

    def _get(self, call_id: str) -> Call:
        call = self._calls.get(call_id)
        if call is None or call.pending:
            raise NotFound(f"Call {call_id} not found")
        return call

    def _live(self, call_id: str) -> Call:
        call = self._get(call_id)
        if call.ended:
            raise Conflict(f"Call {call_id} has ended")
        return call

    def _require_stasis(self, call: Call) -> None:
        if call.in_stasis:
            return
        if call.direction == OUTBOUND and call.answered_at is None:
            raise Conflict(f"Call {call.id} has not been answered yet")
        if call.handed_off:
            raise Conflict(f"Call {call.id} was handed to the dialplan")
        raise Conflict(f"Call {call.id} is not in the Stasis application")

    def _is_internal(self, channel_id: str) -> bool:
        return channel_id in self._internal or channel_id.startswith(MEDIA_CHANNEL_PREFIX)

    # -- events ---------------------------------------------------------------------------------------------------

    def _publish(self, type_: str, data: dict, call: Call | None = None, bridge_id: str | None = None) -> None:
        event: dict[str, Any] = {"type": type_}
        if call is not None:
            event["callId"] = call.id
        if bridge_id is not None:
            event["bridgeId"] = bridge_id
        event["timestamp"] = iso(self.clock.seconds())
        event["data"] = data
        if call is not None and call.pending:
            call.queued.append(event)
            return
        self._send(event)

    def _send(self, event: dict) -> None:
        try:
            self.sink.publish(event)
        except Exception:
            self.log.failure("Cannot publish a {type} event", type=event.get("type"))

    def _refresh(self, call: Call) -> None:
        """Move ``call`` to the state its facts imply, publishing ``call.state_changed`` on a real change."""
        new = call.derived_state()
        if new == call.state or new == ENDED or call.ended:
            return
        previous, call.state = call.state, new
        data: dict[str, Any] = {"previousState": previous, "state": new}
        if new == ANSWERED and previous != BRIDGED:
            data["answeredAt"] = iso(call.answered_at)
        if new == BRIDGED:
            data["bridgeId"] = call.bridge_id
        self._publish("call.state_changed", data, call)

    def _end_call(self, call: Call, cause: int | None, text: str | None, **extra: Any) -> None:
        """The only way a call ends: ``call.ended`` is published here, exactly once."""
        if call.ended:
            return
        previous = call.state
        call.ended_at = self.clock.seconds()
        call.state = ENDED
        call.cause = cause
        call.cause_text = text
        call.in_stasis = False
        data: dict[str, Any] = {"previousState": previous, "cause": cause, "causeText": text,
                                "endedAt": iso(call.ended_at)}
        if call.dial_status:
            data["dialStatus"] = call.dial_status
        if call.requested_reason:
            data["hangupReason"] = call.requested_reason
        data.update(extra)
        self.log.info("Call {id} ended: cause {cause} ({text})", id=call.id, cause=cause, text=text)
        self._publish("call.ended", data, call)
        self._call_gone(call)
        hooks, call.on_end = call.on_end, []
        call.on_stasis = []
        for hook in hooks:
            try:
                hook()
            except Exception:
                self.log.failure("Call control: an end hook of call {id} failed", id=call.id)
        call.retention = self._later(self.retention, self._forget, call)

    def _call_gone(self, call: Call) -> None:
        """Release what the ended ``call`` held (overridden by the mixins, each calling up)."""

    def _temp_bridge_left(self, bridge_id: str, call_id: str) -> None:
        """A call left one of avr's temporary playback bridges (overridden by the media mixin)."""

    def _forget(self, call: Call) -> None:
        call.retention = None
        if self._calls.get(call.id) is call:
            del self._calls[call.id]

    # -- timers, tasks and ARI helpers ------------------------------------------------------------------------------

    def _later(self, delay: float, function: Callable[..., Any], *args: Any) -> IDelayedCall:
        def run() -> None:
            self._timers.discard(timer)
            function(*args)

        timer = self.clock.callLater(delay, run)
        self._timers.add(timer)
        return timer

    def _cancel_timer(self, timer: IDelayedCall | None) -> None:
        if timer is not None:
            self._timers.discard(timer)
            if timer.active():
                timer.cancel()

    def _spawn(self, coroutine: Coroutine[Any, Any, Any], what: str) -> Deferred:
        """Run ``coroutine`` in the background; its failure is logged (a cancellation is not)."""
        d = Deferred.fromCoroutine(coroutine)
        self._tasks.add(d)

        def done(result: Any) -> None:
            self._tasks.discard(d)
            if isinstance(result, Failure) and not result.check(CancelledError):
                self.log.failure("Call control: {what} failed", result, what=what)

        d.addBoth(done)
        return d

    def _wait(self, d: Deferred, timeout: float | None = None) -> Deferred:
        """Track ``d`` (cancelled by `stop`), optionally with a timeout on the clock."""
        self._waits.add(d)
        if timeout is not None:
            d.addTimeout(timeout, self.clock)

        def untrack(result: Any) -> Any:
            self._waits.discard(d)
            return result

        return d.addBoth(untrack)

    async def _quietly(self, method: str, path: str, params: dict | None = None) -> None:
        """An ARI request whose failure is only logged (404 = already gone, not even that)."""
        if self.ari is None:
            return
        try:
            await self.ari.request(method, path, params)
        except AriError as e:
            if e.status != 404:
                self.log.warn("ARI {method} {path} failed during cleanup: {error}", method=method, path=path,
                              error=e)
        except AriUnavailable as e:
            self.log.warn("ARI {method} {path} failed during cleanup: {error}", method=method, path=path, error=e)

    def _hang_up_quietly(self, channel_id: str, reason: str = "normal") -> Deferred:
        return self._spawn(self._quietly("DELETE", f"/channels/{path_segment(channel_id)}", {"reason": reason}),
                           f"hanging up {channel_id}")

    def _destroy_bridge_quietly(self, bridge_id: str) -> Deferred:
        return self._spawn(self._quietly("DELETE", f"/bridges/{path_segment(bridge_id)}"),
                           f"destroying bridge {bridge_id}")
