"""
A small run of the real benchmark (`benchmarks.run`), so that it never rots: a few calls for a few seconds through
the same three processes (echo STS, ``twistd avr`` or the Node relay, load generator). No timing is asserted; only
that every frame went through, every call stayed up and the report is complete.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import run as bench

CALLS = 3


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    relays = "avr,node" if bench.node_ready() is None else "avr"
    return bench.main([
        "--relays", relays, "--calls", str(CALLS), "--rates", "8000,16000", "--arrivals", "even,random",
        "--in-step", str(CALLS),
        "--warmup", "0.5", "--duration", "1.5", "--drain", "0.5", "--output", str(tmp_path_factory.mktemp("bench")),
    ])


@pytest.mark.integration
def test_every_frame_comes_back_and_every_call_stays_up(report: dict) -> None:
    """Each run echoed every frame sent in its window to the call that sent it, and no call was dropped."""
    assert report["runs"]
    for run in report["runs"]:
        where = f"{run['relay']} {run['rate']} Hz {bench.arrival_label(run['arrivals'], run['phases'])}"
        assert run["frames_sent"] >= CALLS * 50, where  # at least a second of audio per call
        assert run["frames_lost"] == 0, where
        assert run["frames_foreign"] == 0 and run["frames_duplicated"] == 0, where
        assert run["calls_up"] == CALLS, where
        assert run["echo_delay_ms"]["p50"] is not None, where


@pytest.mark.integration
def test_the_report_measures_the_relay_and_the_harness(report: dict) -> None:
    """CPU, memory and time spent waiting for a CPU come from /proc for the relay, the echo STS and the load
    generator; the load client's lateness and the machine's load average are in every run."""
    for run in report["runs"]:
        processes = run["processes"]
        assert set(processes) == {"relay", "echo", "loadgen"}
        assert processes["relay"]["cpu_s"] > 0 and processes["loadgen"]["cpu_s"] > 0
        assert processes["relay"]["rss_kb"] > processes["relay"]["rss_kb_per_call"] > -processes["relay"]["rss_kb"]
        for entry in processes.values():
            wait = entry["run_queue_wait_ms_per_s"]
            assert wait is None or 0 <= wait <= 1000 * 2  # at most every thread waited all the time
        assert run["send_lateness_ms"]["p99"] is not None
        assert run["isolation"] == "none" and len(run["load_average"]) == 3


@pytest.mark.integration
def test_both_rates_every_arrival_mode_and_the_in_step_case_are_run(report: dict) -> None:
    """8 and 16 kHz callers spread evenly and at random phases, plus every caller in step (one group), for avr (and
    Node when it is installed)."""
    cases = {(r["relay"], r["rate"], bench.arrival_label(r["arrivals"], r["phases"])) for r in report["runs"]}
    wanted = {(rate, how) for rate in (8000, 16000) for how in ("even", "random")} | {(8000, "groups1")}
    assert {("avr", *case) for case in wanted} <= cases
    if bench.node_ready() is None:
        assert {("node", *case) for case in wanted} <= cases
    else:
        pytest.skip(f"Node relay not measured: {bench.node_ready()}")


@pytest.mark.integration
def test_the_tables_show_every_run(report: dict) -> None:
    """The Markdown the benchmark publishes has a cost row and a quality row per run."""
    text = bench.tables(report)
    for run in report["runs"]:
        assert f"| {CALLS} | {run['relay']} |" in text
    tables = {(r["rate"], r["arrivals"], r["phases"]) for r in report["runs"]}
    assert text.count(f"| {CALLS} |") == len(report["runs"]) + len(tables)
    assert "spread evenly" in text and "random phases" in text and "every caller in step" in text


def test_benchmarks_md_has_the_results_section() -> None:
    """`scripts/bench --publish` needs the markers it replaces."""
    text = (Path(bench.ROOT) / "BENCHMARKS.md").read_text()
    start, end = bench.RESULTS_MARKERS
    assert text.index(start) < text.index(end)


def test_the_published_summary_leaves_out_per_call_details(report: dict) -> None:
    """benchmarks/results.json keeps every run's figures but not the per-call lists (those stay in bench-results/)."""
    brief = bench.summary(report)
    assert len(brief["runs"]) == len(report["runs"])
    assert all("per_call" not in run and "frames_sent" in run for run in brief["runs"])
    assert all("per_call" in run for run in report["runs"])
