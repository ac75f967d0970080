"""
The objects of the fake Asterisk (channels, bridges, playbacks, recordings, Stasis applications), their wire JSON,
and the constant tables they use (Q.850 causes, sound lengths, formats).

Everything here is plain data with the exact field names and key order of Asterisk 22.10.1 (see
``avr/testing/captures/asterisk/README.md``); the behaviour lives in `avr.testing.ari_engine`.
"""

from __future__ import annotations

import re
import struct
import time
from collections import deque
from typing import Any

from attrs import define, field, frozen

ASTERISK_ID = "02:fc:00:00:00:01"
ASTERISK_VERSION = "22.10.1"

#: ``ast_cause2str`` texts for the causes a fake call can end with.
Q850_CAUSES: dict[int, str] = {
    0: "Unknown",
    1: "Unallocated (unassigned) number",
    2: "No route to specified transmit network",
    3: "No route to destination",
    6: "Channel unacceptable",
    16: "Normal Clearing",
    17: "User busy",
    18: "No user responding",
    19: "User alerting, no answer",
    20: "Subscriber absent",
    21: "Call Rejected",
    22: "Number changed",
    26: "Answered elsewhere",
    27: "Destination out of order",
    28: "Invalid number format",
    29: "Facility rejected",
    31: "Normal, unspecified",
    34: "Circuit/channel congestion",
    38: "Network out of order",
    41: "Temporary failure",
    42: "Switching equipment congestion",
    44: "Requested channel not available",
    58: "Bearer capability not available",
    127: "Interworking, unspecified",
}

#: ``DELETE /channels/{id}?reason=`` names (Asterisk 22.10).
HANGUP_REASONS: dict[str, int] = {
    "normal": 16,
    "busy": 17,
    "congestion": 34,
    "no_answer": 19,
    "timeout": 18,
    "rejected": 21,
    "unallocated": 1,
    "normal_unspecified": 31,
    "number_incomplete": 28,
    "codec_mismatch": 58,
    "interworking": 127,
    "failure": 38,
    "answered_elsewhere": 26,
}

#: Seconds each ``sound:`` lasts (measured on the capture system where known: hello-world 1.40 s, beep 0.425 s).
DEFAULT_SOUNDS: dict[str, float] = {
    "hello-world": 1.40,
    "beep": 0.425,
    "demo-congrats": 18.0,
    "tt-monkeys": 9.5,
    "vm-goodbye": 0.9,
    "silence/1": 1.0,
    "silence/2": 2.0,
    "silence/5": 5.0,
}
#: Length of one spoken digit/letter for ``digits:``/``number:``/``characters:`` (digits:42 took 1.55 s).
SAY_ITEM_SECONDS = 0.775

#: Codec names `formats`/externalMedia accept (``ast_format_cache_get``).
CODECS = frozenset(
    "ulaw alaw gsm g722 g726 g729 ilbc lpc10 speex speex16 speex32 opus h264 vp8 testlaw slin slin12 slin16 "
    "slin24 slin32 slin44 slin48 slin96 slin192 siren7 siren14 g719 adpcm".split()
)
#: Sample rates of the signed-linear codecs (others are 8 kHz here).
CODEC_RATES = {
    "slin": 8000, "slin12": 12000, "slin16": 16000, "slin24": 24000, "slin32": 32000,
    "slin44": 44100, "slin48": 48000, "slin96": 96000, "slin192": 192000, "g722": 16000,
}  # fmt: skip

#: File extensions ``record`` accepts (``ast_get_format_for_file_ext``) and their sample rate.
RECORD_FORMATS: dict[str, int] = {
    "wav": 8000, "WAV": 8000, "wav16": 16000, "gsm": 8000, "ulaw": 8000, "alaw": 8000, "sln": 8000,
    "raw": 8000, "sln12": 12000, "sln16": 16000, "sln24": 24000, "sln32": 32000, "sln44": 44100,
    "sln48": 48000, "g722": 16000, "g729": 8000, "ogg": 8000,
}  # fmt: skip

class AriHttpError(Exception):
    """
    An ARI error response.

    :ivar status: the HTTP status.
    :ivar body: the JSON body (``{"message": ...}`` unless given).
    """

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message
        self.body = body if body is not None else {"message": message}


def allocation_failed() -> AriHttpError:
    """Asterisk's ``ast_ari_response_alloc_failed``: 500 ``{"error":"Allocation failed"}`` (fact 11)."""
    return AriHttpError(500, "Allocation failed", {"error": "Allocation failed"})



# --------------------------------------------------------------------------------------------------------------------
# Parameters (as Asterisk's generated parsers read them)
def param_str(value: Any) -> str:
    """A parameter as a string (JSON bodies may carry numbers and booleans)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def param_int(value: Any, default: int) -> int:
    """C ``atoi`` on a parameter: leading digits, 0 for garbage; ``default`` when absent."""
    text = param_str(value).strip()
    if not text:
        return default
    match = re.match(r"[-+]?\d+", text)
    return int(match.group(0)) if match else 0


def param_float(value: str) -> float:
    """A non-negative float parameter (0.0 for garbage), as dialplan ``Wait()`` reads it."""
    try:
        return max(float(value), 0.0)
    except ValueError:
        return 0.0


def split_args(value: str) -> list[str]:
    """``appArgs`` → StasisStart ``args`` (split on commas; empty → ``[]``)."""
    return value.split(",") if value else []


CHANNEL_STATES = ("Down", "Rsrved", "OffHook", "Dialing", "Ring", "Ringing", "Up", "Busy", "Dialing Offhook",
                  "Pre-ring", "Unknown")  # fmt: skip


def cause_text(cause: int) -> str:
    """
    The ``cause_txt`` Asterisk gives a Q.850 cause.

    :param cause: the Q.850 code.
    """
    return Q850_CAUSES.get(cause, "Unknown")


def format_timestamp(wall: float) -> str:
    """
    An ARI timestamp: ``2026-11-21T11:53:16.769+0000`` (UTC, milliseconds, no colon in the offset).

    :param wall: seconds since the epoch.
    """
    ms = int(round(wall * 1000))
    secs, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{millis:03d}+0000"


def http_date(wall: float) -> str:
    """
    The HTTP ``Date`` value for ``wall`` (``Sat, 21 Nov 2026 11:58:54 GMT``).

    :param wall: seconds since the epoch.
    """
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(int(wall)))


def parse_caller_id(value: str) -> tuple[str, str]:
    """
    Split a ``callerId`` parameter (``"Name" <123>``, ``Name <123>``, ``123``) into ``(name, number)``.

    :param value: the parameter.
    """
    match = re.match(r'^\s*"?([^"<]*?)"?\s*<([^>]*)>\s*$', value)
    if match:
        return match.group(1).strip(), match.group(2).strip()
    value = value.strip()
    if re.fullmatch(r"[0-9*#+]+", value):
        return "", value
    return value, ""


def wav_bytes(seconds: float, rate: int = 8000) -> bytes:
    """
    A valid RIFF/WAVE file (PCM 16-bit mono) of ``seconds`` of silence, as Asterisk's ``wav`` format writes it.

    :param seconds: length of the audio.
    :param rate: sample rate (8000 for ``wav``, 16000 for ``wav16``).
    """
    data = bytes(2 * int(round(max(seconds, 0.0) * rate)))
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
    return header + fmt + b"data" + struct.pack("<I", len(data)) + data


def recording_bytes(fmt: str, seconds: float) -> bytes:
    """
    The file content of a recording of ``seconds`` in format ``fmt`` (silence).

    :param fmt: a `RECORD_FORMATS` key.
    :param seconds: length of the audio.
    """
    rate = RECORD_FORMATS.get(fmt, 8000)
    if fmt in ("wav", "wav16", "WAV"):
        return wav_bytes(seconds, rate)
    samples = int(round(max(seconds, 0.0) * rate))
    if fmt == "ulaw":
        return b"\xff" * samples
    if fmt == "alaw":
        return b"\xd5" * samples
    return bytes(2 * samples)


def wav_duration(data: bytes) -> float:
    """
    Seconds of audio in a WAV produced by `wav_bytes` (0.0 if it is not one).

    :param data: the file content.
    """
    if len(data) < 44 or data[:4] != b"RIFF":
        return 0.0
    rate = struct.unpack("<I", data[24:28])[0] or 8000
    return (len(data) - 44) / (2 * rate)


def recording_mime(fmt: str) -> str:
    """
    The ``Content-Type`` of ``GET /recordings/stored/{name}/file`` for format ``fmt``.

    :param fmt: the stored recording's format.
    """
    return {"wav": "audio/wav", "wav16": "audio/wav", "WAV": "audio/wav", "gsm": "audio/gsm",
            "ulaw": "audio/basic", "alaw": "audio/x-alaw-basic", "ogg": "audio/ogg"}.get(
        fmt, "application/octet-stream")  # fmt: skip


# --------------------------------------------------------------------------------------------------------------------
# Dialplan


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
        line = _strip_comment(raw).strip()
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
        steps = contexts[context].setdefault(exten, [])
        steps.append(DialplanStep(app_match.group(1), app_match.group(2) or ""))
    return contexts


def _strip_comment(line: str) -> str:
    out = []
    escaped = False
    for char in line:
        if char == ";" and not escaped:
            break
        escaped = char == "\\"
        out.append(char)
    return "".join(out)


# --------------------------------------------------------------------------------------------------------------------
# Objects


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
class StasisState:
    """A channel's presence in a Stasis application (its control and command queue)."""

    app: str
    args: list[str]
    #: how it got there: ``originate``, ``dialplan``, ``create``, ``snoop``, ``external``, ``inbound``
    origin: str
    queue: deque = field(factory=deque)
    current: Any = None
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
    bridge: Any = None
    #: dial state for outbound channels: ``dialing`` until answered or failed
    dialing: bool = False
    dialstring: str = ""
    #: the app an ARI-originated channel enters once answered, and its args
    originate_app: str | None = None
    originate_args: list[str] = field(factory=list)
    #: the dialplan the ;1 half runs once answered (originate with context/extension)
    originate_dialplan: tuple[str, str, int] | None = None
    #: the dialplan interpreter's state: the running application and the DelayedCall that continues it
    pbx_started: bool = False
    #: ``real``: the channel runs its own PBX (ast_pbx_run: Local ;2 halves, inbound calls, originate to an
    #: extension); ``nested``: dialplan run after ``continue`` inside the Stasis() that an originate started
    pbx_kind: str = ""
    #: what the snapshot shows once the PBX has ended (the application before it, e.g. AppDial2 or "")
    nested_app: tuple[str, str] | None = None
    saved_app: tuple[str, str] = ("", "")
    pbx_app: str = ""
    pbx_call: Any = None
    timers: list = field(factory=list)
    hangupcause: int | None = None
    ending: bool = False
    gone: bool = False
    #: ``STASISSTATUS=SUCCESS`` is only reported when the channel ends (after continue/move)
    deferred_stasis_status: bool = False
    audiosocket: Any = None
    snoops: list = field(factory=list)
    snoop_target: Channel | None = None
    formats: str = ""
    #: the ;2 half of a Local pair made by ``/channels/create``, dialled by ``/dial``
    pending_two: Channel | None = None

    def to_json(self, with_vars: bool = True) -> dict:
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
        if with_vars and self.reported:
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

    @property
    def target_uri(self) -> str:
        """``channel:<id>`` or ``bridge:<id>``."""
        kind = "bridge" if isinstance(self.target, Bridge) else "channel"
        return f"{kind}:{self.target.id}"

    def to_json(self) -> dict:
        """The ARI Playback object (``next_media_uri`` while another item follows)."""
        out: dict[str, Any] = {"id": self.id, "media_uri": self.media[min(self.index, len(self.media) - 1)]}
        if self.index + 1 < len(self.media):
            out["next_media_uri"] = self.media[self.index + 1]
        out.update(target_uri=self.target_uri, language=self.language, state=self.state)
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
    muted: bool = False
    cancelled: bool = False
    duration: int | None = None

    @property
    def target_uri(self) -> str:
        """``channel:<id>`` or ``bridge:<id>``."""
        kind = "bridge" if isinstance(self.target, Bridge) else "channel"
        return f"{kind}:{self.target.id}"

    def to_json(self) -> dict:
        """The ARI LiveRecording object (``duration`` once finished)."""
        out: dict[str, Any] = {"name": self.name, "format": self.format, "state": self.state,
                               "target_uri": self.target_uri}  # fmt: skip
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
    sink: Any = None
    channel_subs: dict[str, int] = field(factory=dict)
    bridge_subs: dict[str, int] = field(factory=dict)
    endpoint_subs: list[str] = field(factory=list)
    device_subs: list[str] = field(factory=list)
    subscribe_all: bool = False
    allowed: list = field(factory=list)
    disallowed: list = field(factory=list)

    def to_json(self) -> dict:
        """The ARI Application object."""
        if self.subscribe_all:
            return {
                "name": self.name,
                "channel_ids": ["__AST_CHANNEL_ALL_TOPIC"],
                "bridge_ids": ["__AST_BRIDGE_ALL_TOPIC"],
                "endpoint_ids": ["__AST_ENDPOINT_ALL_TOPIC"],
                "device_names": ["__AST_DEVICE_STATE_ALL_TOPIC"],
                "events_allowed": list(self.allowed),
                "events_disallowed": list(self.disallowed),
            }
        return {
            "name": self.name,
            "channel_ids": [cid for cid, n in self.channel_subs.items() if n > 0],
            "bridge_ids": [bid for bid, n in self.bridge_subs.items() if n > 0],
            "endpoint_ids": list(self.endpoint_subs),
            "device_names": list(self.device_subs),
            "events_allowed": list(self.allowed),
            "events_disallowed": list(self.disallowed),
        }

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
