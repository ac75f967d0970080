"""
A flood of ``POST /call`` registrations against a real ``twistd --nodaemon avr`` on loopback: how much memory and log
the registrations cost (issue 8: pending registrations and the logged length of outside strings).

    .venv/bin/python -m benchmarks.call_flood                      # 1,000 requests of 60 KB
    .venv/bin/python -m benchmarks.call_flood --requests 200 --size 10000 --avr-source ../avr-old

avr runs with ``STS_URL`` set (so every payload field becomes a query parameter of the call's STS URL) and no
webhook; no AudioSocket connection arrives, so every registration stays pending for ``CALL_INIT_TTL``. The report
gives the HTTP statuses, avr's RSS (``VmRSS``) before and after, and the size of its log.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from benchmarks.run import ROOT, base_env, free_port, stop, wait_for_port


def rss_kb(pid: int) -> int:
    """The resident set size of process ``pid``, in KB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def log_bytes(log: Path) -> int:
    """The size of ``log`` and its rotated files (twistd rotates its log file every 1 MB)."""
    return sum(f.stat().st_size for f in log.parent.glob(log.name + "*"))


def body_of(size: int) -> bytes:
    """A ``POST /call`` body of about ``size`` bytes: a fresh UUID and a payload of 1 KB string fields."""
    fields = {f"field{i}": "x" * 1000 for i in range(max(1, size // 1012))}
    return json.dumps({"uuid": str(uuid.uuid4()), "payload": fields}).encode("utf-8")


def flood(port: int, requests: int, size: int) -> Counter:
    """Send ``requests`` registrations over one kept-alive connection; the count of each HTTP status."""
    statuses: Counter = Counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(requests):
        connection.request("POST", "/call", body=body_of(size), headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        statuses[response.status] += 1
        if response.getheader("connection", "").lower() == "close":
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.close()
    return statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--size", type=int, default=60 * 1024, help="bytes per request body")
    parser.add_argument("--avr-source", type=Path, default=ROOT, help="the checkout of avr to run")
    args = parser.parse_args()

    http_port, port = free_port(), free_port()
    env = base_env()
    source = args.avr_source.resolve()
    env["PYTHONPATH"] = os.pathsep.join((str(source), str(source / "src")))
    env.update(PORT=str(port), HTTP_PORT=str(http_port), STS_URL="ws://127.0.0.1:9/sts?token=flood-secret")
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "avr.log"
        twistd = Path(sys.executable).with_name("twistd")
        process = subprocess.Popen([str(twistd), "--nodaemon", "--pidfile=", f"--logfile={log}", "avr"],
                                   cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            wait_for_port(http_port, process, "avr")
            time.sleep(0.5)
            rss_before, log_before = rss_kb(process.pid), log_bytes(log)
            started = time.monotonic()
            statuses = flood(http_port, args.requests, args.size)
            elapsed = time.monotonic() - started
            time.sleep(0.5)
            rss_after, log_after = rss_kb(process.pid), log_bytes(log)
            leaked = any("flood-secret" in f.read_text(errors="replace") for f in log.parent.glob(log.name + "*"))
        finally:
            stop(process)
    report = {
        "requests": args.requests,
        "body_bytes": len(body_of(args.size)),
        "statuses": dict(sorted(statuses.items())),
        "seconds": round(elapsed, 2),
        "rss_before_mb": round(rss_before / 1024, 1),
        "rss_after_mb": round(rss_after / 1024, 1),
        "rss_growth_mb": round((rss_after - rss_before) / 1024, 1),
        "log_growth_mb": round((log_after - log_before) / 1024 / 1024, 2),
        "log_bytes_per_request": round((log_after - log_before) / args.requests),
        "secret_in_log": leaked,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
