"""Reply delay and task polls per turn of a poll schedule, by Monte-Carlo simulation (no clock).

A turn: OCS accepts the message at t=0 and completes the task at t=L (the bot's latency). A poll
sent at s reaches OCS at s + rtt/2 and answers at s + rtt; it sees 'complete' when L <= s + rtt/2.
The reply delay is the answer time of that poll minus L. The learning schedule records each turn
as an interval (when OCS answered the last 'processing' poll, when it answered 'complete'], each
estimated as midway between sending the poll and reading its answer, narrowed by OCS's stamps
(``Stamps``: clock skew, HTTP Date, absurd stamps), and is re-planned as the runner's
``ScheduleCache`` does (``Learner``).

    python bench/poll_sim.py            # the profiles below, 50 ms round trip, JSON out

Each profile is learnt as the runner learns it now (OCS's ``created_at`` read through the clock
offset its HTTP Dates bound, ``workers/server_clock.py``); the fast bot also from polls alone, as
before, to show what that cost. Against it: the 1 s widget, a 50 ms poller, and the offline-optimal
plan (the planner on the true distribution) at the widget's polls and at the learnt plan's.

Used by tests/workers/test_poll_schedule.py (seeded, deterministic) and as the benchmark.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.poll_schedule import (
    HALF_LIFE_OBSERVATIONS,
    LEARNING_OBSERVATIONS,
    STAMPS_KEPT,
    CompletionHistogram,
    PollSchedule,
    Stamped,
    materially_different,
)
from workers.server_clock import ServerClock, completion_interval, stamped_histogram

__all__ = [
    "ColdStart",
    "Comparison",
    "LatencyProfile",
    "Learner",
    "Measured",
    "NextDelay",
    "POLLS_ONLY",
    "PROFILES",
    "STAMPED",
    "Stamps",
    "TurnResult",
    "cold_start",
    "compare",
    "fixed_poller",
    "learn",
    "measure",
    "oracle_at_polls",
    "oracle_schedule",
    "run_turn",
    "today_schedule",
]

#: next_delay(elapsed_s, polls_so_far) -> seconds until the next poll
NextDelay = Callable[[float, int], float]
_Z95 = 1.6448536269514722


@dataclass(frozen=True, slots=True)
class LatencyProfile:
    """A bot latency distribution: fixed, lognormal (median, p95) or uniform (low, high)."""

    name: str
    median_s: float
    p95_s: float
    uniform: bool = False

    @classmethod
    def fixed(cls, seconds: float) -> LatencyProfile:
        return cls(f"fixed {seconds:g} s", seconds, seconds)

    @classmethod
    def lognormal(cls, median_s: float, p95_s: float) -> LatencyProfile:
        return cls(f"lognormal {median_s:g}/{p95_s:g} s", median_s, p95_s)

    @classmethod
    def between(cls, low_s: float, high_s: float) -> LatencyProfile:
        """Uniform in [low_s, high_s] (``median_s``/``p95_s`` hold the bounds)."""
        return cls(f"uniform {low_s:g}-{high_s:g} s", low_s, high_s, uniform=True)

    def draw(self, rng: random.Random) -> float:
        if self.uniform:
            return rng.uniform(self.median_s, self.p95_s)
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
    #: the bot's latency (OCS finished at this time after accepting)
    latency_s: float = 0.0
    #: when OCS looked, for every poll of the turn (the last one saw it complete)
    looks: tuple[float, ...] = ()

    @property
    def wait_s(self) -> float:
        """What the user waited: from OCS accepting the message to the answer reaching us."""
        return self.latency_s + self.delay_s


def run_turn(latency_s: float, next_delay: NextDelay, *, rtt_s: float, max_polls: int = 10_000) -> TurnResult:
    elapsed, polls, last_seen = 0.0, 0, 0.0
    looks: list[float] = []
    while polls < max_polls:
        send = elapsed + next_delay(elapsed, polls)
        polls += 1
        answer = send + rtt_s
        looks.append(send + rtt_s / 2)
        if latency_s <= send + rtt_s / 2:
            return TurnResult(polls, answer - latency_s, last_seen, send + rtt_s / 2, latency_s, tuple(looks))
        last_seen, elapsed = send + rtt_s / 2, answer
    raise RuntimeError(f"no poll saw a {latency_s:.3f} s task complete in {max_polls} polls")


@dataclass(frozen=True, slots=True)
class Stamps:
    """What OCS's answers carry, as the runner reads them (``workers/server_clock.py``): its clock
    runs ``skew_s`` ahead of ours; ``dates``: every answer has an HTTP Date (whole seconds);
    ``created_at``: the reply carries its stamp, of which a share ``absurd`` is nonsense
    (``absurd_by_s`` off), as an unsaved early-exit copy or a broken clock would be."""

    skew_s: float = 0.0
    dates: bool = True
    created_at: bool = True
    absurd: float = 0.0
    absurd_by_s: float = -3600.0


#: What the runner reads from OCS (HTTP Date and the reply's created_at, clocks in agreement).
STAMPED = Stamps()
#: Polls alone: the interval learning as it was before the timestamps.
POLLS_ONLY = Stamps(dates=False, created_at=False)


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
    #: from OCS accepting the message to the answer reaching us (latency + delay)
    wait_p50_s: float = 0.0
    wait_mean_s: float = 0.0

    @classmethod
    def of(cls, results: list[TurnResult]) -> Measured:
        delays = sorted(r.delay_s for r in results)
        waits = sorted(r.wait_s for r in results)
        return cls(
            polls_per_turn=sum(r.polls for r in results) / len(results),
            delay_p50_s=_quantile(delays, 0.50),
            delay_p95_s=_quantile(delays, 0.95),
            delay_mean_s=statistics.fmean(delays),
            wait_p50_s=_quantile(waits, 0.50),
            wait_mean_s=statistics.fmean(waits),
        )


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class Learner:
    """The runner's learning as ``workers/schedules.py`` and ``workers/turns.py`` do it, without
    Redis or a clock: one bot's histogram, its stamped completions, its OCS clock, and the
    schedule in use, re-planned after every completion while the bot is young, then every
    ``refresh_every`` turns, and only when what it plans from changed materially."""

    histogram: CompletionHistogram
    stamps: Stamps = STAMPED
    rtt_s: float = 0.05
    refresh_every: int = 25
    seed: int = 0
    plans_built: int = 0
    plans_reused: int = 0
    plan_s: float = 0.0

    def __post_init__(self) -> None:
        self.clock = ServerClock()
        self._rng = random.Random(self.seed)
        self._now = 1_700_000_000.0 + self._rng.random()
        self._stamped: deque[tuple[int, float, float, float]] = deque(maxlen=STAMPS_KEPT)
        self._recorded = 0
        self._planned_from = CompletionHistogram(self.histogram.counts)
        self.schedule = self._plan(self.histogram)
        self._since = 0

    def _plan(self, histogram: CompletionHistogram) -> PollSchedule:
        started = time.perf_counter()
        schedule = PollSchedule(histogram, lead_s=self.rtt_s / 2)
        self.plan_s += time.perf_counter() - started
        self.plans_built += 1
        return schedule

    def planning_histogram(self) -> CompletionHistogram:
        """What the schedule is planned from (``ScheduleCache._load``)."""
        if not self._stamped:
            return self.histogram
        n = self._recorded
        stamped = [Stamped(y, low, high, 2.0 ** ((at - n) / HALF_LIFE_OBSERVATIONS)) for at, y, low, high in self._stamped]
        return stamped_histogram(stamped, self.clock.window())

    def turn(self, latency_s: float) -> TurnResult:
        young = self._planned_from.total < LEARNING_OBSERVATIONS
        if self._since >= (1 if young else self.refresh_every):
            self._since = 0
            histogram = self.planning_histogram()
            if materially_different(histogram, self._planned_from):
                self._planned_from = histogram
                self.schedule = self._plan(histogram)
            else:
                self.plans_reused += 1
        result = run_turn(latency_s, self.schedule.next_delay, rtt_s=self.rtt_s)
        self.histogram.add(*self.observed(result))
        self._recorded += 1
        self._since += 1
        self._now += result.high_s + self._rng.uniform(0.5, 3.0)  # the next turn, some time later
        return result

    def observed(self, result: TurnResult) -> tuple[float, float]:
        """The interval the runner learns from this turn (the stamps read as it reads them)."""
        stamps, sent_at = self.stamps, self._now
        if stamps.dates:
            for look in result.looks:
                self.clock.saw_date(math.floor(sent_at + look + stamps.skew_s), sent_at + look)
        stamp = None
        if stamps.created_at:
            stamp = sent_at + result.latency_s + stamps.skew_s
            if self._rng.random() < stamps.absurd:
                stamp += stamps.absurd_by_s
            if not self.clock.saw_completion(stamp, sending_at=sent_at - self.rtt_s / 2, looked_at=sent_at + result.high_s):
                stamp = None
        low, high = completion_interval(
            result.low_s, result.high_s, created_at_s=stamp, sent_at=sent_at, window=self.clock.window()
        )
        if stamp is not None:
            self._stamped.append((self._recorded + 1, stamp - sent_at, result.low_s, result.high_s))
        return low, high


def learn(
    histogram: CompletionHistogram,
    latencies: list[float],
    *,
    rtt_s: float,
    refresh_every: int = 25,
    stamps: Stamps = STAMPED,
    seed: int = 0,
) -> tuple[PollSchedule, list[TurnResult]]:
    """Run turns under the learning schedule, recording each into histogram (mutated)."""
    learner = Learner(histogram, stamps, rtt_s, refresh_every, seed)
    results = [learner.turn(latency) for latency in latencies]
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
    #: a client polling every 50 ms: the delay floor, at many polls
    fixed_50ms: Measured | None = None
    #: the offline-optimal plan: the same planner on the true latency distribution
    oracle: Measured | None = None
    #: the same, at no more polls per turn than the learnt schedule made
    oracle_same_polls: Measured | None = None
    #: the first turns of a bot with no history, learning as they go (``first_turns`` of them)
    first: Measured | None = None
    first_fixed_1s: Measured | None = None


def oracle_schedule(
    profile: LatencyProfile, *, seed: int = 99, draws: int = 2000, lead_s: float = 0.0, poll_budget: float | None = None
) -> PollSchedule:
    """The offline-optimal plan: the planner's, knowing the bot's latency distribution exactly
    (at ``poll_budget`` expected polls, or the widget's)."""
    rng = random.Random(seed)
    histogram = CompletionHistogram.empty()
    for _ in range(draws):
        latency = profile.draw(rng)
        histogram.add(latency, latency)
    return PollSchedule(histogram, lead_s=lead_s, poll_budget=poll_budget)


def oracle_at_polls(profile: LatencyProfile, latencies: list[float], polls: float, *, rtt_s: float) -> Measured:
    """The offline-optimal plan at the polls per turn ``polls`` (its budget bisected to match)."""
    low, high = 1.0, max(polls * 2.0, 2.0)
    best = measure(latencies, oracle_schedule(profile, lead_s=rtt_s / 2, poll_budget=low).next_delay, rtt_s=rtt_s)
    for _ in range(10):
        middle = (low + high) / 2
        got = measure(latencies, oracle_schedule(profile, lead_s=rtt_s / 2, poll_budget=middle).next_delay, rtt_s=rtt_s)
        if got.polls_per_turn <= polls:
            best, low = got, middle
        else:
            high = middle
    return best


def compare(
    profile: LatencyProfile,
    *,
    learn_turns: int = 300,
    measure_turns: int = 500,
    rtt_s: float = 0.05,
    seed: int = 7,
    stamps: Stamps = STAMPED,
    first_turns: int = 25,
    same_polls: bool = False,
) -> Comparison:
    """Learn from learn_turns, then measure measure_turns (still learning, as in production)
    against the 1 s poller on the same latencies; cold = the empty histogram's schedule; first
    = the first ``first_turns`` of the learning."""
    rng = random.Random(seed)
    training = [profile.draw(rng) for _ in range(learn_turns)]
    trial = [profile.draw(rng) for _ in range(measure_turns)]
    histogram = CompletionHistogram.empty()
    learner = Learner(histogram, stamps, rtt_s, seed=seed)
    warm = [learner.turn(latency) for latency in training]
    results = [learner.turn(latency) for latency in trial]
    cold = PollSchedule(CompletionHistogram.empty())
    first = warm[:first_turns]
    learnt = Measured.of(results)
    return Comparison(
        profile=profile.name,
        learnt=learnt,
        fixed_1s=measure(trial, fixed_poller(1.0), rtt_s=rtt_s),
        cold=measure(trial, cold.next_delay, rtt_s=rtt_s),
        today=measure(trial, today_schedule(), rtt_s=rtt_s),
        oracle_same_polls=oracle_at_polls(profile, trial, learnt.polls_per_turn, rtt_s=rtt_s) if same_polls else None,
        fixed_50ms=measure(trial, fixed_poller(0.05), rtt_s=rtt_s),
        oracle=measure(trial, oracle_schedule(profile, lead_s=rtt_s / 2).next_delay, rtt_s=rtt_s),
        first=Measured.of(first) if first else None,
        first_fixed_1s=measure(training[:first_turns], fixed_poller(1.0), rtt_s=rtt_s) if first else None,
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
    LatencyProfile.between(0.2, 0.3),
    LatencyProfile.lognormal(1.0, 4.0),
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
        {"stamps": "polls only", **asdict(compare(PROFILES[0], learn_turns=args.learn, measure_turns=args.measure,
                                                  rtt_s=args.rtt, seed=args.seed, stamps=POLLS_ONLY))},
        *({"stamps": "created_at + Date", **asdict(compare(p, learn_turns=args.learn, measure_turns=args.measure,
                                                           rtt_s=args.rtt, seed=args.seed, same_polls=True))}
          for p in PROFILES),
    ]
    rows.append({"profile": "uniform 2-20 s, no history", **asdict(cold_start(rtt_s=args.rtt, seed=args.seed))})
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
