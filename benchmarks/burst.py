"""
Connection-burst probe: how many of N AudioSocket connections opened at the same instant reach avr.

Starts ``twistd --nodaemon avr`` (built-in echo agent, HTTP for ``/health``), then opens N TCP connections at once
(non-blocking ``connect`` in a tight loop, as Asterisk does when many calls start together). Each connection sends its
UUID frame and one 20 ms audio frame as soon as it is connected, then stays open. After ``--hold`` seconds it counts:

- ``accepted``: calls avr logged as connected ("AudioSocket call <uuid> connected"), i.e. that reached the router;
- ``lost``: connections avr never saw;
- ``client_errors``: connections that failed on the caller's side (refused, reset, not connected within
  ``--connect-timeout``), by errno;
- ``connect_s``: how long the connects took (a SYN the full accept queue dropped is retried after 1 s, 3 s, ...).

    python -m benchmarks.burst                        # 1,000 connections against this checkout
    python -m benchmarks.burst --avr-source ../main    # ... against another checkout (before/after)
    LISTEN_BACKLOG=50 python -m benchmarks.burst       # LISTEN_BACKLOG is passed on to avr

It measures; it asserts nothing (``tests/test_listen_burst.py`` is the regression test).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.request import urlopen

from benchmarks.run import ROOT, base_env, free_port, stop, wait_for_port

AUDIO = b"\x10\x01\x40" + bytes(320)


def burst(port: int, count: int, connect_timeout: float,
          hold: float) -> tuple[set[str], Counter[str], list[float], list[socket.socket]]:
    """
    Open ``count`` connections at once. A connection not established within ``connect_timeout`` seconds is abandoned,
    as Asterisk abandons it (``MAX_CONNECT_TIMEOUT_MSEC``, 2 s).

    :return: the UUIDs sent, the caller-side failures by errno name, the connect times (s) and the open sockets.
    """
    selector = selectors.DefaultSelector()
    ids: dict[socket.socket, str] = {}
    errors: Counter[str] = Counter()
    start = time.monotonic()
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        code = s.connect_ex(("127.0.0.1", port))
        if code not in (0, errno.EINPROGRESS):
            errors[errno.errorcode.get(code, str(code))] += 1
            s.close()
            continue
        ids[s] = str(uuid.uuid4())
        selector.register(s, selectors.EVENT_WRITE)
    sent: set[str] = set()
    connect_times: list[float] = []
    deadline = start + hold
    while (now := time.monotonic()) < deadline and selector.get_map():
        if now - start > connect_timeout:
            for key in [k for k in selector.get_map().values() if k.events & selectors.EVENT_WRITE]:
                errors["connect timeout"] += 1
                selector.unregister(key.fileobj)
                key.fileobj.close()  # type: ignore[union-attr]
        for key, events in selector.select(timeout=0.05):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            if events & selectors.EVENT_WRITE:
                code = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    errors[errno.errorcode.get(code, str(code))] += 1
                    selector.unregister(s)
                    continue
                connect_times.append(time.monotonic() - start)
                s.send(b"\x01\x00\x10" + uuid.UUID(ids[s]).bytes + AUDIO)
                sent.add(ids[s])
                selector.modify(s, selectors.EVENT_READ)
            else:
                try:
                    if not s.recv(65536):
                        errors["EOF"] += 1
                        selector.unregister(s)
                except OSError as e:
                    errors[errno.errorcode.get(e.errno or 0, str(e))] += 1
                    selector.unregister(s)
    return sent, errors, connect_times, list(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=10.0, help="seconds to keep the connections open")
    parser.add_argument("--connect-timeout", type=float, default=2.0, help="seconds a connect may take (Asterisk: 2)")
    parser.add_argument("--avr-source", type=Path, help="another checkout of avr to run")
    args = parser.parse_args()
    port, http_port = free_port(), free_port()
    env = base_env()
    env.update({k: v for k, v in os.environ.items() if k == "LISTEN_BACKLOG"})
    if args.avr_source is not None:
        source = args.avr_source.resolve()
        env["PYTHONPATH"] = os.pathsep.join((str(source), str(source / "src")))
    env.update(PORT=str(port), HTTP_PORT=str(http_port))
    twistd = Path(sys.executable).with_name("twistd")
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "avr.log"
        server = subprocess.Popen([str(twistd), "--nodaemon", "--pidfile=", f"--logfile={log}", "avr"],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            wait_for_port(http_port, server, "avr")
            wait_for_port(port, server, "avr")
            sent, errors, connect_times, sockets = burst(port, args.connections, args.connect_timeout, args.hold)
            health = json.load(urlopen(f"http://127.0.0.1:{http_port}/health", timeout=10))
            for s in sockets:
                s.close()
        finally:
            stop(server)
        text = "".join(path.read_text() for path in Path(tmp).glob("avr.log*"))  # twistd rotates at 1 MB
    seen = set(re.findall(r"AudioSocket call ([0-9a-f-]{36}) connected", text))
    report = {
        "connections": args.connections,
        "uuid_sent": len(sent),
        "accepted": len(seen),
        "lost": args.connections - len(seen),
        "live_calls_at_end": health.get("audiosocketCalls"),
        "connect_s": {"median": round(statistics.median(connect_times), 3), "max": round(max(connect_times), 3),
                      "over_1s": sum(t > 1 for t in connect_times)} if connect_times else None,
        "client_errors": dict(errors),
        "backlog_setting": env.get("LISTEN_BACKLOG", "default"),
        "somaxconn": Path("/proc/sys/net/core/somaxconn").read_text().strip(),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
