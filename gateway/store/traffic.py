"""Inbound traffic per channel and minute, for the operator's summary (``/admin``,
``ocs-gateway status``): how many platform requests each channel took in the last minutes and how
many of them failed, counted across every web process.

The edge notes each answered request in memory (``TrafficRecorder.note``: no I/O on the request
path) and a background task adds the counts to Redis every few seconds in one pipeline. One hash
per channel and minute, ``traffic:{channel}:{minute}`` with fields ``ok``, ``4xx`` and ``5xx``,
kept a little over an hour. Counts lost with a killed process are a few seconds' worth: this is
a dashboard, not a ledger. While Redis is away the counts wait in memory, but only those of the
minutes the summary still reads: a long outage cannot grow them without bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.core.keys import Keys, as_text

__all__ = ["ChannelTraffic", "OUTCOMES", "TrafficRecorder", "outcome_of", "read_traffic"]

log = logging.getLogger("ocsgw.traffic")

#: The outcomes counted, by HTTP status class.
OUTCOMES = ("ok", "4xx", "5xx")
#: Minutes read back (the summary's longest window) and how long a minute's hash lives.
WINDOW_MINUTES = 60
_TTL_S = (WINDOW_MINUTES + 2) * 60
#: How often the recorder writes what it noted.
FLUSH_INTERVAL_S = 5.0


def outcome_of(status: int) -> str:
    return "ok" if status < 400 else "4xx" if status < 500 else "5xx"


class TrafficRecorder:
    """Counts per (channel, minute, outcome) in memory; ``run`` writes them to Redis.

    Parameters:
        redis, keys: where the counts go.
        channels: the configured channel names; requests to any other name are not counted, so
            a scanner trying random paths cannot grow the counts without bound.
    """

    def __init__(self, redis: aioredis.Redis, keys: Keys, channels: Iterable[str]) -> None:
        self._redis = redis
        self._keys = keys
        self._channels = frozenset(channels)
        self._pending: Counter[tuple[str, int, str]] = Counter()

    def note(self, channel: str, status: int, *, now: float | None = None) -> None:
        """One answered platform request on ``channel`` with HTTP ``status``."""
        if channel in self._channels:
            minute = int((time.time() if now is None else now) // 60)
            self._pending[(channel, minute, outcome_of(status))] += 1

    async def flush(self, *, now: float | None = None) -> None:
        """Write what was noted since the last flush (one pipeline). On a Redis error the counts
        are kept for the next flush, as long as their minute is still within ``WINDOW_MINUTES``."""
        oldest = int((time.time() if now is None else now) // 60) - WINDOW_MINUTES + 1
        taken = Counter({entry: n for entry, n in self._pending.items() if entry[1] >= oldest})
        self._pending = Counter()
        if not taken:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for (channel, minute, outcome), n in taken.items():
                    key = self._keys.traffic(channel, minute)
                    pipe.hincrby(key, outcome, n)
                    pipe.expire(key, _TTL_S)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._pending.update(taken)
            log.debug("traffic counts not written yet: %s", exc)

    async def run(self, stop: asyncio.Event, *, interval_s: float = FLUSH_INTERVAL_S) -> None:
        """Flush every ``interval_s`` until ``stop`` is set, then once more."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval_s)
            except TimeoutError:
                pass
            await self.flush()


@dataclass(frozen=True, slots=True)
class ChannelTraffic:
    """One channel's requests over the last 5 and 60 minutes, by outcome."""

    channel: str
    last_5m: dict[str, int]
    last_60m: dict[str, int]

    @property
    def errors_5m(self) -> int:
        return self.last_5m["4xx"] + self.last_5m["5xx"]

    @property
    def errors_60m(self) -> int:
        return self.last_60m["4xx"] + self.last_60m["5xx"]


async def read_traffic(
    redis: aioredis.Redis, keys: Keys, channels: Iterable[str], *, now: float | None = None
) -> dict[str, ChannelTraffic]:
    """Each channel's counts for the last 5 and 60 minutes (the current minute included)."""
    names = list(channels)
    current = int((time.time() if now is None else now) // 60)
    minutes = range(current - WINDOW_MINUTES + 1, current + 1)
    async with redis.pipeline(transaction=False) as pipe:
        for channel in names:
            for minute in minutes:
                pipe.hgetall(keys.traffic(channel, minute))
        rows = await pipe.execute()
    out: dict[str, ChannelTraffic] = {}
    for i, channel in enumerate(names):
        last_5 = dict.fromkeys(OUTCOMES, 0)
        last_60 = dict.fromkeys(OUTCOMES, 0)
        for j, minute in enumerate(minutes):
            for field, value in rows[i * WINDOW_MINUTES + j].items():
                outcome = as_text(field)
                if outcome not in last_60:
                    continue
                last_60[outcome] += int(value)
                if minute > current - 5:
                    last_5[outcome] += int(value)
        out[channel] = ChannelTraffic(channel, last_5, last_60)
    return out
