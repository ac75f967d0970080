"""
``twistd avr``: command-line options and the service maker. The only module that touches the global reactor.
"""

from __future__ import annotations

import gc
import os
import sys
from typing import Any

from twisted.application.service import IService, Service
from twisted.logger import Logger
from twisted.python import usage

from avr.config import SETTINGS, Config, ConfigError, load_config, read_config_file, read_env_file

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
            raise usage.UsageError(str(e)) from None


def makeService(options: Options) -> IService:
    """Build avr on the global reactor: avr's own (`avr.reactor`) unless ``twistd --reactor`` chose one."""
    install_reactor(options["avr-config"].fast_paths)
    from twisted.internet import reactor

    # What is loaded by now lives as long as the process: keep it out of the cyclic collector's scans, so that a
    # full collection (which holds up every call's audio while it runs) only walks objects made since.
    reactor.callWhenRunning(gc.freeze)
    return build_real_service(reactor, options["avr-config"])


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
