"""Reply delay and task polls per turn of a poll schedule, by Monte-Carlo simulation (no clock).

A turn: OCS accepts the message at t=0 and completes the task at t=L (the bot's latency). A poll
sent at s reaches OCS at s + rtt/2 and answers at s + rtt; it sees 'complete' when L <= s + rtt/2.
The reply delay is the answer time of that poll minus L. The learning schedule records each turn
as an interval (when OCS answered the last 'processing' poll, when it answered 'complete'], each
estimated as midway between sending the poll and reading its answer, and is
re-planned every ``refresh_every`` turns, as the runner refreshes its histogram copy.

    python bench/poll_sim.py            # the issue's four profiles, 50 ms round trip, JSON out

Used by tests/workers/test_poll_schedule.py (seeded, deterministic) and as the benchmark.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.poll_schedule import CompletionHistogram, PollSchedule

__all__ = [
    "ColdStart",
    "Comparison",
    "LatencyProfile",
    "Measured",
    "NextDelay",
    "PROFILES",
    "TurnResult",
    "cold_start",
    "compare",
    "fixed_poller",
    "learn",
    "measure",
    "run_turn",
    "today_schedule",
]

#: next_delay(elapsed_s, polls_so_far) -> seconds until the next poll
NextDelay = Callable[[float, int], float]
_Z95 = 1.6448536269514722


@dataclass(frozen=True, slots=True)
class LatencyProfile:
    """A bot latency distribution: fixed or lognormal (median, p95)."""

    name: str
    median_s: float
    p95_s: float

    @classmethod
    def fixed(cls, seconds: float) -> LatencyProfile:
        return cls(f"fixed {seconds:g} s", seconds, seconds)

    @classmethod
    def lognormal(cls, median_s: float, p95_s: float) -> LatencyProfile:
        return cls(f"lognormal {median_s:g}/{p95_s:g} s", median_s, p95_s)

    def draw(self, rng: random.Random) -> float:
        if self.p95_s == self.median_s:
            return self.median_s
        return rng.lognormvariate(math.log(self.median_s), math.log(self.p95_s / self.median_s) / _Z95)


@dataclass(frozen=True, slots=True)
class TurnResult:
    polls: int
    delay_s: float
    #: the interval the runner records: when OCS looked at the task (midway between sending a
    #: poll and reading its answer) for the last 'processing' poll and the 'complete' one
    low_s: float
    high_s: float


def run_turn(latency_s: float, next_delay: NextDelay, *, rtt_s: float, max_polls: int = 10_000) -> TurnResult:
    elapsed, polls, last_seen = 0.0, 0, 0.0
    while polls < max_polls:
        send = elapsed + next_delay(elapsed, polls)
        polls += 1
        answer = send + rtt_s
        if latency_s <= send + rtt_s / 2:
            return TurnResult(polls, answer - latency_s, last_seen, send + rtt_s / 2)
        last_seen, elapsed = send + rtt_s / 2, answer
    raise RuntimeError(f"no poll saw a {latency_s:.3f} s task complete in {max_polls} polls")


def fixed_poller(interval_s: float = 1.0) -> NextDelay:
    """OCS's widget: first poll at interval_s, then every interval_s (on the clock)."""
    return lambda elapsed, polls: (polls + 1) * interval_s - elapsed


def today_schedule(first_s: float = 1.0, growth: float = 1.5, max_s: float = 5.0) -> NextDelay:
    """The schedule before learning: waits first_s, then growth times longer each, up to max_s."""
    return lambda elapsed, polls: min(first_s * growth**polls, max_s)


@dataclass(frozen=True, slots=True)
class Measured:
    polls_per_turn: float
    delay_p50_s: float
    delay_p95_s: float
    delay_mean_s: float

    @classmethod
    def of(cls, results: list[TurnResult]) -> Measured:
        delays = sorted(r.delay_s for r in results)
        return cls(
            polls_per_turn=sum(r.polls for r in results) / len(results),
            delay_p50_s=_quantile(delays, 0.50),
            delay_p95_s=_quantile(delays, 0.95),
            delay_mean_s=statistics.fmean(delays),
        )


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def learn(
    histogram: CompletionHistogram,
    latencies: list[float],
    *,
    rtt_s: float,
    refresh_every: int = 25,
) -> tuple[PollSchedule, list[TurnResult]]:
    """Run turns under the learning schedule, recording each into histogram (mutated)."""
    schedule = PollSchedule(histogram)
    results = []
    for n, latency in enumerate(latencies):
        if n and n % refresh_every == 0:
            schedule = PollSchedule(histogram)
        result = run_turn(latency, schedule.next_delay, rtt_s=rtt_s)
        histogram.add(result.low_s, result.high_s)
        results.append(result)
    return PollSchedule(histogram), results


def measure(latencies: list[float], next_delay: NextDelay, *, rtt_s: float) -> Measured:
    return Measured.of([run_turn(latency, next_delay, rtt_s=rtt_s) for latency in latencies])


@dataclass(frozen=True, slots=True)
class Comparison:
    profile: str
    learnt: Measured
    fixed_1s: Measured
    cold: Measured
    today: Measured


def compare(
    profile: LatencyProfile,
    *,
    learn_turns: int = 300,
    measure_turns: int = 500,
    rtt_s: float = 0.05,
    seed: int = 7,
) -> Comparison:
    """Learn from learn_turns, then measure measure_turns (still learning, as in production)
    against the 1 s poller on the same latencies; cold = the empty histogram's schedule."""
    rng = random.Random(seed)
    training = [profile.draw(rng) for _ in range(learn_turns)]
    trial = [profile.draw(rng) for _ in range(measure_turns)]
    histogram = CompletionHistogram.empty()
    _, _ = learn(histogram, training, rtt_s=rtt_s)
    _, results = learn(histogram, trial, rtt_s=rtt_s)
    cold = PollSchedule(CompletionHistogram.empty())
    return Comparison(
        profile=profile.name,
        learnt=Measured.of(results),
        fixed_1s=measure(trial, fixed_poller(1.0), rtt_s=rtt_s),
        cold=measure(trial, cold.next_delay, rtt_s=rtt_s),
        today=measure(trial, today_schedule(), rtt_s=rtt_s),
    )


@dataclass(frozen=True, slots=True)
class ColdStart:
    cold: Measured
    today: Measured


def cold_start(*, turns: int = 1000, low_s: float = 2.0, high_s: float = 20.0, rtt_s: float = 0.05,
               seed: int = 7) -> ColdStart:
    """The empty histogram's schedule against today's (1, 2.5, 4.75, 8.1 s, then every 5 s) on
    bots taking low_s..high_s (uniform), as in the issue's measurement."""
    rng = random.Random(seed)
    latencies = [rng.uniform(low_s, high_s) for _ in range(turns)]
    cold = PollSchedule(CompletionHistogram.empty())
    return ColdStart(
        cold=measure(latencies, cold.next_delay, rtt_s=rtt_s),
        today=measure(latencies, today_schedule(), rtt_s=rtt_s),
    )


PROFILES = (
    LatencyProfile.fixed(0.5),
    LatencyProfile.fixed(2.0),
    LatencyProfile.fixed(7.0),
    LatencyProfile.lognormal(3.0, 12.0),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learn", type=int, default=300)
    parser.add_argument("--measure", type=int, default=1000)
    parser.add_argument("--rtt", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rows: list[dict[str, object]] = [
        asdict(compare(p, learn_turns=args.learn, measure_turns=args.measure, rtt_s=args.rtt, seed=args.seed))
        for p in PROFILES
    ]
    rows.append({"profile": "uniform 2-20 s, no history", **asdict(cold_start(rtt_s=args.rtt, seed=args.seed))})
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
