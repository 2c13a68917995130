"""Each bot's poll schedule, as this process knows it: built from the completion times every
worker records in Redis (``workers/poll_schedule.py``), rebuilt in the background, never on a
reply's path; and each bot's OCS clock against ours (``workers/server_clock.py``).

Planning is a dynamic programme of ~5-10 ms of CPU, and the turn runner has one event loop: it
runs in a worker thread (the loop goes on serving turns between the interpreter's switches), only
when a refreshed histogram differs materially from the one the schedule came from
(``poll_schedule.materially_different``), and the cold-start plan is built once per process."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from gateway.core.keys import Keys
from workers.poll_schedule import (
    LEARNING_OBSERVATIONS,
    CompletionHistogram,
    HistogramStore,
    PollSchedule,
    materially_different,
)
from workers.server_clock import ServerClock, stamped_histogram

__all__ = ["ScheduleCache"]

log = logging.getLogger("ocsgw.turns")

#: How often a bot's learned completion times are read again from Redis.
_REFRESH_S = 30.0
#: ... or sooner, once this process has learned this many new completion times (one, while the
#: bot is young: a timestamped completion says nearly all one turn can), but not more than once a
#: second.
_REFRESH_AFTER = 25
_REFRESH_AFTER_YOUNG = 1
_MIN_AGE_S = 1.0
#: Poll round trips remembered per bot; the quickest half of one is the lead (``PollSchedule``):
#: the quickest, so a poll never looks before its planned time, only a little after.
_ROUND_TRIPS_KEPT = 32
#: A lead that moved less than this does not rebuild a plan.
_LEAD_CHANGE_S = 0.005


@dataclass(frozen=True, slots=True)
class _Cached:
    schedule: PollSchedule
    #: The histogram it was planned from.
    histogram: CompletionHistogram
    #: ``time.monotonic()`` of the load it came from.
    loaded_at: float
    #: The half round trip its polls are sent ahead by.
    lead_s: float = 0.0


class ScheduleCache:
    """Parameters:
    redis, keys: where the completion times live.
    max_gap_s: the longest wait between two polls of one task (``worker.poll_max_s``).
    """

    def __init__(self, redis: aioredis.Redis, keys: Keys, *, max_gap_s: float) -> None:
        self._histograms = HistogramStore(redis, keys)
        self._max_gap_s = max_gap_s
        self._schedules: dict[str, _Cached] = {}
        self._cold: _Cached | None = None
        self._refreshing: set[str] = set()
        #: Completion times this process learned per bot since its schedule was last rebuilt.
        self._learned: dict[str, int] = {}
        self._clocks: dict[str, ServerClock] = {}
        self._round_trips: dict[str, deque[float]] = {}
        self._background: set[asyncio.Task[None]] = set()
        #: Dynamic programmes run, and refreshes that found no material change (for benchmarks).
        self.plans_built = 0
        self.plans_reused = 0

    @property
    def histograms(self) -> HistogramStore:
        return self._histograms

    def schedule(self, bot: str) -> PollSchedule:
        """The bot's schedule now; a stale one still serves while its successor is built."""
        cached = self._schedules.get(bot)
        if cached is None:
            cached = self._schedules[bot] = self._cold_start()
        age = time.monotonic() - cached.loaded_at
        young = cached.histogram.total < LEARNING_OBSERVATIONS
        due = _REFRESH_AFTER_YOUNG if young else _REFRESH_AFTER
        stale = age > _REFRESH_S or (age > _MIN_AGE_S and self._learned.get(bot, 0) >= due)
        if stale and bot not in self._refreshing:
            self._learned[bot] = 0
            self._refreshing.add(bot)
            self._spawn(self._load(bot, cached))
        return cached.schedule

    def server_clock(self, bot: str) -> ServerClock:
        """The bot's OCS clock against ours, as this process's polls have bounded it."""
        clock = self._clocks.get(bot)
        if clock is None:
            clock = self._clocks[bot] = ServerClock()
        return clock

    def saw_round_trip(self, bot: str, seconds: float) -> None:
        """One task poll of the bot took ``seconds`` from sending to its answer."""
        trips = self._round_trips.get(bot)
        if trips is None:
            trips = self._round_trips[bot] = deque(maxlen=_ROUND_TRIPS_KEPT)
        if 0 <= seconds < 10:
            trips.append(seconds)

    def _lead(self, bot: str) -> float:
        trips = self._round_trips.get(bot)
        return min(trips) / 2 if trips else 0.0

    def learn(self, bot: str, low_s: float, high_s: float, *, stamped: tuple[float, float, float] | None = None) -> None:
        """The bot finished a task between ``low_s`` and ``high_s`` after its send; ``stamped``:
        (OCS's stamp minus our send time, the polls' low, high), when OCS stamped it. Recorded
        off the reply's path: the user's answer never waits for the statistics."""
        self._learned[bot] = self._learned.get(bot, 0) + 1
        self._spawn(self._record(bot, low_s, high_s, stamped))

    def _cold_start(self) -> _Cached:
        # Built once: every new bot starts from the same plan (and it costs a dynamic programme).
        if self._cold is None:
            empty = CompletionHistogram.empty()
            self._cold = _Cached(PollSchedule(empty, max_gap_s=self._max_gap_s), empty, float("-inf"))
            self.plans_built += 1
        return self._cold

    async def _load(self, bot: str, current: _Cached) -> None:
        try:
            learnt = await self._histograms.load_learnt(bot)
            # Stamped completions are read through the offset as known now (they sharpen with
            # it); the histogram of intervals serves bots whose OCS stamps nothing.
            histogram = (
                stamped_histogram(learnt.stamped, self.server_clock(bot).window()) if learnt.stamped else learnt.histogram
            )
            lead = self._lead(bot) if histogram.total > 1e-9 else 0.0  # the cold plan keeps the widget's times
            if materially_different(histogram, current.histogram) or abs(lead - current.lead_s) > _LEAD_CHANGE_S:
                schedule = await asyncio.to_thread(PollSchedule, histogram, max_gap_s=self._max_gap_s, lead_s=lead)
                self.plans_built += 1
                self._schedules[bot] = _Cached(schedule, histogram, time.monotonic(), lead)
            else:
                self.plans_reused += 1
                self._schedules[bot] = _Cached(current.schedule, current.histogram, time.monotonic(), current.lead_s)
        except Exception:  # the schedule we have keeps serving
            log.warning("could not load completion times of bot %s", bot, exc_info=True)
        finally:
            self._refreshing.discard(bot)

    async def _record(self, bot: str, low_s: float, high_s: float, stamped: tuple[float, float, float] | None) -> None:
        try:
            await self._histograms.record(bot, low_s, high_s, stamped=stamped)
        except Exception:  # one lost sample only blurs the schedule a little
            log.debug("could not record a completion time of bot %s", bot, exc_info=True)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
