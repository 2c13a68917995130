"""Reply delays across every worker process, for the console's p50/p95 over 5 and 60 minutes.
Two series, both ending when the first part of the answer went out:

- ``reply``: from when OCS had the answer (as the task polls saw it) — the gateway's own delay,
  the same measure as the ``ocsgw_reply_delay_seconds`` metric;
- ``wait``: from when the edge took the user's message — how long the user waited, OCS included.

Each minute has one Redis hash, ``reply_delay:{minute}``, of log-spaced histogram bins per series
(field ``{series}:{i}``; bin ``i`` holds delays up to ``BASE_S * GROWTH**i``), kept a little over
an hour. Recording a turn's samples is one pipeline (HINCRBY per series + EXPIRE); reading the
last 5 or 60 minutes sums the bins of those minutes, so percentiles come out for the whole fleet,
not one process. A percentile is reported as the upper edge of its bin: at most ``GROWTH`` (15 %)
above the true value, never below.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway.core.keys import Keys, as_text
from gateway.store.lease import Op

__all__ = ["DelayStats", "SERIES", "bin_of", "bin_upper_s", "delay_ops", "read_delays", "record_delays"]

#: The series a turn may record (see the module docstring).
SERIES = ("reply", "wait")

#: The first bin's upper edge and the ratio between consecutive edges.
BASE_S = 0.05
GROWTH = 1.15
#: The last bin takes everything longer (~1.3 days with these numbers).
BINS = 120
WINDOW_MINUTES = 60
_TTL_S = (WINDOW_MINUTES + 2) * 60


def bin_of(delay_s: float) -> int:
    if delay_s <= BASE_S:
        return 0
    return min(BINS - 1, math.ceil(math.log(delay_s / BASE_S) / math.log(GROWTH) - 1e-9))


def bin_upper_s(index: int) -> float:
    return BASE_S * GROWTH**index


def delay_ops(keys: Keys, samples: Mapping[str, float], *, now: float) -> list[Op]:
    """The writes that count one reply in each series of ``samples`` (series name → seconds),
    for a caller to add to a write it makes anyway (the turn engine's delivery record)."""
    unknown = set(samples) - set(SERIES)
    if unknown:
        raise ValueError(f"unknown reply delay series {sorted(unknown)}; use {SERIES}")
    if not samples:
        return []
    key = keys.reply_delay(int(now // 60))
    ops = [Op("HINCRBY", key, (f"{series}:{bin_of(max(0.0, delay_s))}", 1)) for series, delay_s in samples.items()]
    return [*ops, Op("EXPIRE", key, (_TTL_S,))]


async def record_delays(
    redis: aioredis.Redis, keys: Keys, samples: Mapping[str, float], *, now: float | None = None
) -> None:
    """Count one reply in each series of ``samples`` (series name → seconds), on its own."""
    ops = delay_ops(keys, samples, now=time.time() if now is None else now)
    async with redis.pipeline(transaction=False) as pipe:
        for op in ops:
            pipe.execute_command(op.command, op.key, *op.args)
        await pipe.execute()


@dataclass(frozen=True, slots=True)
class DelayStats:
    """Percentiles over one window; None when no reply went out in it."""

    window_minutes: int
    count: int
    p50_s: float | None
    p95_s: float | None


def _percentile(bins: dict[int, int], count: int, q: float) -> float | None:
    if count == 0:
        return None
    rank = max(1, math.ceil(q * count))
    seen = 0
    for index in sorted(bins):
        seen += bins[index]
        if seen >= rank:
            return bin_upper_s(index)
    return bin_upper_s(max(bins))


async def read_delays(
    redis: aioredis.Redis, keys: Keys, *, windows: tuple[int, ...] = (5, 60), now: float | None = None
) -> dict[str, list[DelayStats]]:
    """Per series, p50/p95 over each of ``windows`` (minutes back, the current minute included;
    at most 60), in one round trip."""
    current = int((time.time() if now is None else now) // 60)
    span = min(max(windows), WINDOW_MINUTES)
    async with redis.pipeline(transaction=False) as pipe:
        for back in range(span):
            pipe.hgetall(keys.reply_delay(current - back))
        rows = await pipe.execute()
    out: dict[str, list[DelayStats]] = {series: [] for series in SERIES}
    for window in windows:
        bins: dict[str, dict[int, int]] = {series: {} for series in SERIES}
        for row in rows[: min(window, span)]:
            for field, value in row.items():
                series, _, index = as_text(field).partition(":")
                if series in bins and index.isdigit():
                    bins[series][int(index)] = bins[series].get(int(index), 0) + int(value)
        for series, counted in bins.items():
            count = sum(counted.values())
            out[series].append(DelayStats(window, count, _percentile(counted, count, 0.5), _percentile(counted, count, 0.95)))
    return out
