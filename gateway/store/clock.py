"""One clock for every host: Redis's.

Times that leave the process (a turn's due time in the sweeper's set, when a send started, when
a session was last active) are compared by other hosts, so they come from Redis ``TIME`` rather
than from this host's wall clock. One round trip learns the offset; it is refreshed now and then,
and every reading in between is local arithmetic.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

__all__ = ["RedisClock"]


class RedisClock:
    """``now()`` is Redis's time, learned as an offset from this host's clock.

    Parameters:
        redis: the shared Redis.
        resync_s: how often ``maybe_resync`` asks Redis again (clocks drift slowly).
    """

    def __init__(self, redis: aioredis.Redis, *, resync_s: float = 60.0) -> None:
        self._redis = redis
        self._resync_s = resync_s
        self._offset = 0.0
        self._synced_at = float("-inf")

    async def sync(self) -> None:
        before = time.time()
        seconds, micros = await self._redis.time()
        after = time.time()
        # The server read its clock somewhere inside our round trip: take the middle.
        self._offset = (seconds + micros / 1e6) - (before + after) / 2
        self._synced_at = time.monotonic()

    async def maybe_resync(self) -> None:
        if time.monotonic() - self._synced_at >= self._resync_s:
            await self.sync()

    def now(self) -> float:
        return time.time() + self._offset
