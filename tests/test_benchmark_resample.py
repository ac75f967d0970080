"""A small run of `benchmarks.resample`, so that it never rots (no timing asserted)."""

from __future__ import annotations

from benchmarks import resample as bench


def test_resample_benchmark_measures_cost_lookahead_and_aliasing() -> None:
    """The figures are there, and the aliasing column shows what the report claims: soxr removes what audioop
    folds back."""
    result = bench.measure(16000, 8000, count=50)
    assert result["soxr_us"] > 0 and result["audioop_us"] > 0
    assert 0 < result["lookahead_ms"] < 40
    assert result["alias_soxr_db"] <= -40 < result["alias_audioop_db"]
