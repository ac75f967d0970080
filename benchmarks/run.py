"""
Run the benchmark: avr and the Node.js relay side by side, at several numbers of concurrent calls.

For every (rate, N, relay) it starts three processes besides this one: the lean echo STS (`benchmarks.echo_sts`), the
relay under test (``twistd --nodaemon avr``, or ``node benchmarks/node-relay/relay.js``) and the load generator
(`benchmarks.loadgen`), which measures the calls and samples the relay's CPU time and RSS from ``/proc`` at the edges
of the steady window. The relays are interleaved at each N, so both see the same machine conditions. By default the
callers' frames are spread evenly over the 20 ms period, as real calls' are, and nothing is pinned: the relay shares
the machine with the harness as a server shares it with its neighbours (see `cpu_split` for the other isolations,
and ``--arrivals`` for random phases or the older grouped callers).

    scripts/bench                       # the full run (about 10 minutes), results in bench-results/
    scripts/bench --publish             # ... and write benchmarks/results.json and the tables of BENCHMARKS.md
    scripts/bench --calls 5 --duration 3 --rates 8000 --relays avr   # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, UTC
from statistics import median
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NODE_RELAY = ROOT / "benchmarks" / "node-relay"
RESULTS_JSON = ROOT / "benchmarks" / "results.json"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
RESULTS_MARKERS = ("<!-- results -->", "<!-- /results -->")
RELAYS = ("avr", "node")
#: Ways of spreading the callers over the 20 ms period (`benchmarks.loadgen.arrival_offsets`); kept here so that
#: importing this module does not import Twisted.
ARRIVALS = ("even", "random", "groups")


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, what: str, timeout: float = 20.0) -> None:
    """Wait until something accepts on ``port``; fail if ``process`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} within {timeout} s")


def base_env() -> dict[str, str]:
    """A clean environment: none of avr's settings leak in from the caller's shell."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["PYTHONPATH"] = os.pathsep.join((str(ROOT), str(ROOT / "src")))
    return env


def relay_command(relay: str, port: int, sts_port: int, rate: int, log: Path,
                  avr_source: Path | None = None, settings: dict[str, str] | None = None,
                  ) -> tuple[list[str], dict[str, str]]:
    """
    The command line and environment that start ``relay`` on ``port``, talking to the echo STS.

    :param avr_source: another checkout of avr to run instead of this one (e.g. an older commit, for before/after).
    :param settings: avr settings (environment variables) for the avr relay, e.g. ``{"POLL_BATCH_MS": "0"}``.
    """
    env = base_env()
    if relay == "avr":
        env.update(settings or {})
    if relay == "avr" and avr_source is not None:
        env["PYTHONPATH"] = os.pathsep.join((str(avr_source), str(avr_source / "src")))
    env["PORT"] = str(port)
    env["STS_URL"] = f"ws://127.0.0.1:{sts_port}"
    if relay == "avr":
        # End-to-end at the call's rate: the echo STS reflects audio unchanged, so frames can be matched exactly.
        env["STS_SAMPLE_RATE"] = str(rate)
        twistd = Path(sys.executable).with_name("twistd")
        command = [str(twistd)] if twistd.exists() else [sys.executable, "-m", "twisted"]
        return command + ["--nodaemon", "--pidfile=", f"--logfile={log}", "avr"], env
    if relay == "node":
        return ["node", str(NODE_RELAY / "relay.js")], env
    raise ValueError(f"unknown relay {relay!r}")


def node_ready() -> str | None:
    """Why the Node relay cannot run here, or ``None`` when it can."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (NODE_RELAY / "node_modules" / "ws").is_dir():
        return f"its dependencies are not installed (cd {NODE_RELAY.relative_to(ROOT)} && npm ci)"
    return None


def stop(process: subprocess.Popen, sig: int = signal.SIGINT) -> None:
    """Ask ``process`` to stop, then kill it if it does not within 10 s."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_split(isolation: str) -> tuple[Any, Any]:
    """
    How to keep the harness (echo STS and load generator) from delaying the relay under test, as ``preexec_fn``
    callables for (relay, harness):

    - ``pin``: the relay gets the last CPU to itself, the harness the others;
    - ``nice``: no pinning, but the harness runs at nice 10, so the relay is scheduled first whenever it is ready
      and the harness still has every idle cycle of every CPU;
    - ``none``: all at the same priority, anywhere.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if isolation == "pin" and len(cpus) > 1:
        return partial(os.sched_setaffinity, 0, {cpus[-1]}), partial(os.sched_setaffinity, 0, set(cpus[:-1]))
    if isolation == "nice":
        return None, partial(os.nice, 10)
    return None, None


def arrival_label(arrivals: str, phases: int) -> str:
    """A short name for a way of spreading callers: ``even``, ``random``, ``groups4``, ``groups1`` (in step)."""
    return f"groups{phases}" if arrivals == "groups" else arrivals


def run_one(relay: str, calls: int, rate: int, arrivals: str, phases: int, args: argparse.Namespace,
            logs: Path, number: int = 1) -> dict[str, Any]:
    """One measurement (the ``number``-th of its case): fresh echo STS and relay processes, one load generator run."""
    relay_setup, harness_setup = cpu_split(args.isolation)
    load_average = _load_average()
    sts_port, port = free_port(), free_port()
    tag = f"{relay}-{rate}-{calls}-{arrival_label(arrivals, phases)}" + (f"-{number}" if number > 1 else "")
    with open(logs / f"echo-{tag}.log", "wb") as echo_log, open(logs / f"{tag}.out", "wb") as relay_log:
        echo = subprocess.Popen([sys.executable, "-m", "benchmarks.echo_sts", "--port", str(sts_port)],
                                cwd=ROOT, env=base_env(), stdout=echo_log, stderr=subprocess.STDOUT,
                                preexec_fn=harness_setup)
        server = None
        try:
            wait_for_port(sts_port, echo, "the echo STS")
            command, env = relay_command(relay, port, sts_port, rate, logs / f"{tag}.log", args.avr_source,
                                         dict(setting.split("=", 1) for setting in args.avr_setting))
            server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=relay_log, stderr=subprocess.STDOUT,
                                      preexec_fn=relay_setup)
            wait_for_port(port, server, relay)
            load = subprocess.run(
                [sys.executable, "-m", "benchmarks.loadgen", "--port", str(port), "--calls", str(calls),
                 "--rate", str(rate), "--arrivals", arrivals, "--phases", str(phases), "--seed", str(args.seed),
                 "--warmup", str(args.warmup), "--drain", str(args.drain),
                 "--duration", str(args.duration),
                 "--watch", f"relay={server.pid}", "--watch", f"echo={echo.pid}"],
                cwd=ROOT, env=base_env(), capture_output=True, text=True, timeout=args.warmup + args.duration + 120,
                preexec_fn=harness_setup)
            if load.returncode != 0:
                raise RuntimeError(f"load generator failed for {tag}:\n{load.stderr[-3000:]}")
            result = json.loads(load.stdout)
            result["relay"] = relay
            result["isolation"] = args.isolation
            result["load_average"] = load_average
            return result
        finally:
            if server is not None:
                stop(server)
            stop(echo, signal.SIGTERM)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    versions = {}
    for name in ("twisted", "autobahn"):
        try:
            from importlib.metadata import version
            versions[name] = version(name)
        except Exception:
            versions[name] = None
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip() \
        if shutil.which("node") else None
    from autobahn.websocket import USES_NVX
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(), "node": node,
            "autobahn_nvx": USES_NVX, **versions}


def _load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages now (how busy the machine was besides this benchmark)."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def tables(report: dict[str, Any]) -> str:
    """The Markdown tables of a report: cost per call, then audio quality, one pair per rate."""
    runs = report["runs"]
    out = []
    for rate, label in sorted({(r["rate"], _label(r)) for r in runs}, key=lambda k: (_label_order(k[1]), k[0])):
        at_rate = [r for r in runs if r["rate"] == rate and _label(r) == label]
        relays = [relay for relay in RELAYS if any(r["relay"] == relay for r in at_rate)]
        ns = sorted({r["calls"] for r in at_rate})
        find: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for r in at_rate:
            find.setdefault((r["relay"], r["calls"]), []).append(r)
        out.append(f"#### {rate / 1000:g} kHz ({rate // 50 * 2}-byte frames), {_spread(at_rate[0])}, "
                   f"{at_rate[0]['window_s']:.0f} s window, {_isolation(at_rate[0])}\n")
        repeated = max(len(v) for v in find.values()) > 1
        head = ["N"]
        for relay in relays:
            head += [f"{relay} CPU ms per call-second" + (" (median, range)" if repeated else ""),
                     f"{relay} calls/core", f"{relay} RSS KB per call"]
        compared = relays[:2] == ["avr", "node"]
        if compared:
            head.append("avr ÷ node" + (" (median, range)" if repeated else ""))
        head += ["echo STS CPU (cores)", "load client CPU (cores)", "load average (1 min)"]
        rows = []
        for n in ns:
            row = [str(n)]
            for relay in relays:
                cpu = [r["processes"]["relay"]["cpu_ms_per_call_second"] for r in find.get((relay, n), [])]
                rss = [r["processes"]["relay"]["rss_kb_per_call"] for r in find.get((relay, n), [])]
                row += [_spread_of(cpu, 3),
                        _fmt(round(1000 / median(cpu))) if cpu and median(cpu) else "–",
                        _fmt(median(rss), 1) if rss else "–"]
            if compared:
                row.append(_spread_of(_ratios(find.get(("avr", n), []), find.get(("node", n), [])), 2))
            harness = [find[(relay, n)] for relay in relays if (relay, n) in find]
            row.append(" / ".join(_fmt(median(r["processes"]["echo"]["cpu_share_of_core"] for r in rs))
                                  for rs in harness))
            row.append(" / ".join(_fmt(median(r["processes"]["loadgen"]["cpu_share_of_core"] for r in rs))
                                  for rs in harness))
            row.append(" / ".join(_fmt((rs[0].get("load_average") or [None])[0]) for rs in harness))
            rows.append(row)
        out.append(_table(head, rows))
        head = ["N", "relay", "interval deviation p50 / p99 / max (ms)", "echo delay p50 / p99 / max (ms)",
                "frames sent", "lost", "late", "calls up", "load client send lateness p99 / max (ms)",
                "waiting for a CPU: relay / echo STS / load client (ms per s)"]
        rows = []
        for n in ns:
            for relay in relays:
                for number, r in enumerate(find.get((relay, n), []), 1):
                    d, e, s = r["interval_deviation_ms"], r["echo_delay_ms"], r["send_lateness_ms"]
                    rows.append([
                        str(n), relay if number == 1 else f"{relay} (run {number})",
                        f"{_fmt(d['p50'])} / {_fmt(d['p99'])} / {_fmt(d['max'])}",
                        f"{_fmt(e['p50'])} / {_fmt(e['p99'])} / {_fmt(e['max'])}", str(r["frames_sent"]),
                        str(r["frames_lost"]), str(r["frames_late"]), f"{r['calls_up']}/{n}",
                        f"{_fmt(s['p99'])} / {_fmt(s['max'])}",
                        " / ".join(_fmt(r["processes"][name].get("run_queue_wait_ms_per_s"), 1)
                                   for name in ("relay", "echo", "loadgen"))])
        out.append(_table(head, rows))
    return "\n".join(out)


def _spread_of(values: list[float], digits: int) -> str:
    """The median of ``values``, with their range when there are several: ``2.90 (2.85–3.02)``."""
    if not values:
        return "–"
    if len(values) == 1:
        return _fmt(values[0], digits)
    return f"{_fmt(median(values), digits)} ({_fmt(min(values), digits)}–{_fmt(max(values), digits)})"


def _ratios(avr: list[dict[str, Any]], node: list[dict[str, Any]]) -> list[float]:
    """avr's CPU per call-second over Node's, round by round (each pair measured back to back)."""
    return [a["processes"]["relay"]["cpu_ms_per_call_second"] / b["processes"]["relay"]["cpu_ms_per_call_second"]
            for a, b in zip(avr, node, strict=False) if b["processes"]["relay"]["cpu_ms_per_call_second"]]


def _label(run: dict[str, Any]) -> str:
    # Reports from before --arrivals had only phase groups.
    return arrival_label(run.get("arrivals", "groups"), run["phases"])


def _label_order(label: str) -> tuple[int, int]:
    if label.startswith("groups"):
        return (2, -int(label[len("groups"):]))
    return (0 if label == "even" else 1, 0)


def _spread(run: dict[str, Any]) -> str:
    arrivals = run.get("arrivals", "groups")
    if arrivals == "even":
        return "callers spread evenly over the 20 ms period"
    if arrivals == "random":
        return "callers at random phases"
    return "every caller in step" if run["phases"] == 1 else f"callers in {run['phases']} phase groups"


def _isolation(run: dict[str, Any]) -> str:
    return {"pin": "relay pinned to a CPU of its own", "nice": "harness at nice 10",
            "none": "unpinned"}.get(run.get("isolation", "pin"), "")


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` without the per-call details (those stay in the run's own ``report.json``)."""
    return {**report, "runs": [{k: v for k, v in run.items() if k != "per_call"} for run in report["runs"]]}


def publish(report: dict[str, Any]) -> None:
    """Write `RESULTS_JSON` and replace the tables between the markers of `BENCHMARKS_MD`."""
    RESULTS_JSON.write_text(json.dumps(summary(report), indent=1) + "\n")
    text = BENCHMARKS_MD.read_text()
    start, end = RESULTS_MARKERS
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{BENCHMARKS_MD.name} has no {start} … {end} section")
    machine = report["machine"]
    body = (f"{start}\n\n_Run of {report['started']} on {machine['cpu']} ({machine['cores']} cores), load average "
            f"{report.get('load_average')} at the start (1, 5, 15 minutes)._\n\n"
            f"{tables(report)}\n{end}")
    BENCHMARKS_MD.write_text(pattern.sub(lambda _: body, text))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--relays", default="avr,node", help="comma-separated: avr, node")
    parser.add_argument("--calls", default="50,100,200,300", help="comma-separated numbers of concurrent calls")
    parser.add_argument("--rates", default="8000,16000", help="comma-separated caller sample rates")
    parser.add_argument("--arrivals", default="even",
                        help="comma-separated ways of spreading the callers' frames over the 20 ms period: even "
                             "(default, as real calls), random, groups (PHASES groups, as benchmarks before "
                             "2026-12 did)")
    parser.add_argument("--phases", type=int, default=4,
                        help="with --arrivals groups: the callers' frames are due in this many groups, 20 ms / "
                             "PHASES apart")
    parser.add_argument("--seed", type=int, default=0, help="with --arrivals random: the phases' seed")
    parser.add_argument("--in-step", default="200",
                        help="comma-separated N also run with every caller in step (groups of 1), at the first rate")
    parser.add_argument("--avr-source", type=Path,
                        help="run the avr of another checkout (its src/ and twisted/plugins/), e.g. to compare commits")
    parser.add_argument("--avr-setting", action="append", default=[], metavar="NAME=VALUE",
                        help="an avr setting (environment variable) for the avr relay, e.g. POLL_BATCH_MS=0; "
                             "repeatable")
    parser.add_argument("--isolation", choices=("none", "pin", "nice"), default="none",
                        help="none (default): every process anywhere, as on a real server; pin: the relay on a CPU "
                             "of its own, the harness on the others; nice: the harness at nice 10")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure each case this many times (the relays taking turns); the cost table shows "
                             "the median and range, the quality table every run")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--drain", type=float, default=2.0,
                        help="seconds to wait for the last echoes after the window (a frame queued longer is lost)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench-results", help="directory for JSON and logs")
    parser.add_argument("--publish", action="store_true", help="also write benchmarks/results.json and BENCHMARKS.md")
    args = parser.parse_args(argv)
    relays = [r for r in args.relays.split(",") if r]
    unknown = set(relays) - set(RELAYS)
    if unknown:
        parser.error(f"unknown relay(s): {', '.join(sorted(unknown))}")
    if "node" in relays and (why := node_ready()):
        parser.error(f"the Node relay cannot run: {why}")
    started = datetime.now(UTC)
    logs = args.output / started.strftime("%Y%m%dT%H%M%SZ")
    logs.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"started": started.isoformat(timespec="seconds"), "machine": machine(),
                              "avr_source": str(args.avr_source) if args.avr_source else None,
                              "avr_settings": args.avr_setting,
                              "warmup_s": args.warmup, "window_s": args.duration,
                              "isolation": args.isolation, "load_average": _load_average(),
                              "runs": []}
    arrivals = [a for a in args.arrivals.split(",") if a]
    unknown = set(arrivals) - set(ARRIVALS)
    if unknown or not arrivals:
        parser.error(f"--arrivals: one or more of {', '.join(ARRIVALS)}")
    plan = [(int(rate), int(calls), how, args.phases) for how in arrivals for rate in args.rates.split(",")
            for calls in args.calls.split(",")]
    plan += [(int(args.rates.split(",")[0]), int(calls), "groups", 1) for calls in args.in_step.split(",") if calls]
    for rate, calls, how, phases in plan:
        for number in range(1, args.repeat + 1):
            for relay in relays:
                result = run_one(relay, calls, rate, how, phases, args, logs, number)
                report["runs"].append(result)
                relay_cpu = result["processes"]["relay"]["cpu_ms_per_call_second"]
                sys.stderr.write(
                    f"{relay:>4} {rate} Hz N={calls:<4} {arrival_label(how, phases):<7} {relay_cpu:.3f} ms CPU per "
                    f"call-second, deviation p99 {result['interval_deviation_ms']['p99']} ms, echo delay p50 "
                    f"{result['echo_delay_ms']['p50']} ms, lost {result['frames_lost']}, late {result['frames_late']}, "
                    f"load average {result['load_average']}\n")
    (logs / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    sys.stderr.write(tables(report) + f"\nreport: {logs / 'report.json'}\n")
    if args.publish:
        publish(report)
    return report


if __name__ == "__main__":
    main()
