"""
The seams between avr's parts. Each interface has a real provider and a fake one (in `avr.testing` or the tests);
tests check both with ``verifyObject``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure
    from twisted.web.iweb import IResponse

    from avr.calls import Call
    from avr.sts.codec import ActionMessage, ActionRequest, ActionResult


class IAudioSocketLeg(Interface):
    """The Asterisk side of one call: an AudioSocket connection, as the call sees it."""

    uuid = Attribute("The call's UUID (lower-case canonical string) from the 0x01 frame.")
    connected = Attribute("True until the connection is lost or hung up.")

    def send_audio(kind: int, pcm: bytes) -> None:
        """Write one audio frame (kind 0x10-0x18, non-empty PCM16LE of at most 65535 bytes) in a single write."""

    def hang_up() -> None:
        """Send the 0x00 hang-up frame and close the connection (idempotent)."""


class IStsHandler(Interface):
    """Receives what an STS session delivers for one call (implemented by the call)."""

    def sts_audio(pcm: bytes) -> None:
        """Agent audio: PCM16LE at the session's ``output_rate``, any length."""

    def sts_interruption() -> None:
        """The caller barged in: queued agent audio must be dropped."""

    def sts_transcript(role: str, text: str) -> None:
        """A final transcript; ``role`` is ``user`` or ``agent``."""

    def sts_error(message: str) -> None:
        """The STS reported an error (the session may go on or close next)."""

    def sts_action(request: ActionMessage) -> None:
        """
        The agent asks for an action on the call (`avr.sts.codec.HangupRequest`, ``TransferRequest``,
        ``DtmfRequest``, or ``InvalidAction`` for a malformed one); its outcome goes back through
        `IStsSession.send_action_result`, once.
        """

    def sts_closed(reason: str) -> None:
        """The session ended, whoever ended it. Called exactly once per opened session."""


class IStsSession(Interface):
    """
    One open connection to a speech-to-speech service (or a pipeline of services), for one call. The session states
    its own sample rates; the call converts between them and the call's rate.
    """

    input_rate = Attribute("Sample rate (Hz) of the caller audio `send_audio` takes.")
    output_rate = Attribute("Sample rate (Hz) of the agent audio the session hands to `IStsHandler.sts_audio`.")

    def send_audio(pcm: bytes) -> None:
        """Caller audio: PCM16LE at ``input_rate``."""

    def send_dtmf(digit: str) -> None:
        """A DTMF digit the caller pressed."""

    def send_action_result(result: ActionResult) -> None:
        """
        The outcome of an action the agent asked for (`IStsHandler.sts_action`); a session whose protocol has no
        way to carry it (legacy HTTP, the echo agent, which never ask) drops it.
        """

    def close() -> None:
        """End the session (idempotent); `IStsHandler.sts_closed` follows."""


class IStsConnector(Interface):
    """Opens STS sessions."""

    def connect(url: str | None, uuid: str, handler: IStsHandler) -> Deferred[IStsSession]:
        """
        Open a session for call ``uuid`` at ``url`` (``None``: no STS URL, the configured default agent) and perform
        the protocol's opening (``init`` for WebSocket STS).

        :return: a Deferred firing with an `IStsSession`, or failing with a readable reason (refused, timeout,
            bad certificate, handshake rejected).
        """


class IWebhooks(Interface):
    """Delivers avr-core call webhooks."""

    def emit(uuid: str, type: str, payload: dict) -> None:
        """
        Queue one event for delivery. Events of one call are delivered in the order emitted; delivery never raises
        and never blocks the caller.
        """

    def call_initiated(uuid: str, payload: dict) -> Deferred[str | None]:
        """
        Send ``call_initiated`` and wait (at most the webhook timeout) for the reply.

        :return: a Deferred that fires with the ``sts_url`` the receiver returned, or ``None`` (no webhook configured,
            no override, receiver down, slow or malformed). It never fails.
        """


class ICallSink(Interface):
    """A call as its AudioSocket connection sees it: where inbound frames go."""

    def caller_audio(kind: int, payload: bytes) -> None:
        """An audio frame from Asterisk (kind 0x10-0x18; 0x10 payloads may be raw G.711)."""

    def caller_dtmf(digit: str) -> None:
        """A DTMF digit (kind 0x03) from Asterisk."""

    def caller_gone(reason: str) -> None:
        """The leg is over: 0x00 or 0xff received, EOF, reset, or a malformed frame. Called once."""


class ICallObserver(Interface):
    """
    Typed events of the calls avr bridges to an agent (`avr.calls.Call`: one AudioSocket connection, one STS
    session). The AVR webhooks, ``/events`` and metrics subscribe through this interface; an observer must not raise
    or block (the call's audio path is calling).

    Each method gets the `avr.calls.Call` itself, to read its facts (``uuid``, ``sts_url``, ``payload``,
    ``started_at``, ``rate``, ``codec``, ``end_reason``); an observer must not change it.
    """

    def call_started(call: Call) -> None:
        """The AudioSocket connection was admitted and the STS session is being opened. First event of a call."""

    def dtmf(call: Call, digit: str) -> None:
        """The caller pressed ``digit`` (``0-9``, ``*``, ``#``, ``A-D``)."""

    def transcript(call: Call, role: str, text: str) -> None:
        """The agent reported a final transcript; ``role`` is ``user`` or ``agent``."""

    def interruption(call: Call) -> None:
        """The agent reported that the caller barged in; queued agent audio was dropped."""

    def agent_action(call: Call, request: ActionMessage, result: ActionResult | None) -> None:
        """
        The agent asked for an action (``result`` ``None``), or the action it asked for succeeded or failed
        (``result``). Every request gets exactly one outcome, before `call_ended`.
        """

    def call_ended(call: Call, reason: str) -> None:
        """The call is over (``reason`` as logged, e.g. ``Asterisk: hang-up frame``). Last event, exactly once."""


class ICallActions(Interface):
    """Carries out what an agent asks for on its call (`IStsHandler.sts_action`): hang up, transfer, send DTMF."""

    def perform(call: Call, request: ActionRequest) -> Deferred[ActionResult]:
        """
        Carry out ``request`` (an `avr.sts.codec.HangupRequest`, ``TransferRequest`` or ``DtmfRequest``) on
        ``call``.

        :return: a Deferred firing with the `avr.sts.codec.ActionResult` (a refusal or failure is a result with
            ``ok`` false and a readable ``error``, never a failed Deferred).
        """


class IAgentRunner(Interface):
    """
    Runs the agent of an ARI call on the AudioSocket side: decides its STS URL as ``POST /call`` does and runs the
    agent session on the AudioSocket connection Asterisk opens for the call's media leg (`avr.agent_runner`).
    """

    def route(uuid: str, base: str | None, payload: dict) -> Deferred[str | None]:
        """
        Send ``call_initiated`` for ``uuid`` with ``payload`` and decide the STS URL: the webhook's override, else
        ``base``, else ``STS_URL``, with the payload as query parameters.

        :return: a Deferred firing with the URL (``None``: the built-in echo agent); it never fails.
        """

    def expect(uuid: str, sts_url: str | None, payload: dict, observer: ICallObserver,
               actions: ICallActions, kind: int) -> Deferred:
        """
        Expect the AudioSocket connection with ``uuid`` and run an agent session at ``sts_url`` on it (audio of
        ``kind``), its events to ``observer`` (and the AVR webhooks), its requests to ``actions``.

        :return: a Deferred that fails with the reason once the session is over (it has no other end), or when no
            connection arrives in time. Cancelling it ends the session.
        """


class IAdmission(Interface):
    """
    What avr does with one AudioSocket connection it expects (a ``POST /call`` registration, uploaded audio to play,
    an agent for an ARI call), kept by `avr.admissions.Admissions` until the connection with its UUID arrives.
    """

    kind = Attribute("What is expected, in a word for logs and counts (``registration``, ``playback``, ...).")

    def admit(leg: IAudioSocketLeg) -> ICallSink:
        """
        The expected connection arrived: start handling it.

        :return: where the connection's frames go.
        :raises avr.audiosocket.CallRefused: it cannot be handled after all.
        """

    def expired(reason: Failure) -> None:
        """
        The connection will not come: ``reason`` wraps `TimeoutError` (its time to live passed) or `CancelledError`
        (replaced by a newer expectation for the same UUID, or the server is shutting down). Called at most once,
        never after `admit`, never for an admission its producer withdrew.
        """


class ICallRouter(Interface):
    """Decides what handles a new AudioSocket connection, once its UUID is known."""

    def attach(leg: IAudioSocketLeg) -> ICallSink:
        """
        Start handling ``leg``.

        :raises avr.audiosocket.CallRefused: the UUID is not admitted (not registered while admission control is on,
            or already connected); the connection is then closed with the logged reason.
        """


class IAriClient(Interface):
    """ARI REST, relative to the ``/ari`` base (e.g. ``request("POST", "/channels/1.2/answer")``)."""

    def request(method: str, path: str, params: dict | None = None, body: dict | None = None) -> Deferred[Any]:
        """
        :return: a Deferred firing with the parsed JSON body (``None`` for 204), or failing with
            `avr.ari.errors.AriError` (Asterisk answered non-2xx) or `avr.ari.errors.AriUnavailable`.
        """

    def stream(path: str) -> Deferred[IResponse]:
        """
        GET a binary resource (a stored recording's ``/file``).

        :return: a Deferred firing with the treq response, body not yet read; same failures as `request`.
        """


class IAriEventListener(Interface):
    """Receives the ARI events WebSocket's traffic (implemented by the call-control model)."""

    def ari_connected() -> None:
        """The events socket is (re)connected: the listener should resynchronise its state from REST."""

    def ari_event(event: dict) -> None:
        """One ARI event (the parsed JSON object, with ``type``)."""

    def ari_disconnected(reason: str) -> None:
        """The events socket dropped; a reconnect with backoff is under way."""


class IEventSink(Interface):
    """Where call-control events go: the /events hub and the events webhook."""

    def publish(event: dict) -> None:
        """
        One event, already in its wire form: ``{"type", "callId" or "bridgeId", "timestamp", "data"}``.
        Never raises, never blocks.
        """


class IAudioInjector(Interface):
    """Plays PCM into Asterisk through an AudioSocket connection that Asterisk opens to avr (ARI externalMedia)."""

    def expect(uuid: str, pcm: bytes, rate: int) -> Deferred[None]:
        """
        Arrange that the AudioSocket connection which arrives with ``uuid`` is fed ``pcm`` (PCM16LE mono at ``rate``,
        one of the AudioSocket rates), paced at 20 ms per frame, and then hung up.

        :return: a Deferred that fires with ``None`` when the audio has been played, or fails if no connection
            arrives in time or it drops. Cancelling it stops the playback and hangs up the connection.
        """


class ICallControl(Interface):
    """
    Call control over ARI: the model behind the REST API. Every operation but `status` and `snapshot` is a
    coroutine function (``async def``); failures are `avr.control.errors.ControlError` subclasses (not found,
    conflict, invalid, unavailable, timeout) or `avr.ari.errors` failures (`AriError` with Asterisk's status,
    `AriUnavailable`). Calls, bridges, playbacks and recordings are returned as JSON-ready dicts.

    Arguments arrive validated against the wire limits (the REST routes check them); the model refuses only what
    breaks its own invariants (an unknown hang-up reason, a dialplan target without an extension, PCM that is not
    whole 16-bit samples at an AudioSocket rate).
    """

    def status() -> dict:
        """``{"ari": "connected"|"connecting"|"disconnected"|"not configured", "ariReason", "app",
        "inboundPolicy", "activeCalls": n, "bridges": n}``."""

    def snapshot() -> dict:
        """``{"calls": [...active calls of every kind], "bridges": [...]}`` for a new /events subscriber."""

    # -- calls ----------------------------------------------------------------------------------------------------

    def list_calls() -> Awaitable[list[dict]]:
        """:return: the active calls, of every kind (ARI and AudioSocket)."""

    def get_call(call_id: str) -> Awaitable[dict]:
        """:return: one call of any kind, active or ended within the retention. :raises NotFound:"""

    def originate(endpoint: str, caller_id: str | None = None, timeout: int = 30,
                  variables: dict | None = None, context: str | None = None, extension: str | None = None,
                  priority: int | None = None, agent: Any = None) -> Awaitable[dict]:
        """
        Dial ``endpoint`` (``TECH/resource``) into the app, ringing ``timeout`` seconds; with ``context`` and
        ``extension`` (``priority`` 1 by default) the answered call continues in the dialplan. With ``agent`` (an
        `avr.control.agents.AgentSpec`) an AI agent joins the call once it is answered.

        :return: the call. :raises Unavailable: ARI not configured or not connected.
        """

    def attach_agent(call_id: str, sts_url: str | None = None, route: str | None = None,
                     payload: dict | None = None) -> Awaitable[dict]:
        """
        Put an AI agent on an answered call: an externalMedia leg bridged with it and an STS session at
        ``sts_url`` (or the named ``route``, else ``STS_URL``; the ``call_initiated`` webhook may override it),
        ``payload`` as its query parameters.

        :return: ``{"callId", "agent"}`` once the agent's leg is bridged. :raises Conflict: not answered, not in
            Stasis, or an agent is already on it. :raises Timeout: the media channel never came up.
        """

    def detach_agent(call_id: str) -> Awaitable[dict]:
        """Take the agent off the call (the call stays up). :return: ``{"callId", "agent"}``. :raises Conflict:
        no agent on it."""

    def answer(call_id: str) -> Awaitable[dict]:
        """Answer a ringing inbound call. :return: the call."""

    def hangup(call_id: str, reason: str = "normal") -> Awaitable[dict]:
        """Hang up with one of ARI's reasons; ``call.ended`` follows. :return: the call (usually not ended yet)."""

    def send_dtmf(call_id: str, dtmf: str, between: int | None = None,
                  duration: int | None = None) -> Awaitable[dict]:
        """Send DTMF digits (timings in ms; ``None``: Asterisk's defaults). :return: ``{"callId", "dtmf"}``."""

    def transfer(call_id: str, endpoint: str, caller_id: str | None = None,
                 timeout: int = 30) -> Awaitable[dict]:
        """
        Connect an answered call to ``endpoint`` through a new leg and a bridge, once the target answers.

        :return: ``{"callId", "newCallId", "bridgeId", "bridge"}``. :raises Timeout: no answer.
        :raises Conflict: busy, failed, or the call is not in a state to be transferred.
        """

    def list_endpoints() -> Awaitable[list[dict]]:
        """:return: Asterisk's endpoints, ``[{"technology", "resource", "state", "channelIds"}]``."""

    # -- playback -------------------------------------------------------------------------------------------------

    def play(call_id: str, media: list[str]) -> Awaitable[dict]:
        """Play ARI media URIs (one playlist). :return: the playback, once Asterisk accepted it."""

    def stop_playback(call_id: str, playback_id: str) -> Awaitable[dict]:
        """Stop a running playback (``playback.finished`` follows, ``stopped``). :return: the playback."""

    def play_pcm(call_id: str, pcm: bytes, rate: int) -> Awaitable[dict]:
        """
        Play PCM16LE mono at an AudioSocket ``rate`` through an externalMedia leg.

        :return: the playback, once the audio is bridged. :raises Timeout: the media channel never came up.
        """

    def speak(call_id: str, text: str, voice: str | None = None, language: str | None = None,
              speed: float | None = None) -> Awaitable[dict]:
        """
        Synthesise ``text`` (OpenAI-compatible TTS) and play it into the call through a media leg; a newer call on
        the same call interrupts it.

        :return: ``{"status": "ok", "text", "voice", "language", "durationSeconds", "playbackId"}`` once played.
        :raises avr.control.speak.SpeakFailed: 501 no TTS, 502/504 the TTS failed. :raises Conflict: interrupted.
        """

    def start_audio_capture(call_id: str) -> Awaitable[dict]:
        """
        Capture the caller's audio (snoop ``spy=in`` + a media leg) into the streaming ASR.

        :return: ``{"status": "started", "audioCapture": {...}}``. :raises Conflict: already captured.
        """

    def stop_audio_capture(call_id: str) -> Awaitable[dict]:
        """Stop the capture (the ASR flushed and closed). :return: ``{"status": "stopped", "audioCapture"}``."""

    # -- recordings -----------------------------------------------------------------------------------------------

    def record(call_id: str, name: str | None = None, format: str = "wav",
               max_duration: int = 300, beep: bool = False, if_exists: str = "fail") -> Awaitable[dict]:
        """Record the call (``max_duration`` 0: no limit). :return: the live recording, ``{"name", "callId",
        "format", "state"}``."""

    def stop_recording(name: str) -> Awaitable[dict]:
        """Stop a live recording, keeping the file. :return: ``{"name", "status": "stopped"}``."""

    def cancel_recording(name: str) -> Awaitable[dict]:
        """Stop a live recording and discard it. :return: ``{"name", "status": "cancelled"}``."""

    def list_recordings() -> Awaitable[list[dict]]:
        """:return: the stored recordings, ``[{"name", "format"}]``."""

    def get_recording(name: str) -> Awaitable[dict]:
        """:return: one stored recording, ``{"name", "format"}``. :raises NotFound:"""

    def recording_file(name: str) -> Awaitable[Any]:
        """:return: the treq response of the stored recording's file, body unread."""

    def copy_recording(name: str, destination: str) -> Awaitable[dict]:
        """:return: the copy, ``{"name", "format"}``."""

    def delete_recording(name: str) -> Awaitable[dict]:
        """Delete a stored recording. :return: ``{"name", "status": "deleted"}``."""

    # -- bridges --------------------------------------------------------------------------------------------------

    def create_bridge(name: str | None = None) -> Awaitable[dict]:
        """Create a mixing bridge (``bridge.created``). :return: the bridge."""

    def list_bridges() -> Awaitable[list[dict]]:
        """:return: the bridges made through the API or by transfers."""

    def get_bridge(bridge_id: str) -> Awaitable[dict]:
        """:return: one bridge. :raises NotFound:"""

    def destroy_bridge(bridge_id: str) -> Awaitable[dict]:
        """Destroy a bridge; its calls stay up. :return: ``{"id", "status": "destroyed"}``."""

    def add_to_bridge(bridge_id: str, call_id: str) -> Awaitable[dict]:
        """Put a call into a bridge (out of any other). :return: the bridge."""

    def remove_from_bridge(bridge_id: str, call_id: str) -> Awaitable[dict]:
        """Take a call out of a bridge (it stays up). :return: the bridge."""
