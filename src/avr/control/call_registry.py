"""
`CallRegistry`: every call avr knows, in one place: the ARI calls of the call-control model (`CallRecord`), the
dialplan AudioSocket calls (`AudioSocketCallRecord`, kept by `avr.control.call_observer`) and the media legs avr
creates for calls (`MediaLegRecord`, kept by `avr.control.media_leg`); the ARI state
machine's single way forward (`CallRegistry.refresh`) and single exit (`CallRegistry.end_call`), and the publishing
of events.

The lookups the call-control components use (`find`, `by_channel`, `require`, `live`, `active`, iteration) see ARI
calls only, so no ARI operation ever acts on another kind of call; `listing` and `describe` (``GET /calls``,
``/events``) see every call.

Ids: every record is kept by its API id (an ARI call's is a UUID derived from its channel id, see
`avr.control.records.call_id_for`); ARI events name channels, so the ARI calls are also indexed by channel id
(`by_channel`), kept in step by `add` and `forget`. The lookups made for API requests (`describe`, `require`,
`live`) take either id: a call id first, else the channel id of an ARI call. The two never clash: call ids are
hashes, channel ids are Asterisk's ``1712345678.42`` or the random UUIDs avr gives the channels it originates.

Components that hold something for a call (a bridge membership, a playback, a recording, a media leg) release it
in a callback given to `CallRegistry.on_call_ended`; they run after ``call.ended`` is published, in the order they
subscribed.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from attrs import define, field
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from avr.control.errors import Conflict, NotFound
from avr.control.records import ANSWERED, BRIDGED, ENDED, OUTBOUND, AnyCallRecord, CallRecord, MediaLegRecord, iso
from avr.control.tasks import TaskGroup
from avr.interfaces import IEventSink

#: Seconds an ended call stays readable through `CallRegistry.require`.
DEFAULT_RETENTION = 300.0


def require_stasis(call: CallRecord) -> None:
    """:raises Conflict: ``call``'s channel is not in the Stasis application (so ARI cannot act on it)."""
    if call.in_stasis:
        return
    if call.direction == OUTBOUND and call.answered_at is None:
        raise Conflict(f"Call {call.id} has not been answered yet")
    if call.handed_off:
        raise Conflict(f"Call {call.id} was handed to the dialplan")
    raise Conflict(f"Call {call.id} is not in the Stasis application")


@define(eq=False)
class CallRegistry:
    """
    :param clock: timestamps and the ended-call retention.
    :param sink: receives every event (the /events hub and the events webhook).
    :param tasks: runs the retention timers.
    :param retention: seconds an ended call stays readable.
    """

    clock: IReactorTime
    sink: IEventSink
    tasks: TaskGroup
    retention: float = DEFAULT_RETENTION
    _calls: dict[str, AnyCallRecord] = field(factory=dict, init=False)
    #: The ARI calls by channel id: the newest call of each channel (a channel may enter the app again).
    _by_channel: dict[str, CallRecord] = field(factory=dict, init=False)
    _ended_callbacks: list[Callable[[CallRecord], None]] = field(factory=list, init=False)
    _stopped: bool = field(default=False, init=False)
    log = Logger()

    # -- every kind of call -------------------------------------------------------------------------------------

    def listing(self) -> list[dict[str, Any]]:
        """
        Every call that is up, of every kind, as JSON (``GET /calls``, the ``/events`` snapshot); media legs are
        parts of their calls, not listed.
        """
        return [c.to_dict() for c in self._calls.values()
                if not c.ended and not c.pending and not isinstance(c, MediaLegRecord)]

    def active_by_kind(self) -> dict[str, int]:
        """
        The calls that are up, counted by kind (``ari``, ``audiosocket``): the calls of `listing`, for ``/metrics``.
        """
        counts = {"ari": 0, "audiosocket": 0}
        for c in self._calls.values():
            if not c.ended and not c.pending and not isinstance(c, MediaLegRecord):
                counts[c.kind] = counts.get(c.kind, 0) + 1
        return counts

    def describe(self, call_id: str) -> dict[str, Any]:
        """
        One call of any kind, live or ended within the retention, as JSON; ``call_id`` may be an ARI call's channel
        id. :raises NotFound:
        """
        call = self._resolve(call_id)
        if call is None or call.pending:
            raise NotFound(f"Call {call_id} not found")
        return call.to_dict()

    def lookup(self, call_id: Any) -> AnyCallRecord | None:
        """The record of ``call_id``, of any kind (pending or ended too), if any."""
        return self._calls.get(call_id) if isinstance(call_id, str) else None

    def _resolve(self, call_id: str) -> AnyCallRecord | None:
        return self._calls.get(call_id) or self._by_channel.get(call_id)

    # -- ARI calls ----------------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[CallRecord]:
        """Every ARI call record, pending and ended ones included."""
        return iter([c for c in self._calls.values() if isinstance(c, CallRecord)])

    def __contains__(self, call_id: object) -> bool:
        return isinstance(self._calls.get(call_id), CallRecord) if isinstance(call_id, str) else False

    def find(self, call_id: Any) -> CallRecord | None:
        """The ARI call record of ``call_id`` (pending or ended too), if any."""
        call = self._calls.get(call_id) if isinstance(call_id, str) else None
        return call if isinstance(call, CallRecord) else None

    def by_channel(self, channel_id: Any) -> CallRecord | None:
        """The ARI call on channel ``channel_id`` (its newest; pending or ended too), if any."""
        return self._by_channel.get(channel_id) if isinstance(channel_id, str) else None

    def require(self, call_id: str) -> CallRecord:
        """
        A known ARI call, live or ended within the retention, by call id or channel id.

        :raises NotFound: unknown. :raises Conflict: another kind of call (ARI cannot act on it).
        """
        call = self._resolve(call_id)
        if call is None or call.pending:
            raise NotFound(f"Call {call_id} not found")
        if not isinstance(call, CallRecord):
            raise Conflict(f"Call {call_id} is of kind {call.kind}, not in the Stasis application: call control "
                           "over ARI cannot act on it")
        return call

    def live(self, call_id: str) -> CallRecord:
        """A call that has not ended. :raises NotFound: :raises Conflict: it has ended."""
        call = self.require(call_id)
        if call.ended:
            raise Conflict(f"Call {call_id} has ended")
        return call

    def active(self) -> list[CallRecord]:
        """The ARI calls that are up (not ended, not waiting for Asterisk to accept their originate)."""
        return [c for c in self._calls.values() if isinstance(c, CallRecord) and not c.ended and not c.pending]

    # -- membership ---------------------------------------------------------------------------------------------

    def add(self, call: AnyCallRecord) -> None:
        """
        Track ``call`` (its id must be new, or belong to a record `forget` removed); an ARI call becomes its
        channel's call.
        """
        self._calls[call.id] = call
        if isinstance(call, CallRecord):
            self._by_channel[call.channel_id] = call

    def accepted(self, call: CallRecord) -> None:
        """Asterisk accepted the originate of the pending ``call``: send the events held back meanwhile."""
        call.pending = False
        queued, call.queued = call.queued, []
        for event in queued:
            self._send(event)

    def discard(self, call: CallRecord) -> None:
        """Drop a call that never came to be (its originate failed), with the events held back for it."""
        call.queued = []
        self.forget(call)

    def forget(self, call: AnyCallRecord) -> None:
        """Stop tracking ``call`` (an ended one whose retention is over, or that is replaced)."""
        self.tasks.cancel(call.retention)
        call.retention = None
        if self._calls.get(call.id) is call:
            del self._calls[call.id]
        if isinstance(call, CallRecord) and self._by_channel.get(call.channel_id) is call:
            del self._by_channel[call.channel_id]

    def on_call_ended(self, callback: Callable[[CallRecord], None]) -> None:
        """Call ``callback(call)`` whenever a call ends, right after its ``call.ended`` is published."""
        self._ended_callbacks.append(callback)

    def retain(self, call: AnyCallRecord) -> None:
        """``call`` has ended: keep it readable for ``retention`` seconds, then `forget` it."""
        if not self._stopped:
            call.retention = self.tasks.later(self.retention, self.forget, call)

    def stop(self) -> None:
        """Shutting down: ended calls stay readable, with no retention timer left."""
        self._stopped = True
        for call in self._calls.values():
            self.tasks.cancel(call.retention)
            call.retention = None

    # -- the state machine --------------------------------------------------------------------------------------

    def refresh(self, call: CallRecord) -> None:
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
        self.publish("call.state_changed", data, call)

    def answered(self, call: CallRecord) -> None:
        """``call`` was answered now (unless it already was, or has ended)."""
        if not call.ended and call.answered_at is None:
            call.answered_at = self.clock.seconds()
            self.refresh(call)

    def end_call(self, call: CallRecord, cause: int | None, text: str | None, **extra: Any) -> None:
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
        self.log.info(
            "Call summary {call_id}: {direction} ARI call, {duration:.3f} s ({talk}), ended by {ended_by} "
            "({reason})",
            call_id=call.id, kind="ari", direction=call.direction, duration=round(call.ended_at - call.created_at, 3),
            talk=(f"{call.ended_at - call.answered_at:.3f} s answered" if call.answered_at is not None
                  else "not answered"),
            answered_at=iso(call.answered_at) if call.answered_at is not None else None,
            # avr's own hang-ups (REST API, agent) say why; any other end is Asterisk's (caller, callee, network).
            ended_by="avr" if call.requested_reason else "asterisk",
            reason=call.requested_reason or f"cause {cause}: {text}", cause=cause, cause_text=text,
        )
        self.publish("call.ended", data, call)
        for callback in self._ended_callbacks:
            try:
                callback(call)
            except Exception:
                self.log.failure("Call control: releasing what call {call_id} held failed", call_id=call.id)
        hooks, call.on_end = call.on_end, []
        call.on_stasis = []
        for hook in hooks:
            try:
                hook()
            except Exception:
                self.log.failure("Call control: an end hook of call {call_id} failed", call_id=call.id)
        self.retain(call)

    # -- events -------------------------------------------------------------------------------------------------

    def publish(
        self, type_: str, data: dict, call: AnyCallRecord | None = None, bridge_id: str | None = None,
    ) -> None:
        """Publish one event; those of a pending call are held back until Asterisk accepts it (`accepted`)."""
        event: dict[str, Any] = {"type": type_}
        if call is not None:
            event["callId"] = call.id
            if isinstance(call, CallRecord):
                event["channelId"] = call.channel_id
        if bridge_id is not None:
            event["bridgeId"] = bridge_id
        event["timestamp"] = iso(self.clock.seconds())
        event["data"] = data
        if isinstance(call, CallRecord) and call.pending:
            call.queued.append(event)
            return
        self._send(event)

    def _send(self, event: dict) -> None:
        try:
            self.sink.publish(event)
        except Exception:
            self.log.failure("Cannot publish a {type} event", type=event.get("type"))
