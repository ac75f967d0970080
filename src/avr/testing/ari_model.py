"""
The objects of the fake Asterisk (endpoints, channels, bridges, playbacks, recordings, Stasis applications and the
commands a Stasis control queues) and their ARI JSON, with Asterisk 22.10.1's field names and key order (fact 15).
They hold state only; the components that change them are composed in `avr.testing.ari_asterisk`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from attrs import define, field

from avr.testing.ari_clock import format_timestamp


def _nothing(*_args: Any) -> None:
    pass


def target_uri(target: Channel | Bridge) -> str:
    """``channel:<id>`` or ``bridge:<id>`` (a playback's or recording's ``target_uri``)."""
    return f"{'bridge' if isinstance(target, Bridge) else 'channel'}:{target.id}"


@define(eq=False)
class Endpoint:
    """
    A configured endpoint (PJSIP-like) and how the far end behaves when it is dialled.

    :ivar answer: ``auto`` (answers after `delay` s), ``never`` (rings until the originate timeout), ``busy``
        (busy after `delay` s) or ``manual`` (rings until `FakeAsterisk.answer_remote`).
    """

    technology: str
    resource: str
    answer: str = "auto"
    delay: float = 0.0
    state: str = "online"


@define(eq=False)
class Command:
    """
    One entry of a channel's Stasis command queue: ``begin`` runs it; ``interrupt(hangup)`` stops it when the channel
    leaves Stasis while it runs, ``drop`` forgets it when it leaves before it ran.
    """

    obj: Any
    begin: Callable[[], None]
    interrupt: Callable[[bool], None] = _nothing
    drop: Callable[[], None] = _nothing
    #: a hangup waits until an uninterruptible command (DTMF) has finished
    interruptible: bool = True
    timers: list = field(factory=list)


@define(eq=False)
class StasisState:
    """A channel's presence in a Stasis application (its control and command queue)."""

    app: str
    #: how it got there: ``originate`` (externalMedia too), ``dialplan``, ``create``, ``snoop``, ``inbound``
    origin: str
    queue: deque[Command] = field(factory=deque)
    current: Command | None = None
    #: a hangup that waits for an uninterruptible command (DTMF) to finish: the cause
    pending_end: int | None = None
    #: the dialplan application shown before Stasis ran (``pbx_exec`` restores it when Stasis returns)
    saved_app: tuple[str, str] = ("", "")


@define(eq=False)
class Channel:
    """One channel and its snapshot fields."""

    id: str
    name: str
    tech: str
    creationtime: float
    state: str = "Down"
    caller_name: str = ""
    caller_number: str = ""
    connected_name: str = ""
    connected_number: str = ""
    accountcode: str = ""
    context: str = "default"
    exten: str = "s"
    priority: int = 1
    app_name: str = ""
    app_data: str = ""
    language: str = "en"
    variables: dict[str, str] = field(factory=dict)
    #: variables added with ``report_events``: shown as ``channelvars`` in event snapshots
    reported: list[str] = field(factory=list)
    #: the other half of a Local pair, and which half this is (1 or 2; 0 for other technologies)
    peer: Channel | None = None
    half: int = 0
    endpoint: Endpoint | None = None
    stasis: StasisState | None = None
    bridge: Bridge | None = None
    #: dial state for outbound channels: ``dialing`` until answered or failed
    dialing: bool = False
    dialstring: str = ""
    #: the app an ARI-originated channel enters once answered, and its args
    originate_app: str | None = None
    originate_args: list[str] = field(factory=list)
    #: the dialplan the ;1 half runs once answered (originate with context/extension)
    originate_dialplan: tuple[str, str, int] | None = None
    #: ``real``: the channel runs its own PBX (ast_pbx_run: Local ;2 halves, inbound calls, originate to an
    #: extension); ``nested``: dialplan run after ``continue`` inside the Stasis() that an originate started
    pbx_kind: str = ""
    #: what the snapshot shows once the PBX has ended (the application before it, e.g. AppDial2 or "")
    nested_app: tuple[str, str] | None = None
    #: the dialplan application shown before the current one, and the one running (``Playback``) if it reports
    saved_app: tuple[str, str] = ("", "")
    pbx_app: str = ""
    timers: list = field(factory=list)
    hangupcause: int | None = None
    ending: bool = False
    gone: bool = False
    #: ``STASISSTATUS=SUCCESS`` is only reported when the channel ends (after continue/move)
    deferred_stasis_status: bool = False
    audiosocket: Any = None
    snoops: list[Channel] = field(factory=list)
    formats: str = ""
    #: the ;2 half of a Local pair made by ``/channels/create``, dialled by ``/dial``
    pending_two: Channel | None = None

    def to_json(self) -> dict:
        """The ARI Channel object (``channelvars`` only when variables were added with ``report_events``)."""
        out: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "protocol_id": "",
            "caller": {"name": self.caller_name, "number": self.caller_number},
            "connected": {"name": self.connected_name, "number": self.connected_number},
            "accountcode": self.accountcode,
            "dialplan": {
                "context": self.context,
                "exten": self.exten,
                "priority": self.priority,
                "app_name": self.app_name,
                "app_data": self.app_data,
            },
            "creationtime": format_timestamp(self.creationtime),
            "language": self.language,
        }
        if self.reported:
            out["channelvars"] = {name: self.variables.get(name, "") for name in self.reported}
        return out

    @property
    def alive(self) -> bool:
        """Not yet destroyed."""
        return not self.gone


@define(eq=False)
class Bridge:
    """One bridge. ``members`` holds channels and the names of announcer/recorder pseudo-channels, in join order."""

    id: str
    name: str
    types: list[str]
    creationtime: float
    members: list = field(factory=list)
    play_queue: deque = field(factory=deque)
    play_current: Any = None
    announcer: str | None = None
    recorders: dict = field(factory=dict)
    gone: bool = False

    @property
    def channels(self) -> list[Channel]:
        """The real channels in the bridge, in join order."""
        return [m for m in self.members if isinstance(m, Channel)]

    @property
    def bridge_type(self) -> str:
        """``holding`` or ``mixing``."""
        return "holding" if "holding" in self.types else "mixing"

    @property
    def technology(self) -> str:
        """``holding_bridge``; ``simple_bridge`` for up to 2 members of a mixing bridge; else ``softmix``."""
        if self.bridge_type == "holding":
            return "holding_bridge"
        if "video_sfu" in self.types or len(self.members) > 2:
            return "softmix"
        return "simple_bridge"

    def to_json(self) -> dict:
        """The ARI Bridge object."""
        return {
            "id": self.id,
            "technology": self.technology,
            "bridge_type": self.bridge_type,
            "bridge_class": "stasis",
            "creator": "Stasis",
            "name": self.name,
            "channels": sorted(c.id for c in self.channels),
            "creationtime": format_timestamp(self.creationtime),
            "video_mode": "sfu" if "video_sfu" in self.types else "talker",
        }


@define(eq=False)
class Playback:
    """One playback (a list of media URIs played in order under one id)."""

    id: str
    media: list[str]
    target: Any
    language: str
    state: str = "queued"
    index: int = 0
    #: seconds left of the current item (while paused), and when it started playing (clock time)
    remaining: float | None = None
    started_at: float = 0.0
    skipms: int = 3000
    timers: list = field(factory=list)
    #: an unknown media scheme: plays forever and is never reported finished
    stuck: bool = False

    def to_json(self) -> dict:
        """The ARI Playback object (``next_media_uri`` while another item follows)."""
        out: dict[str, Any] = {"id": self.id, "media_uri": self.media[min(self.index, len(self.media) - 1)]}
        if self.index + 1 < len(self.media):
            out["next_media_uri"] = self.media[self.index + 1]
        out.update(target_uri=target_uri(self.target), language=self.language, state=self.state)
        return out


@define(eq=False)
class LiveRecording:
    """A recording in progress."""

    name: str
    format: str
    target: Any
    max_duration: int
    if_exists: str
    terminate_on: str
    state: str = "queued"
    active: float = 0.0
    resumed_at: float | None = None
    timers: list = field(factory=list)
    duration: int | None = None

    def to_json(self) -> dict:
        """The ARI LiveRecording object (``duration`` once finished)."""
        out: dict[str, Any] = {"name": self.name, "format": self.format, "state": self.state,
                               "target_uri": target_uri(self.target)}  # fmt: skip
        if self.duration is not None:
            out["duration"] = self.duration
        return out


@define(eq=False)
class StoredRecording:
    """A recording file in the spool."""

    name: str
    format: str
    data: bytes
    seconds: float = 0.0

    def to_json(self) -> dict:
        """The ARI StoredRecording object."""
        return {"name": self.name, "format": self.format}


@define(eq=False)
class App:
    """A Stasis application: its socket, subscriptions (reference counted) and event filter."""

    name: str
    #: the events socket (``deliver(app_name, text)``); ``None`` once it closed
    sink: Any = None
    #: ids of the channels in Stasis in this application (they keep it registered without a socket: fact 28)
    in_stasis: set[str] = field(factory=set)
    channel_subs: dict[str, int] = field(factory=dict)
    bridge_subs: dict[str, int] = field(factory=dict)
    endpoint_subs: list[str] = field(factory=list)
    device_subs: list[str] = field(factory=list)
    subscribe_all: bool = False
    allowed: list = field(factory=list)
    disallowed: list = field(factory=list)

    def to_json(self) -> dict:
        """The ARI Application object (``subscribeAll`` apps list the all-topics instead: fact 26)."""
        if self.subscribe_all:
            ids: list[list[str]] = [[f"__AST_{kind}_ALL_TOPIC"] for kind in ("CHANNEL", "BRIDGE", "ENDPOINT",
                                                                             "DEVICE_STATE")]  # fmt: skip
        else:
            ids = [[cid for cid, n in self.channel_subs.items() if n > 0],
                   [bid for bid, n in self.bridge_subs.items() if n > 0], list(self.endpoint_subs),
                   list(self.device_subs)]  # fmt: skip
        return {"name": self.name, "channel_ids": ids[0], "bridge_ids": ids[1], "endpoint_ids": ids[2],
                "device_names": ids[3], "events_allowed": list(self.allowed),
                "events_disallowed": list(self.disallowed)}  # fmt: skip

    def wants(self, event_type: str) -> bool:
        """Whether the event filter lets ``event_type`` through."""
        if self.allowed and not any(f.get("type") == event_type for f in self.allowed):
            return False
        return not any(f.get("type") == event_type for f in self.disallowed)

    def sub(self, table: dict[str, int], key: str, delta: int) -> None:
        """Change a reference-counted subscription."""
        count = table.get(key, 0) + delta
        if count > 0:
            table[key] = count
        else:
            table.pop(key, None)
