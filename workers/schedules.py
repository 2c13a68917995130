"""Each bot's poll schedule, as this process knows it: built from the completion times every
worker records in Redis (``workers/poll_schedule.py``), rebuilt in the background, never on a
reply's path."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

import redis.asyncio as aioredis

from gateway.core.keys import Keys
from workers.poll_schedule import CompletionHistogram, HistogramStore, PollSchedule

__all__ = ["ScheduleCache"]

log = logging.getLogger("ocsgw.turns")

#: How often a bot's learned completion times are read again from Redis.
_REFRESH_S = 30.0
#: ... or sooner, once this process has learned this many new completion times (a young bot's
#: schedule sharpens quickly), but not more than once a second (building a plan costs ~10 ms).
_REFRESH_AFTER = 25
_MIN_AGE_S = 1.0


class ScheduleCache:
    """Parameters:
    redis, keys: where the completion times live.
    max_gap_s: the longest wait between two polls of one task (``worker.poll_max_s``).
    """

    def __init__(self, redis: aioredis.Redis, keys: Keys, *, max_gap_s: float) -> None:
        self._histograms = HistogramStore(redis, keys)
        self._max_gap_s = max_gap_s
        #: bot → (its schedule, ``time.monotonic()`` of the load it came from).
        self._schedules: dict[str, tuple[PollSchedule, float]] = {}
        self._refreshing: set[str] = set()
        #: Completion times this process learned per bot since its schedule was last rebuilt.
        self._learned: dict[str, int] = {}
        self._background: set[asyncio.Task[None]] = set()

    @property
    def histograms(self) -> HistogramStore:
        return self._histograms

    def schedule(self, bot: str) -> PollSchedule:
        """The bot's schedule now; a stale one still serves while its successor is built."""
        cached = self._schedules.get(bot)
        if cached is None:
            cached = (PollSchedule(CompletionHistogram.empty(), max_gap_s=self._max_gap_s), float("-inf"))
            self._schedules[bot] = cached
        age = time.monotonic() - cached[1]
        stale = age > _REFRESH_S or (age > _MIN_AGE_S and self._learned.get(bot, 0) >= _REFRESH_AFTER)
        if stale and bot not in self._refreshing:
            self._learned[bot] = 0
            self._refreshing.add(bot)
            self._spawn(self._load(bot))
        return cached[0]

    def learn(self, bot: str, low_s: float, high_s: float) -> None:
        """The bot finished a task between ``low_s`` and ``high_s`` after its send. Recorded off
        the reply's path: the user's answer never waits for the statistics."""
        self._learned[bot] = self._learned.get(bot, 0) + 1
        self._spawn(self._record(bot, low_s, high_s))

    async def _load(self, bot: str) -> None:
        try:
            histogram = await self._histograms.load(bot)
            self._schedules[bot] = (PollSchedule(histogram, max_gap_s=self._max_gap_s), time.monotonic())
        except Exception:  # the schedule we have keeps serving
            log.warning("could not load completion times of bot %s", bot, exc_info=True)
        finally:
            self._refreshing.discard(bot)

    async def _record(self, bot: str, low_s: float, high_s: float) -> None:
        try:
            await self._histograms.record(bot, low_s, high_s)
        except Exception:  # one lost sample only blurs the schedule a little
            log.debug("could not record a completion time of bot %s", bot, exc_info=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
