"""
The records of the call model (ARI calls, dialplan AudioSocket calls, bridges, playbacks, recordings), their JSON
form, and the fixed tables the model uses (call states, hang-up reasons and Q.850 causes, media schemes,
AudioSocket formats).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from typing import TYPE_CHECKING, Any, Callable

from attrs import define, field
from twisted.internet.interfaces import IDelayedCall

from avr.frames import AUDIO_RATES
from avr.logtext import redact_url
from avr.timestamps import iso_millis

if TYPE_CHECKING:
    from avr.calls import Call

#: Call states. ``dialing``: originated, far end not ringing yet; ``ringing``: far end alerting (outbound) or caller
#: waiting for an answer (inbound); ``answered``; ``bridged``: answered and in a bridge made through this API;
#: ``ended``: gone (kept readable for a while).
DIALING, RINGING, ANSWERED, BRIDGED, ENDED = "dialing", "ringing", "answered", "bridged", "ended"
STATES = (DIALING, RINGING, ANSWERED, BRIDGED, ENDED)

INBOUND, OUTBOUND = "inbound", "outbound"

#: ARI's hang-up reasons (``DELETE /channels/{id}?reason=``) and the Q.850 cause each one sends.
HANGUP_REASONS = {
    "normal": 16, "busy": 17, "congestion": 34, "no_answer": 19, "timeout": 18, "rejected": 21, "unallocated": 1,
    "normal_unspecified": 31, "number_incomplete": 28, "codec_mismatch": 58, "interworking": 127, "failure": 38,
    "answered_elsewhere": 26,
}

#: Asterisk's texts for the Q.850 causes it commonly reports (``ast_cause2str``).
CAUSE_TEXTS = {
    0: "Unknown", 1: "Unallocated (unassigned) number", 16: "Normal Clearing", 17: "User busy",
    18: "No user responding", 19: "User alerting, no answer", 20: "Subscriber absent", 21: "Call Rejected",
    26: "Answered elsewhere", 27: "Destination out of order", 28: "Invalid number format (incomplete number)",
    31: "Normal, unspecified", 34: "Circuit/channel congestion", 38: "Network out of order",
    58: "Bearer capability not available", 127: "Interworking, unspecified",
}

#: Final ``Dial`` statuses that tell why an originated channel died when ChannelDestroyed only says cause 0 (a Local
#: channel whose far end is Busy() is destroyed with cause 0 "Unknown" after a Dial event with BUSY).
DIAL_STATUS_CAUSES = {"BUSY": 17, "NOANSWER": 19, "CONGESTION": 34}

#: Media URI schemes ARI plays. Another scheme is accepted by Asterisk (201) but never finishes, so it is refused.
MEDIA_SCHEMES = ("sound:", "recording:", "number:", "digits:", "characters:", "tone:")

#: ARI ``externalMedia`` format for each AudioSocket sample rate: ``slin`` (8 kHz), ``slin12`` ... ``slin192``.
SLIN_FORMATS = {rate: "slin" if rate == 8000 else f"slin{rate // 1000}" for rate in AUDIO_RATES}

#: ARI's ``ifExists`` choices for a recording whose name is taken.
IF_EXISTS = ("fail", "overwrite", "append")

#: Names of recordings (``fullmatch``): no sub-directories and no "..", so that a name never points outside
#: Asterisk's recording directory.
RECORDING_NAME = re.compile(r"(?!.*\.\.)[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")

#: Prefix of the ids of avr's internal channels (externalMedia legs playing uploaded audio) and temporary bridges.
MEDIA_CHANNEL_PREFIX = "avr-media-"
TEMP_BRIDGE_PREFIX = "avr-tmp-"


#: The namespace of `call_id_for` (fixed: the same channel gives the same call id in every avr, run after run).
_CALL_ID_NAMESPACE = uuid.UUID("6f1d3a52-9c1e-4b7a-8f0e-2d5c4b3a1e90").bytes


def call_id_for(channel_id: str, previous: str | None = None) -> str:
    """
    The API id of the ARI call on channel ``channel_id``: a version-4 UUID, as asterisk-api's ids are, derived
    from the channel id (the first 16 bytes of a SHA-256, with the version and variant bits of a v4 UUID). It is
    always the same for one channel, so it survives a resync and an avr restart (rebuilt from ``GET /channels``)
    with no ARI request and no table kept anywhere.

    :param previous: the id of the channel's previous call, for a channel that entered the app again after its
        call ended: the new call gets a new id (chained from the previous one), never its predecessor's.
    """
    name = channel_id if previous is None else f"{previous}/{channel_id}"
    digest = hashlib.sha256(_CALL_ID_NAMESPACE + name.encode("utf-8", "surrogatepass")).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def iso(seconds: float | None) -> str | None:
    """`avr.timestamps.iso_millis` of ``seconds``, ``None`` for ``None`` (a moment that has not come)."""
    return None if seconds is None else iso_millis(seconds)


def cause_text(code: int | None) -> str:
    """A readable text for a Q.850 cause code."""
    if code is None:
        return "Unknown"
    return CAUSE_TEXTS.get(code, f"Cause {code}")


@define(eq=False)
class AgentRecord:
    """
    The AI agent on an ARI call: an externalMedia AudioSocket leg (whose ``data`` is ``uuid``) bridged with the call
    and one STS session (`avr.control.agents`).

    :ivar state: ``starting`` (the leg is being set up), ``active`` (bridged; the agent hears and speaks).
    """

    uuid: str
    sts_url: str | None
    created_at: float
    state: str = "starting"

    def to_dict(self) -> dict[str, Any]:
        """The agent as JSON; the STS URL with its secrets masked."""
        return {"uuid": self.uuid, "state": self.state,
                "stsUrl": redact_url(self.sts_url) if self.sts_url is not None else None,
                "createdAt": iso(self.created_at)}


@define(eq=False)
class CallRecord:
    """
    One call: an ARI channel in (or originated into) the Stasis app. Its API id is `call_id_for` its ARI channel
    id (a UUID distinct from the channel id, as asterisk-api's); ``channel_id`` is what ARI requests and events use.
    """

    kind = "ari"
    id: str
    channel_id: str
    direction: str
    created_at: float
    endpoint: str | None = None
    caller_number: str = ""
    caller_name: str = ""
    callee_number: str = ""
    channel_name: str = ""
    args: list[str] = field(factory=list)
    state: str = RINGING
    answered_at: float | None = None
    ended_at: float | None = None
    #: Outbound: the far end is alerting (ChannelStateChange Ringing or Dial RINGING/PROGRESS).
    remote_ringing: bool = False
    in_stasis: bool = False
    #: Originated by avr: the app stays subscribed to the channel, so ChannelDestroyed always comes.
    subscribed: bool = False
    #: Where a dialplan call goes once answered (context, extension, priority), and whether it went.
    dialplan: tuple[str, str, int] | None = None
    handed_off: bool = False
    #: The bridge made through this API that the call is in (user-visible), and any bridge Asterisk reports.
    bridge_id: str | None = None
    ari_bridge_id: str | None = None
    dial_status: str | None = None
    #: Q.850 cause of a real (not ``soft``) ChannelHangupRequest, and the reason avr asked for.
    hangup_request_cause: int | None = None
    requested_reason: str | None = None
    cause: int | None = None
    cause_text: str | None = None
    transferred_from: str | None = None
    transfer_pending: bool = False
    recordings: list[str] = field(factory=list)
    #: An originate whose response has not come yet: events are held back until it does (or it fails).
    pending: bool = False
    queued: list[dict] = field(factory=list)
    retention: IDelayedCall | None = None
    #: One-shot hooks run when the channel enters Stasis / when the call ends (used by transfer).
    on_stasis: list[Callable[[], None]] = field(factory=list)
    on_end: list[Callable[[], None]] = field(factory=list)
    #: The AudioSocket call last started on this channel (named by its ``POST /call`` payload), if any.
    linked_call_id: str | None = None
    #: The AI agent on the call, if any.
    agent: AgentRecord | None = None

    @property
    def ended(self) -> bool:
        """The call is over."""
        return self.ended_at is not None

    def derived_state(self) -> str:
        """The state the facts imply (see `STATES`)."""
        if self.ended_at is not None:
            return ENDED
        if self.answered_at is not None:
            return BRIDGED if self.bridge_id is not None else ANSWERED
        if self.direction == OUTBOUND and not self.remote_ringing:
            return DIALING
        return RINGING

    def to_dict(self) -> dict[str, Any]:
        """The call as JSON (``callId`` repeats ``id``: the OpenClaw plugin reads it from ``/events`` snapshots)."""
        return {
            "id": self.id,
            "callId": self.id,
            "kind": self.kind,
            "channelId": self.channel_id,
            "direction": self.direction,
            "state": self.state,
            "callerNumber": self.caller_number,
            "callerName": self.caller_name,
            "calleeNumber": self.callee_number,
            "endpoint": self.endpoint,
            "channelName": self.channel_name,
            "args": list(self.args),
            "createdAt": iso(self.created_at),
            "answeredAt": iso(self.answered_at),
            "endedAt": iso(self.ended_at),
            "bridgeId": self.bridge_id,
            "inStasis": self.in_stasis,
            "dialStatus": self.dial_status,
            "hangupCause": self.cause,
            "hangupCauseText": self.cause_text,
            "transferredFrom": self.transferred_from,
            "recordings": list(self.recordings),
            "linkedCallId": self.linked_call_id,
            "agent": self.agent.to_dict() if self.agent is not None else None,
        }


@define(eq=False)
class AudioSocketCallRecord:
    """
    A dialplan AudioSocket call (`avr.calls.Call`) as the call registry shows it. Its API id is its AudioSocket
    UUID; ``channel_id``/``channel_name`` are its Asterisk channel's and ``caller_number``/``callee_number`` its
    parties, when its ``POST /call`` payload named them (``uniqueid``, ``channel``, ``from``, ``to``).
    """

    kind = "audiosocket"
    call: Call
    created_at: float
    #: The call's STS URL with its secrets masked (``None``: the built-in echo agent).
    sts_url: str | None = field(init=False)
    channel_id: str | None = None
    channel_name: str | None = None
    caller_number: str | None = None
    callee_number: str | None = None
    #: The ARI call of the same channel, if the call-control model knows it.
    linked_call_id: str | None = None
    state: str = ANSWERED
    ended_at: float | None = None
    end_reason: str | None = None
    retention: IDelayedCall | None = None
    #: Never waiting for Asterisk (only originated ARI calls are).
    pending: bool = False

    def __attrs_post_init__(self) -> None:
        self.sts_url = redact_url(self.call.sts_url) if self.call.sts_url is not None else None

    @property
    def id(self) -> str:
        """The AudioSocket UUID."""
        return self.call.uuid

    @property
    def ended(self) -> bool:
        """The call is over."""
        return self.ended_at is not None

    def to_dict(self) -> dict[str, Any]:
        """The call as JSON; the STS URL with its secrets masked."""
        codec = self.call.codec
        return {
            "id": self.id,
            "callId": self.id,
            "kind": self.kind,
            "uuid": self.id,
            "state": self.state,
            "stsUrl": self.sts_url,
            "sampleRate": self.call.rate,
            "codec": codec.lower() if codec is not None else None,
            "channelId": self.channel_id,
            "channelName": self.channel_name,
            "callerNumber": self.caller_number,
            "calleeNumber": self.callee_number,
            "linkedCallId": self.linked_call_id,
            "createdAt": iso(self.created_at),
            "endedAt": iso(self.ended_at),
            "endReason": self.end_reason,
        }


@define(eq=False)
class MediaLegRecord:
    """
    A media leg (`avr.control.media_leg.MediaLeg`): an externalMedia channel avr made for a call, as the registry
    keeps it while it exists. It is part of its call, not a call: ``GET /calls`` does not list it, ``GET /calls/:id``
    with its channel id shows it.
    """

    kind = "media"
    id: str
    uuid: str
    call_id: str
    created_at: float
    retention: IDelayedCall | None = None
    pending: bool = False
    ended: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The leg as JSON."""
        return {"id": self.id, "kind": self.kind, "channelId": self.id, "uuid": self.uuid, "callId": self.call_id,
                "state": ANSWERED, "createdAt": iso(self.created_at)}


#: A record of the call registry, of any kind.
AnyCallRecord = CallRecord | AudioSocketCallRecord | MediaLegRecord


@define(eq=False)
class Bridge:
    """A mixing bridge made through this API (``kind`` ``user``) or by a transfer (``transfer``)."""

    id: str
    name: str | None
    created_at: float
    kind: str = "user"
    #: The call ids of the members, in the order they entered.
    calls: list[str] = field(factory=list)
    #: The ARI channel of each member, by call id.
    channels: dict[str, str] = field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The bridge as JSON: its members' call ids (``calls``) and, as asterisk-api's, channel ids."""
        return {
            "id": self.id,
            "name": self.name,
            "type": "mixing",
            "kind": self.kind,
            "calls": list(self.calls),
            "channelIds": [self.channels[c] for c in self.calls],
            "createdAt": iso(self.created_at),
        }


@define(eq=False)
class Playback:
    """
    Something playing to a call: ARI media (``kind`` ``media``, one ARI playback for the whole list) or uploaded
    PCM through an externalMedia AudioSocket leg (``kind`` ``pcm``).
    """

    id: str
    call_id: str
    kind: str
    created_at: float
    media: list[str] = field(factory=list)
    #: queued, playing, done, failed, stopped.
    state: str = "queued"
    started_published: bool = False
    finished: bool = False
    stop_requested: bool = False
    rate: int | None = None
    duration_ms: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The playback as JSON."""
        data: dict[str, Any] = {"playbackId": self.id, "callId": self.call_id, "kind": self.kind,
                                "state": self.state}
        if self.kind == "media":
            data["media"] = list(self.media)
        else:
            data["rate"] = self.rate
            data["durationMs"] = self.duration_ms
        return data


@define(eq=False)
class Recording:
    """A live recording of a call started through this API."""

    name: str
    call_id: str
    format: str
    created_at: float
    state: str = "queued"
    started_published: bool = False
    finished: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The recording as JSON."""
        return {"name": self.name, "callId": self.call_id, "format": self.format, "state": self.state}
