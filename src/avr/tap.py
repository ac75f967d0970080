"""
``twistd avr``: command-line options and the service maker. The only module that touches the global reactor.
"""

from __future__ import annotations

import gc
import os
import platform
import signal
import sys
from typing import IO, Any, Mapping

import twisted
from twisted.application.service import IService, MultiService, Service
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized
from twisted.python.logfile import LogFile

from avr import __version__
from avr.config import SETTINGS, Config, ConfigError, load_config, read_config_file, read_env_file
from avr.logs import log_observer

#: The environment file read from the working directory, as avr-core and asterisk-api read theirs.
ENV_FILE = ".env"


class Options(usage.Options):
    """Options of ``twistd avr``: one ``--long-option`` per setting, plus ``--config``."""

    synopsis = "[options]"
    longdesc = (
        "Bridges Asterisk AudioSocket calls to speech-to-speech agents and offers call control over ARI. "
        "Every option can also be given as an environment variable (the upper-case name, e.g. STS_URL), in a "
        ".env file in the working directory, or as a key of the [avr] section of the --config file; options win "
        "over the environment, which wins over .env, which wins over the config file."
    )
    optParameters = [["config", "c", None, "INI config file with an [avr] section (see etc/avr.conf.example)"]] + [
        [s.option, None, None,
         f"{s.help} [env {s.env}]" + (f" (default: {s.default})" if s.default is not None else "")]
        for s in SETTINGS
    ]

    def postOptions(self) -> None:
        """Combine options, environment, ``./.env`` and config file into ``self["avr-config"]``, or refuse them
        all."""
        try:
            file_values = read_config_file(self["config"]) if self["config"] else {}
            self["avr-config"] = load_config(
                os.environ, {s.attribute: self[s.option] for s in SETTINGS}, file_values, read_env_file(ENV_FILE)
            )
        except ConfigError as e:
            # Not a UsageError: twistd would print its whole usage text before the problems.
            raise SystemExit(f"twistd avr: {e}") from None

    def opt_version(self) -> None:
        """Print avr's version and exit."""
        sys.stdout.write(f"avr {__version__} (Twisted {twisted.__version__}, Python {platform.python_version()})\n")
        raise SystemExit(0)


def makeService(options: Options) -> IService:
    """Build avr on the global reactor: avr's own (`avr.reactor`) unless ``twistd --reactor`` chose one."""
    config: Config = options["avr-config"]
    install_reactor(config.fast_paths)
    from twisted.internet import reactor

    if config.log_level == "debug":
        import txaio

        txaio.use_twisted()  # what importing autobahn.twisted does; set_global_log_level needs it first
        txaio.set_global_log_level("debug")  # type: ignore[attr-defined] # autobahn's own debug lines, off unless asked for
    # What is loaded by now lives as long as the process: keep it out of the cyclic collector's scans, so that a
    # full collection (which holds up every call's audio while it runs) only walks objects made since.
    reactor.callWhenRunning(gc.freeze)
    twistd = getattr(options, "parent", None)
    stream = log_stream(twistd) if twistd is not None else None
    observer = log_observer(stream, config.log_level, config.log_format) if stream is not None else None
    return TwistdService(build_real_service(reactor, config), observer,
                         nodaemon=bool(twistd is None or twistd.get("nodaemon")))


def log_stream(twistd: Mapping[str, Any]) -> IO[str] | None:
    """
    Where twistd would write its log, given its options: ``None`` when they chose an observer of their own
    (``--logger``, ``--syslog``); standard output with ``--logfile=-`` or ``--nodaemon`` and no ``--logfile``; else
    the ``--logfile`` (``twistd.log`` by default), rotated by size and on ``SIGUSR1``, as twistd does.
    """
    if twistd.get("logger") or twistd.get("syslog"):
        return None
    path = twistd.get("logfile")
    if path == "-" or (not path and twistd.get("nodaemon")):
        return sys.stdout
    log_file = LogFile.fromFullPath(path or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):
        from twisted.internet import reactor as global_reactor

        threads: Any = global_reactor  # a signal handler must not rotate mid-write: the reactor's thread does
        signal.signal(signal.SIGUSR1, lambda *_: threads.callFromThread(log_file.rotate))
    return log_file


class TwistdService(MultiService):
    """
    What ``twistd avr`` runs: avr's service tree, plus two things only twistd needs.

    - avr's log observer (`avr.logs.log_observer`), set on the application twistd adds this service to: twistd's
      ``AppLogger.start`` uses an application's `ILogObserver` component in place of its own, from the first line.
    - A server that cannot listen (port in use, bad address) ends ``twistd --nodaemon`` with that one log line
      (`ListenFailed`), not a traceback.
    """

    log = Logger()

    def __init__(self, avr: IService, observer: ILogObserver | None, nodaemon: bool = True) -> None:
        MultiService.__init__(self)
        self.observer = observer
        self.nodaemon = nodaemon
        avr.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        if self.observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.observer)
        MultiService.setServiceParent(self, parent)

    def privilegedStartService(self) -> None:
        from avr.service import ListenFailed  # avr.service, imported by now, must not be before the reactor is chosen

        try:
            MultiService.privilegedStartService(self)
        except ListenFailed as e:
            self.log.error("avr cannot start: {problem}", problem=str(e))
            if not self.nodaemon:
                raise  # a daemon's twistd tells its parent, which prints the exception's one line
            raise SystemExit(1) from None


def install_reactor(fast_paths: bool) -> None:
    """
    Install `avr.reactor.LeanEPollReactor` as the global reactor, unless one is installed already (chosen with
    ``twistd --reactor``), ``fast_paths`` is false (``FAST_PATHS=off``), there is no epoll here, or the installed
    Twisted lacks an internal it uses (then with a warning).
    """
    if not fast_paths or "twisted.internet.reactor" in sys.modules:
        return
    try:
        from avr.reactor import install
    except ImportError:  # no epoll on this platform: Twisted's default reactor
        return
    try:
        install()
    except RuntimeError as e:
        Logger().warn("avr's reactor is off ({problem}); running on Twisted's default", problem=e)


def build_real_service(reactor: Any, config: Config) -> IService:
    """avr with real network clients on ``reactor``."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    from avr.fastpaths import FastPaths
    from avr.pipeline.latency import PipelineLatencies
    from avr.service import build, sts_connectors
    from avr.sts.connector import StsConnector

    fast_paths = FastPaths.detect(reactor, config.fast_paths)
    latencies = PipelineLatencies()
    pool = HTTPConnectionPool(reactor, persistent=True)
    avr = build(
        reactor,
        config,
        http_client=HTTPClient(Agent(reactor, pool=pool)),
        # Without a pool of its own an Agent opens a new connection per request (and closes it after).
        fresh_http_client=HTTPClient(Agent(reactor)),
        sts_connector=StsConnector(sts_connectors(reactor, config, fast_paths, latencies)),
        fast_paths=fast_paths,
        pipeline_latencies=latencies,
    )
    PoolCloser(pool).setServiceParent(avr.service)
    return avr.service


class PoolCloser(Service):
    """Closes the HTTP client's kept-alive connections at shutdown, so twistd exits promptly."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def stopService(self) -> Any:
        Service.stopService(self)
        return self.pool.closeCachedConnections()
