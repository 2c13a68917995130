"""When to poll OCS for a turn's reply: a schedule planned from what the bot's latency has been.

Each bot keeps a ``CompletionHistogram`` of how long OCS took from "send accepted" to "task
complete" (log-spaced buckets, 0.05 s to 600 s). A poll only tells us that the reply became ready
somewhere between the last poll that saw ``processing`` and the one that saw ``complete``, so an
observation is an interval, and its weight goes to the buckets it overlaps in proportion to the
mass they already hold (one EM step on interval-censored data: repeated turns sharpen the picture
without ever seeing an exact time), half of it spread evenly over the buckets the interval covers
whole, which smooths the lumps pure EM makes and keeps stale mass from capturing new evidence.
Counts decay by half every ``HALF_LIFE_OBSERVATIONS`` turns, so a bot whose latency changes is
followed within a few dozen turns. ``HistogramStore`` keeps the counts in one Redis hash per bot,
shared by every process; the decay is "forward" (each record weighs 2**(n/half-life) more than the
first), so a record is one script call and never rewrites the other buckets.

``PollSchedule`` turns a histogram into a fixed list of poll times: given that a turn is still
``processing``, nothing new is learnt until the next poll, so the best policy is a plan, found by
dynamic programming over a time grid. It minimises expected reply delay + c * expected polls, with
the learnt distribution mixed with a broad prior (so a bot that is slower than ever before is
still polled on a gentle ramp); c is the smallest price whose plan makes no more polls, on the
learnt distribution (stretched by 1/n: n completions seen understate the slowest), than OCS's own
widget (a fixed 1 s poller) would. The plan is therefore dense where a reply is likely and sparse
where it is not. With no history the same rule runs on the prior alone, its k-th poll no sooner
than the widget's (k s): a new bot's first turns never poll more than the widget would.

Where OCS stamps its replies, the plan is built from those stamps instead (``Stamped``, read
through the clock offset by ``workers/server_clock.py``): completion times nearly exact, not
intervals that confirm the plan that made them.

Build one ``PollSchedule`` per histogram refresh and share it between turns: planning costs ~13 ms
of CPU (14 dynamic programmes of a few thousand steps; ``workers/schedules.py`` runs it in a
thread, and only on a material change); ``next_delay`` is a bisection.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway.core.keys import Keys, as_text
from gateway.store.lua import LuaScript

__all__ = [
    "BUCKET_EDGES_S",
    "CompletionHistogram",
    "HALF_LIFE_OBSERVATIONS",
    "HistogramStore",
    "LEARNING_OBSERVATIONS",
    "Learnt",
    "PollSchedule",
    "STAMPS_KEPT",
    "Stamped",
    "materially_different",
]

#: Buckets: (0, 0.05], then log-spaced up to 600 s (ratio ~1.05). A fast bot's one poll lands
#: at the top of its last bucket: at 10 % buckets that alone cost a 0.3 s bot 10 % of its wait.
_LOG_BUCKETS = 192
_LOW_S = 0.05
_HIGH_S = 600.0
BUCKET_EDGES_S: tuple[float, ...] = (
    0.0, *(_LOW_S * (_HIGH_S / _LOW_S) ** (k / _LOG_BUCKETS) for k in range(_LOG_BUCKETS + 1))
)
_N = len(BUCKET_EDGES_S) - 1
#: Counts halve every this many observations (count-based: a quiet bot keeps what it learnt).
HALF_LIFE_OBSERVATIONS = 100.0
_DECAY = 2.0 ** (-1.0 / HALF_LIFE_OBSERVATIONS)
#: Share of an observation spread evenly (in time) over its interval rather than by current mass.
_UNIFORM_SHARE = 0.5
_WHOLE = 1.0 - 1e-9
#: Weight, in observations, of the prior the plan mixes in (what a new bot is assumed to be).
_PRIOR_WEIGHT = 2.0
#: The prior: lognormal, median 2 s, most bots between 0.3 s and 15 s.
_PRIOR_MEDIAN_S = 2.0
_PRIOR_SIGMA = 1.2
#: The widget's poll at k s is taken to see completions up to k + this (its request reaches OCS
#: a little after it leaves): a small margin so our budget is never the more generous one.
_BUDGET_LEEWAY_S = 0.05
#: Below this many (decayed) observations a bot is young: its schedule is rebuilt after each
#: completion it learns (``workers/schedules.py``). Young bots get no extra polls: OCS's own
#: timestamps (``workers/server_clock.py``) teach as much from one poll as narrow intervals did.
LEARNING_OBSERVATIONS = 10.0
#: The widget's poll interval: a bot with no history is never polled more often than this.
_WIDGET_S = 1.0
#: Two histograms this close (total variation of the normalised counts) plan the same: the
#: schedule already built serves on, and the dynamic programme is not run again.
_MATERIAL_CHANGE = 0.02
#: Never plan past this; later the schedule polls every max_gap_s.
_HORIZON_S = 180.0


def _overlaps(low_s: float, high_s: float) -> list[tuple[int, float, float]]:
    """Buckets meeting (low, high] as (index, fraction of the bucket covered, share of the
    interval's length): pure geometry, shared by the in-memory and the Redis paths."""
    low = min(max(low_s, 0.0), _HIGH_S)
    high = min(max(high_s, low + 1e-6), _HIGH_S + 1e-6)
    length = high - low
    out: list[tuple[int, float, float]] = []
    first = max(bisect.bisect_right(BUCKET_EDGES_S, low) - 1, 0)
    for i in range(first, _N):
        lo, hi = BUCKET_EDGES_S[i], BUCKET_EDGES_S[i + 1]
        if lo >= high:
            break
        covered = min(high, hi) - max(low, lo)
        if covered > 0:
            out.append((i, covered / (hi - lo), covered / length))
    if not out:  # beyond the last edge: everything lands in the last bucket
        out.append((_N - 1, 1.0, 1.0))
    return out


def _shares(counts: Sequence[float], overlaps: list[tuple[int, float, float]]) -> list[float]:
    """How one observation splits over the buckets it overlaps: by the mass they hold, plus a
    uniform part over the buckets it covers whole (smooths the lumps pure EM makes, and never
    lends mass to a bucket the interval only grazes, which would creep the support upwards)."""
    held = [counts[i] * frac for i, frac, _ in overlaps]
    total = sum(held)
    if total <= 1e-12:
        return [lin for _, _, lin in overlaps]
    whole = [lin if frac >= _WHOLE else 0.0 for _, frac, lin in overlaps]
    spread = sum(whole)
    if spread <= 0:
        return [h / total for h in held]
    return [(1 - _UNIFORM_SHARE) * h / total + _UNIFORM_SHARE * w / spread for h, w in zip(held, whole)]


class CompletionHistogram:
    """Per bot: how long OCS took from "send accepted" to "task complete", as decayed counts in
    log-spaced buckets (``BUCKET_EDGES_S``); the density is taken as uniform inside a bucket."""

    __slots__ = ("_counts",)

    def __init__(self, counts: Sequence[float]) -> None:
        if len(counts) != _N:
            raise ValueError(f"a histogram has {_N} buckets, not {len(counts)}")
        self._counts = [max(float(c), 0.0) for c in counts]

    @classmethod
    def empty(cls) -> CompletionHistogram:
        return cls([0.0] * _N)

    @property
    def counts(self) -> tuple[float, ...]:
        return tuple(self._counts)

    @property
    def total(self) -> float:
        """Decayed number of observations (tends to ~1.44 half-lives' worth for a steady bot)."""
        return sum(self._counts)

    def add(self, low_s: float, high_s: float, *, weight: float = 1.0, decay: bool = True) -> None:
        """Completion happened in (low, high]: the previous poll saw 'processing' at low (0 if
        none), this one 'complete' at high, both measured from when OCS accepted the message.
        "Saw at" is best estimated as midway between sending the poll and reading its answer.
        ``weight``/``decay``: a new observation counts 1 and decays the rest; the stamped
        completions replayed by ``server_clock.stamped_histogram`` carry their own decay."""
        overlaps = _overlaps(low_s, high_s)
        shares = _shares(self._counts, overlaps)
        if decay:
            self._counts = [c * _DECAY for c in self._counts]
        for (i, _, _), share in zip(overlaps, shares):
            self._counts[i] += share * weight

    def cdf(self, t_s: float) -> float:
        total = self.total
        return _cdf(self._counts, t_s) / total if total > 0 else 0.0

    def quantile(self, q: float) -> float | None:
        total = self.total
        if total <= 0:
            return None
        target = min(max(q, 0.0), 1.0) * total
        running = 0.0
        for i, count in enumerate(self._counts):
            if count > 0 and running + count >= target:
                lo, hi = BUCKET_EDGES_S[i], BUCKET_EDGES_S[i + 1]
                return lo + (hi - lo) * (target - running) / count
            running += count
        return BUCKET_EDGES_S[-1]


def _cdf(counts: Sequence[float], t_s: float) -> float:
    """Unnormalised mass at or below t."""
    k = bisect.bisect_right(BUCKET_EDGES_S, t_s) - 1
    if k >= _N:
        return sum(counts)
    lo, hi = BUCKET_EDGES_S[k], BUCKET_EDGES_S[k + 1]
    return sum(counts[:k]) + counts[k] * (t_s - lo) / (hi - lo)


# Redis: fields "n" (observations recorded, drives the forward decay), "c<i>" (raw counts; the
# 96-bucket layout before them was "b<i>", left to expire: a bot relearns in a few turns) and
# "s<k>" (the last STAMPS_KEPT stamped completions, a ring: "y low high n", see ``Stamped``).
# ARGV: half-life, uniform share, ttl_s, ring size, the stamp ("" for none), then triples
# (bucket, fraction covered, share of length).
_RECORD_LUA = LuaScript("""
local half, uni, ttl, ring = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 's' .. (n % ring), ARGV[5] .. ' ' .. n) end
local idx, frac, lin, fields = {}, {}, {}, {}
for a = 6, #ARGV, 3 do
  idx[#idx + 1] = ARGV[a]; frac[#frac + 1] = tonumber(ARGV[a + 1]); lin[#lin + 1] = tonumber(ARGV[a + 2])
  fields[#fields + 1] = 'c' .. ARGV[a]
end
local held = redis.call('HMGET', KEYS[1], unpack(fields))
local before = 2 ^ ((n - 1) / half)
local total, spread, whole = 0, 0, {}
for k = 1, #held do
  held[k] = (tonumber(held[k]) or 0) / before * frac[k]; total = total + held[k]
  whole[k] = 0
  if frac[k] >= 1 - 1e-9 then whole[k] = lin[k]; spread = spread + lin[k] end
end
local weight = 2 ^ (n / half)
for k = 1, #idx do
  local share = lin[k]
  if total > 1e-12 then
    if spread > 0 then share = (1 - uni) * held[k] / total + uni * whole[k] / spread
    else share = held[k] / total end
  end
  if share > 0 then redis.call('HINCRBYFLOAT', KEYS[1], fields[k], share * weight) end
end
if n >= 40 * half then  -- rescale before the weights grow out of float range
  local all = redis.call('HGETALL', KEYS[1])
  for k = 1, #all, 2 do
    if string.sub(all[k], 1, 1) == 'c' then redis.call('HSET', KEYS[1], all[k], tostring(tonumber(all[k + 1]) / weight)) end
  end
  redis.call('HSET', KEYS[1], 'n', 0)
  for k = 0, ring - 1 do redis.call('HDEL', KEYS[1], 's' .. k) end  -- their ages restart with n
end
redis.call('EXPIRE', KEYS[1], ttl)
return n
""")

#: A bot not heard of for this long starts again from the prior.
_HISTOGRAM_TTL_S = 30 * 24 * 3600


#: Stamped completions kept per bot (about what the decayed histogram holds of a steady bot).
STAMPS_KEPT = 144


@dataclass(frozen=True, slots=True)
class Stamped:
    """One completion as OCS stamped it: ``y_s`` = its ``created_at`` (OCS's clock) minus our
    ``sent_at``, which is the completion time plus the clocks' offset, so it can be read again
    whenever the offset is better known; ``low_s``/``high_s``: what the polls saw (the clamp);
    ``weight``: its decay, as in the histogram."""

    y_s: float
    low_s: float
    high_s: float
    weight: float


@dataclass(frozen=True, slots=True)
class Learnt:
    """A bot's learnt completion times: the histogram (polls' intervals, narrowed when they were
    recorded) and the recent stamped completions, oldest first."""

    histogram: CompletionHistogram
    stamped: tuple[Stamped, ...] = ()


class HistogramStore:
    """The per-bot histograms in Redis (``latency:{bot}``), shared by every worker process."""

    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys

    async def record(self, bot: str, low_s: float, high_s: float, *, stamped: tuple[float, float, float] | None = None) -> None:
        """One observation, in one round trip (the script decays, shares and increments);
        ``stamped``: (y, low, high) of a completion OCS stamped (``Stamped``)."""
        stamp = "" if stamped is None else " ".join(repr(float(v)) for v in stamped)
        args: list[float | str] = [HALF_LIFE_OBSERVATIONS, _UNIFORM_SHARE, _HISTOGRAM_TTL_S, STAMPS_KEPT, stamp]
        for i, frac, lin in _overlaps(low_s, high_s):
            args.extend((i, frac, lin))  # redis-py sends floats as repr(): exact
        await _RECORD_LUA(self._redis, [self._keys.latency(bot)], args)

    async def load(self, bot: str) -> CompletionHistogram:
        return (await self.load_learnt(bot)).histogram

    async def load_learnt(self, bot: str) -> Learnt:
        raw = await self._redis.hgetall(self._keys.latency(bot))
        fields = {as_text(k): as_text(v) for k, v in raw.items()}
        n = float(fields.get("n", 0.0))
        scale = 2.0 ** (-n / HALF_LIFE_OBSERVATIONS)
        histogram = CompletionHistogram([float(fields.get(f"c{i}", 0.0)) * scale for i in range(_N)])
        stamped: list[tuple[float, Stamped]] = []
        for name, value in fields.items():
            if not name.startswith("s"):
                continue
            try:
                y, low, high, at = (float(part) for part in value.split())
            except ValueError:
                continue  # not ours: skipped, never fatal
            if all(math.isfinite(v) for v in (y, low, high)) and at <= n:
                stamped.append((at, Stamped(y, low, high, 2.0 ** ((at - n) / HALF_LIFE_OBSERVATIONS))))
        stamped.sort(key=lambda item: item[0])
        return Learnt(histogram, tuple(item for _, item in stamped))


def _prior_counts() -> list[float]:
    def lognormal_cdf(t: float) -> float:
        if t <= 0:
            return 0.0
        return 0.5 * (1 + math.erf(math.log(t / _PRIOR_MEDIAN_S) / (_PRIOR_SIGMA * math.sqrt(2))))

    counts = [lognormal_cdf(BUCKET_EDGES_S[i + 1]) - lognormal_cdf(BUCKET_EDGES_S[i]) for i in range(_N)]
    counts[-1] += 1.0 - sum(counts)
    return counts


_PRIOR = _prior_counts()


@dataclass(frozen=True, slots=True)
class _Grid:
    """Candidate poll times with the mixed distribution's cdf F and partial mean M (∫ x dF) at
    each, and the learnt distribution's survival for counting polls."""

    times: list[float]
    cdf: list[float]
    mean: list[float]
    survival: list[float]


def _grid(mixed: Sequence[float], learnt: Sequence[float], min_gap_s: float, horizon_s: float, stretch: float) -> _Grid:
    m_total, l_total = sum(mixed), sum(learnt)
    times = [0.0]
    t = min_gap_s
    while t < horizon_s:
        times.append(t)
        # fine where delays are short (a fast bot's one poll is worth placing to ~5 ms: 1.5 % of
        # t below 1 s), ~3 % of t above, at most 0.5 s apart
        t += min(max((0.015 if t < 1.0 else 0.03) * t, 0.005), 0.5)
    times.append(horizon_s)
    below, moment = [0.0], [0.0]  # mass and first moment below each edge
    for i, c in enumerate(mixed):
        below.append(below[-1] + c)
        moment.append(moment[-1] + c * (BUCKET_EDGES_S[i] + BUCKET_EDGES_S[i + 1]) / 2)
    learnt_below = [0.0]
    for c in learnt:
        learnt_below.append(learnt_below[-1] + c)
    cdf, mean, survival = [], [], []
    for t in times:
        k = min(bisect.bisect_right(BUCKET_EDGES_S, t) - 1, _N - 1)
        lo, hi = BUCKET_EDGES_S[k], BUCKET_EDGES_S[k + 1]
        part = min((t - lo) / (hi - lo), 1.0)
        cdf.append((below[k] + mixed[k] * part) / m_total)
        mean.append((moment[k] + mixed[k] * part * (lo + t) / 2) / m_total)
        u = t / stretch
        k = min(bisect.bisect_right(BUCKET_EDGES_S, u) - 1, _N - 1)
        lo, hi = BUCKET_EDGES_S[k], BUCKET_EDGES_S[k + 1]
        seen = learnt_below[k] + learnt[k] * min((u - lo) / (hi - lo), 1.0)
        survival.append(max(1.0 - seen / l_total, 0.0))
    return _Grid(times, cdf, mean, survival)


def _solve(grid: _Grid, price: float, min_gap_s: float, max_gap_s: float) -> list[int]:
    """The plan (grid indices) minimising E[delay] + price * E[polls] on the mixed distribution.

    W[i] = cost from "last poll at times[i] saw processing", unnormalised by survival:
    W[i] = min_j price*S[i] + E[(t_j - X); t_i < X <= t_j] + W[j]."""
    times, cdf, mean = grid.times, grid.cdf, grid.mean
    n = len(times) - 1
    cost = [0.0] * (n + 1)
    nxt = [n] * (n + 1)
    anchor = [0.0] * (n + 1)  # t_j*F_j - M_j + W_j: the part of the cost that depends on j only
    anchor[n] = times[n] * cdf[n] - mean[n]
    lo_j = hi_j = n
    for i in range(n - 1, -1, -1):
        t_i = times[i]
        while lo_j - 1 > i and times[lo_j - 1] - t_i >= min_gap_s:
            lo_j -= 1
        while hi_j > lo_j and times[hi_j] - t_i > max_gap_s:
            hi_j -= 1
        f_i = cdf[i]
        best, best_j = math.inf, n
        for j in range(max(lo_j, i + 1), hi_j + 1):
            value = anchor[j] - times[j] * f_i
            if value < best:
                best, best_j = value, j
        cost[i] = best + mean[i] + price * (1.0 - f_i)
        nxt[i] = best_j
        anchor[i] = t_i * f_i - mean[i] + cost[i]
    plan, i = [], 0
    while i < n:
        i = nxt[i]
        plan.append(i)
    return plan


def _expected_polls(grid: _Grid, plan: list[int]) -> float:
    polls, previous = 0.0, 1.0
    for j in plan:
        polls += previous
        previous = grid.survival[j]
    return polls


def _fixed_poller_polls(learnt: Sequence[float], stretch: float) -> float:
    """Expected polls of OCS's widget (first at 1 s, then every 1 s) on the learnt latencies."""
    total = sum(learnt)
    polls, k = 1.0, 1
    while k < _HORIZON_S:
        above = 1.0 - _cdf(learnt, (k + _BUDGET_LEEWAY_S) / stretch) / total
        if above <= 1e-9:
            break
        polls += above
        k += 1
    return polls


def _plan_times(
    histogram: CompletionHistogram, min_gap_s: float, max_gap_s: float, poll_budget: float | None = None
) -> list[float]:
    learnt = list(histogram.counts)
    if sum(learnt) <= 1e-9:  # cold start: the prior is all we know
        learnt = list(_PRIOR)
        mixed = list(_PRIOR)
    else:
        mixed = [c + _PRIOR_WEIGHT * p for c, p in zip(learnt, _PRIOR)]
    # plan until the mixed distribution is nearly exhausted; later polls every max_gap_s
    horizon, running, m_total = _HORIZON_S, 0.0, sum(mixed)
    for i, c in enumerate(mixed):
        running += c
        if running >= 0.999 * m_total:
            horizon = min(_HORIZON_S, max(BUCKET_EDGES_S[i + 1], 2 * max_gap_s))
            break
    # A few completions understate a bot's slowest: the next of n draws exceeds all of them one
    # time in n+1. Polls are counted as if it could be 1/n slower than seen (a young bot's plan
    # then spends no more than the widget's on the turns still to come; ~1 % once learnt).
    total = histogram.total
    stretch = 1.0 + 1.0 / total if total > 1e-9 else 1.0
    grid = _grid(mixed, learnt, min_gap_s, horizon, stretch)
    budget = _fixed_poller_polls(learnt, stretch) if poll_budget is None else poll_budget
    low, high = math.log(1e-4), math.log(1e3)
    best = _solve(grid, math.exp(high), min_gap_s, max_gap_s)
    for _ in range(14):  # the smallest price whose plan stays within the widget's polls
        middle = (low + high) / 2
        plan = _solve(grid, math.exp(middle), min_gap_s, max_gap_s)
        if _expected_polls(grid, plan) <= budget:
            best, high = plan, middle
        else:
            low = middle
    times = [grid.times[j] for j in best]
    if histogram.total <= 1e-9:
        times = _no_faster_than_widget(times, min_gap_s)
    return times


def _no_faster_than_widget(times: list[float], min_gap_s: float) -> list[float]:
    """A bot with no history: its k-th poll no sooner than the widget's (k s), so whatever the
    bot's latency, its first turns never poll more than the widget would."""
    out: list[float] = []
    for k, t in enumerate(times, start=1):
        at = max(t, k * _WIDGET_S, (out[-1] + min_gap_s) if out else 0.0)
        out.append(at)
    return out


def materially_different(a: CompletionHistogram, b: CompletionHistogram) -> bool:
    """Whether a plan built on ``a`` could differ from one built on ``b``: their shapes differ by
    more than ``_MATERIAL_CHANGE``, or one is empty, or one is young and the other not."""
    ta, tb = a.total, b.total
    if (ta <= 1e-9) != (tb <= 1e-9) or (ta < LEARNING_OBSERVATIONS) != (tb < LEARNING_OBSERVATIONS):
        return True
    if ta <= 1e-9:
        return False
    distance = 0.5 * sum(abs(x / ta - y / tb) for x, y in zip(a.counts, b.counts))
    return distance > _MATERIAL_CHANGE


class PollSchedule:
    """When to poll a turn's task next, planned once from a bot's histogram.

    Parameters:
        histogram: the bot's completion times (empty: the cold-start ramp).
        min_gap_s / max_gap_s: bounds on the wait between two polls of one turn.
        lead_s: how long before OCS looks at a poll it is sent (half the round trip: the
            histogram holds when OCS looked): each poll leaves this much before its planned time.
        poll_budget: expected polls per turn to plan for; None (production): as many as the
            widget would make on these latencies. Benchmarks set it to compare plans at equal polls.
    """

    __slots__ = ("_max_gap_s", "_min_gap_s", "_times")

    def __init__(
        self,
        histogram: CompletionHistogram,
        *,
        min_gap_s: float = 0.1,
        max_gap_s: float = 5.0,
        lead_s: float = 0.0,
        poll_budget: float | None = None,
    ) -> None:
        if not 0 < min_gap_s <= max_gap_s:
            raise ValueError("need 0 < min_gap_s <= max_gap_s")
        self._min_gap_s = min_gap_s
        self._max_gap_s = max_gap_s
        lead = min(max(lead_s, 0.0), 1.0)
        self._times = [max(t - lead, 0.0) for t in _plan_times(histogram, min_gap_s, max_gap_s, poll_budget)]

    @property
    def planned_s(self) -> tuple[float, ...]:
        """When each planned poll is sent, in seconds after OCS accepted the message."""
        return tuple(self._times)

    def next_delay(self, elapsed_s: float, polls_so_far: int) -> float:
        """Seconds from now until the next task poll; elapsed_s is the time since OCS accepted
        the message, polls_so_far the polls of this turn already answered 'processing'."""
        earliest = elapsed_s + (self._min_gap_s if polls_so_far > 0 else 0.0)
        k = bisect.bisect_left(self._times, earliest)
        if k < len(self._times):
            return max(self._times[k] - elapsed_s, self._min_gap_s if polls_so_far > 0 else 0.0)
        # past the plan: every max_gap_s from its last poll
        last = self._times[-1] if self._times else 0.0
        steps = math.floor((earliest - last) / self._max_gap_s) + 1
        return max(last + steps * self._max_gap_s - elapsed_s, self._min_gap_s)
