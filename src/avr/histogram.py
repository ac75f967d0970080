"""
`Buckets`: a histogram kept in plain numbers, for the components that measure something often (the playback ticker,
every ~5 ms) or that should not depend on the metrics library; `avr.metrics` reads them when ``/metrics`` is
scraped. No lock and no call into another library: one `bisect` and two additions per observation.
"""

from __future__ import annotations

from bisect import bisect_left

from attrs import define, field


@define(eq=False)
class Buckets:
    """
    Counts of observations by upper bound (Prometheus' ``le``: a value equal to a bound is in that bound's bucket),
    not cumulative, plus one bucket past the last bound (``+Inf``), and the sum of the values.

    :param bounds: the upper bounds, ascending.
    """

    bounds: tuple[float, ...]
    #: Observations per bucket: ``counts[i]`` those ``<= bounds[i]`` (and above the bound before); the last, above
    #: every bound.
    counts: list[int] = field(init=False)
    #: Sum of the observed values (each counted as often as it was observed).
    total: float = 0.0

    def __attrs_post_init__(self) -> None:
        if list(self.bounds) != sorted(set(self.bounds)) or not self.bounds:
            raise ValueError(f"bounds must be ascending and distinct, got {self.bounds}")
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float, times: int = 1) -> None:
        """Count ``value`` ``times`` times (e.g. the frames that shared one tick's lateness)."""
        self.counts[bisect_left(self.bounds, value)] += times
        self.total += value * times

    @property
    def count(self) -> int:
        """Observations so far."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """``(le, count)`` pairs, cumulative, ending with ``+Inf``: what a Prometheus histogram exposes."""
        pairs = []
        running = 0
        for bound, count in zip((*map(_le, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            pairs.append((bound, float(running)))
        return pairs

    def over(self, bound: float) -> int:
        """Observations above ``bound``, which must be one of the bounds."""
        return sum(self.counts[self.bounds.index(bound) + 1:])


def _le(bound: float) -> str:
    # Prometheus' own formatting of bucket bounds (0.02, not 0.020000000000000001).
    return repr(float(bound))
