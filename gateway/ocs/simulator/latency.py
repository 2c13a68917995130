"""How long the simulated OCS worker takes to answer: a fixed delay or a lognormal spread.

Bot latencies in the wild are right-skewed (most replies are quick, a few take many times the
median), which a lognormal captures with two numbers people can state: the median and the p95.
Draws come from a ``random.Random`` the caller seeds, so a benchmark run can be repeated exactly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

__all__ = ["LatencyModel"]

LatencyKind = Literal["fixed", "lognormal"]

#: z-score of the 95th percentile of a standard normal distribution.
_Z95 = 1.6448536269514722


@dataclass(frozen=True)
class LatencyModel:
    """A reply-latency distribution; build it with ``fixed`` or ``lognormal``."""

    kind: LatencyKind
    median_s: float
    p95_s: float

    def __post_init__(self) -> None:
        if self.median_s < 0 or self.p95_s < 0:
            raise ValueError("latencies cannot be negative")
        if self.kind == "lognormal" and not 0 < self.median_s <= self.p95_s:
            raise ValueError("a lognormal latency needs 0 < median_s <= p95_s")

    @classmethod
    def fixed(cls, seconds: float) -> LatencyModel:
        """Every reply takes exactly ``seconds``."""
        return cls("fixed", seconds, seconds)

    @classmethod
    def lognormal(cls, median_s: float, p95_s: float) -> LatencyModel:
        """Half the replies take under ``median_s``, 95 % under ``p95_s``."""
        return cls("lognormal", median_s, p95_s)

    @property
    def sigma(self) -> float:
        """Shape parameter of the underlying normal (0 for a fixed latency)."""
        if self.kind == "fixed" or self.p95_s == self.median_s:
            return 0.0
        return math.log(self.p95_s / self.median_s) / _Z95

    def sample(self, rng: random.Random) -> float:
        """One latency in seconds; a fixed model consumes no randomness."""
        if self.kind == "fixed":
            return self.median_s
        return rng.lognormvariate(math.log(self.median_s), self.sigma)
