"""
A fake of Asterisk 22.10.1's ARI: REST (a twisted.web resource) and the events WebSocket (autobahn), behaving like
the real captures in ``avr/testing/captures/asterisk/ari`` (the "facts" of their README) for every operation avr's
call control uses, with scenario controls for tests (inbound calls, far-end hangups and answers, DTMF, restarts)
and a check that a test left no channel or bridge behind (`FakeAsterisk.assert_no_leftovers`).

Usage, in memory::

    fake = FakeAsterisk(clock)                       # task.Clock
    http = StubTreq(fake.resource())                 # REST at http://asterisk/ari/...
    factory = fake.events_factory()                  # pump an autobahn client against it with twisted.test.iosim

over loopback::

    port = fake.listen(reactor)                      # Site on 127.0.0.1:<port>, /ari/events upgrades to WebSocket

`FakeAsterisk` is the tests' handle on two parts: the simulated Asterisk, made of small components composed in
`avr.testing.ari_asterisk`, and its network face, `avr.testing.ari_server` (HTTP in `avr.testing.ari_http` and
`avr.testing.ari_rest`, the WebSocket in `avr.testing.ari_events_socket`). It adds restarts and the scenario
controls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IDelayedCall
from twisted.web.server import Site

from avr.testing.ari_asterisk import Asterisk
from avr.testing.ari_dialplan import FIXTURE_DIALPLAN, parse_dialplan
from avr.testing.ari_events_socket import AriEventsFactory
from avr.testing.ari_http import AriResource, RecordedRequest
from avr.testing.ari_media_channels import FakeAudioSocketConnection
from avr.testing.ari_model import App, Bridge, Channel, Endpoint, LiveRecording, Playback, StoredRecording
from avr.testing.ari_playbacks import DEFAULT_SOUNDS
from avr.testing.ari_server import AsteriskServer


class FakeAsterisk:
    """
    A fake Asterisk 22.10.1 with ARI (see the module docstring).

    :param clock: ``IReactorTime`` for all timing (``task.Clock`` in unit tests, the reactor over loopback).
    :param users: ARI users and passwords (ari.conf); default ``{"avr": "avrpass"}``.
    :param app: the Stasis application `inbound_call` uses by default.
    :param dialplan: ``extensions.conf`` text for Local channels (default `FIXTURE_DIALPLAN`).
    :param sounds: extra ``{sound name: seconds}`` on top of `avr.testing.ari_playbacks.DEFAULT_SOUNDS`.
    :param audiosocket_endpoint: ``(host, port) -> IStreamClientEndpoint`` used by externalMedia
        ``encapsulation=audiosocket``; ``None`` skips the TCP connection (pure unit tests).
    :param wall_start: epoch seconds shown at ``clock.seconds()`` now (default: the clock's time if it looks like
        a wall clock, else 2026-11-21T12:00:00Z).
    :param uuid_factory: makes bridge and playback ids.
    :param global_variables: dialplan globals (``GET /asterisk/variable``), restored by `restart`.
    :param dtmf_loopback: digits sent with ``/dtmf`` to a channel whose far end is outside the fake (PJSIP) come
        back as ChannelDtmfReceived on that channel (else they are only recorded in `sent_dtmf`). Local channels
        always deliver them to their other half, as captured.
    :param history: keep every request and delivered event in `requests` and `events` (turn off for long
        benchmark runs).
    """

    def __init__(
        self,
        clock: Any,
        *,
        users: Mapping[str, str] | None = None,
        app: str = "avr",
        dialplan: str | None = None,
        sounds: Mapping[str, float] | None = None,
        audiosocket_endpoint: Callable[[str, int], Any] | None = None,
        wall_start: float | None = None,
        uuid_factory: Callable[[], str] | None = None,
        global_variables: Mapping[str, str] | None = None,
        dtmf_loopback: bool = False,
        history: bool = True,
    ) -> None:
        self.clock = clock
        self.app = app
        now = clock.seconds()
        if wall_start is None:
            wall_start = now if now > 1e9 else 1795262400.0
        #: the simulated Asterisk's components
        self.asterisk = Asterisk(
            clock,
            wall_start=wall_start,
            contexts=parse_dialplan(FIXTURE_DIALPLAN if dialplan is None else dialplan),
            sounds={**DEFAULT_SOUNDS, **(sounds or {})},
            new_id=uuid_factory,
            global_variables=global_variables,
            dtmf_loopback=dtmf_loopback,
            connect_audiosocket=audiosocket_endpoint,
            history=history,
        )
        #: its HTTP and WebSocket service
        self.server = AsteriskServer(clock, self.asterisk, users if users is not None else {"avr": "avrpass"},
                                     history)  # fmt: skip
        self._timers: list[IDelayedCall] = []

    # ----------------------------------------------------------------------------------------------------------------
    # Wiring

    def resource(self) -> AriResource:
        """The HTTP root resource (``/ari/...`` REST and the ``/ari/events`` WebSocket upgrade)."""
        return self.server.resource()

    def events_factory(self) -> AriEventsFactory:
        """The autobahn factory behind ``/ari/events`` (connect an iosim-pumped client to it in memory)."""
        return self.server.events_factory()

    def site(self) -> Site:
        """A ``Site`` over `resource` (keep-alive connections idle out after 15 s: fact 10)."""
        return self.server.site()

    def listen(self, reactor: Any, port: int = 0, interface: str = "127.0.0.1") -> Any:
        """
        Serve `site` over TCP (the port is kept across `stop`/`start`/`restart`).

        :return: the ``IListeningPort``.
        """
        return self.server.listen(reactor, port, interface)

    @property
    def port(self) -> int:
        """The TCP port `listen` bound (0 before)."""
        return self.server.port

    @property
    def status(self) -> str:
        """``up``, ``down`` (connections refused) or ``booting`` (404 on ``/ari/...``)."""
        return self.server.status

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every REST request received, in order."""
        return self.server.requests

    def close(self) -> defer.Deferred:
        """
        Cancel every timer, drop every connection and stop listening (test teardown). Over loopback the Deferred
        also waits until the dropped events sockets are really closed; in memory it fires at once.
        """
        for call in self._timers:
            if call.active():
                call.cancel()
        self._timers.clear()
        self.asterisk.cancel_all()
        return self.server.close()

    # ----------------------------------------------------------------------------------------------------------------
    # Configuration

    def add_endpoint(self, resource: str, *, technology: str = "PJSIP", answer: str = "auto", delay: float = 0.0,
                     state: str = "online") -> Endpoint:  # fmt: skip
        """
        Configure an endpoint (``PJSIP/<resource>``) and how its far end behaves when originated to.

        :param answer: ``auto`` (answers after ``delay`` s; ringing first if ``delay`` > 0), ``never`` (rings until
            the originate timeout, then cause 19), ``busy`` (busy after ``delay`` s, cause 17) or ``manual`` (rings
            until `answer_remote`). Unconfigured endpoints fail originate with 500 ``Allocation failed``.
        """
        return self.asterisk.dialer.add_endpoint(technology, resource, answer, delay, state)

    def load_dialplan(self, text: str) -> None:
        """Add extensions from ``extensions.conf`` text (an extension given again replaces the old one)."""
        self.asterisk.dialplan.load(text)

    def add_stored_recording(self, name: str, fmt: str = "wav", seconds: float = 1.0,
                             data: bytes | None = None) -> None:  # fmt: skip
        """Put a recording file in the spool (``data`` defaults to a valid WAV/raw file of ``seconds`` silence)."""
        self.asterisk.recordings.add_stored(name, fmt, seconds, data)

    # ----------------------------------------------------------------------------------------------------------------
    # Scenario control

    def inbound_call(
        self,
        caller_number: str,
        exten: str,
        answered: bool = False,
        *,
        app: str | None = None,
        args: Iterable[str] = (),
        caller_name: str = "",
        endpoint: str = "trunk",
        context: str = "from-external",
        channel_id: str | None = None,
    ) -> str:
        """
        A call arriving from ``PJSIP/<endpoint>`` and running ``Stasis(app,args)`` from the dialplan: state ``Ring``
        (``Up`` if ``answered``), then StasisStart with ``args``. If the app has no socket, the channel is created
        and hung up at once (``STASISSTATUS=FAILED``), with no events (fact 28).

        :return: the channel id.
        """
        ch = self.asterisk.dialer.inbound_call(caller_number, exten, answered=answered, app=app or self.app, args=args,
                                      caller_name=caller_name, endpoint=endpoint, context=context,
                                      channel_id=channel_id)  # fmt: skip
        return ch.id

    def remote_hangup(self, channel_id: str, cause: int = 16) -> None:
        """
        The far end hangs up with Q.850 ``cause``: ChannelHangupRequest ``{cause}`` (no ``soft``) → StasisEnd → …
        → ChannelDestroyed (delivered only while the app is still subscribed: originated channels, not inbound ones).
        """
        self.asterisk.hangups.remote_hangup(self._channel(channel_id), cause)

    def answer_remote(self, channel_id: str) -> None:
        """The far end of a ringing originated channel (``manual`` or ``never`` endpoint) answers."""
        self.asterisk.dialer.answer_remote(self._channel(channel_id))

    def remote_dtmf(self, channel_id: str, digits: str, duration_ms: int = 100, between_ms: int = 100) -> None:
        """The far end presses ``digits``: ChannelDtmfReceived on the channel, one per digit as it ends."""
        self.asterisk.dtmf.remote(self._channel(channel_id), digits, duration_ms, between_ms)

    def restart(self, *, eof_after: float = 1.1, refused_for: float = 0.3, booting_for: float = 0.6) -> None:
        """
        ``core restart now`` (fact 30): every channel is hung up at once (ChannelHangupRequest ``{cause:4,
        soft:true}`` … ChannelDestroyed cause 0); ``eof_after`` s later the events sockets get TCP EOF with no close
        frame and connections are refused for ``refused_for`` s; then ``/ari/...`` answers 404 for ``booting_for`` s;
        then Asterisk is up again with no channels, bridges or applications.
        """
        self.asterisk.shutdown()
        self._schedule(eof_after, self.server.go_down)
        self._schedule(eof_after + refused_for, self._boot)
        self._schedule(eof_after + refused_for + booting_for, self.server.come_back)

    def stop(self) -> defer.Deferred:
        """Asterisk dies (no events, no close frames): sockets dropped, connections refused until `start`."""
        self.asterisk.cancel_all()
        self.asterisk.reset()
        return self.server.go_down()

    def start(self) -> None:
        """Asterisk is back (fresh state)."""
        self.asterisk.reset()
        self.server.come_back()

    # ----------------------------------------------------------------------------------------------------------------
    # State

    @property
    def channels(self) -> dict[str, Channel]:
        """Live channels by id."""
        return self.asterisk.channels.by_id

    @property
    def bridges(self) -> dict[str, Bridge]:
        """Bridges by id."""
        return self.asterisk.bridges.by_id

    @property
    def playbacks(self) -> dict[str, Playback]:
        """Playbacks in progress by id."""
        return self.asterisk.playbacks.by_id

    @property
    def live_recordings(self) -> dict[str, LiveRecording]:
        """Recordings in progress by name."""
        return self.asterisk.recordings.live

    @property
    def stored_recordings(self) -> dict[str, StoredRecording]:
        """Stored recordings by name (``.data`` holds the file)."""
        return self.asterisk.recordings.stored

    @property
    def apps(self) -> dict[str, App]:
        """Registered Stasis applications by name."""
        return self.asterisk.apps.by_name

    @property
    def events(self) -> list[tuple[str, dict]]:
        """Every event delivered to a socket, as ``(application, event)``."""
        return self.asterisk.apps.delivered

    @property
    def sent_dtmf(self) -> dict[str, list[str]]:
        """Digits sent with ``/dtmf`` to channels whose far end is outside the fake (PJSIP), by channel id."""
        return self.asterisk.dtmf.sent

    @property
    def audiosockets(self) -> dict[str, FakeAudioSocketConnection]:
        """The open AudioSocket connections of externalMedia channels, by channel id."""
        return self.asterisk.media_channels.audiosockets

    def leftovers(self) -> list[str]:
        """
        One line per channel and bridge still alive in the fake (what a test that ended every call must not
        leave): id, name, state and where it is (Stasis app, dialplan, bridge members).
        """
        lines = []
        for ch in self.channels.values():
            if ch.stasis is not None:
                where = f"in Stasis app {ch.stasis.app}"
            elif ch.dialing:
                where = "dialling"
            else:
                where = f"in dialplan {ch.context},{ch.exten},{ch.priority} ({ch.app_name or 'no app'})"
            bridged = f", in bridge {ch.bridge.id}" if ch.bridge is not None else ""
            lines.append(f"channel {ch.id} {ch.name} ({ch.state}, {where}{bridged})")
        for bridge in self.bridges.values():
            members = ", ".join(c.id for c in bridge.channels) or "empty"
            lines.append(f"bridge {bridge.id} {bridge.name!r} ({bridge.bridge_type}: {members})")
        return lines

    def assert_no_leftovers(self) -> None:
        """
        Fail (AssertionError) if a channel or bridge is still alive, naming each one (see `leftovers`).

        :raises AssertionError: something is left.
        """
        left = self.leftovers()
        if left:
            raise AssertionError("the fake Asterisk still holds:\n  " + "\n  ".join(left))

    async def settle_leftovers(self, timeout: float = 5.0) -> None:
        """
        Over loopback, where avr's clean-up requests are still in flight when a test's last event arrives: wait (on
        the fake's clock, polling every 10 ms) until nothing is left, then `assert_no_leftovers`.

        :param timeout: seconds to wait before failing.
        """
        waited = 0.0
        while self.leftovers() and waited < timeout:
            await task.deferLater(self.clock, 0.01, lambda: None)
            waited += 0.01
        self.assert_no_leftovers()

    def audiosocket(self, channel_id: str) -> FakeAudioSocketConnection:
        """The AudioSocket connection of an externalMedia channel."""
        return self.audiosockets[channel_id]

    def _channel(self, channel_id: str) -> Channel:
        ch = self.channels.get(channel_id)
        if ch is None:
            raise KeyError(f"No channel {channel_id!r}")
        return ch

    # ----------------------------------------------------------------------------------------------------------------
    # Restarts

    def _schedule(self, delay: float, fn: Callable[[], Any]) -> None:
        self._timers[:] = [c for c in self._timers if c.active()]
        self._timers.append(self.clock.callLater(delay, fn))

    def _boot(self) -> None:
        self.asterisk.cancel_all()
        self.asterisk.reset()
        self.server.come_back("booting")
