"""The gauges read from Redis just before a scrape: turns in flight, inbox depth, the oldest
waiting message, dead letters, watched sessions, live workers and the OCS request budget.

A scrape must stay cheap however many conversations there are, so nothing here walks the
keyspace per conversation: the counts come from the sorted sets the sweeper and the dead-letter
store keep anyway (``active``, ``watch``, ``dlq``); the oldest waiting message comes from the
waiting index (``gateway/store/waiting.py``), exact at any size; turn states and inbox depth are
read for at most ``SAMPLE_CONVERSATIONS`` of ``active`` in one pipelined round trip — exact below
that size, a sample above it (``ocsgw_active_conversations`` stays exact). No message body is
read. A refresh is reused for ``REFRESH_MAX_AGE_S`` and shared by concurrent scrapes, so
repeated requests to ``/metrics`` cost Redis at most one refresh per process every few seconds. Budget buckets per OCS
origin and per channel are read by key, the busiest session
from the top of the per-window index the budget script keeps; the budget gauges export what the
gate enforces (the origin's sliding estimate; the larger of this and the last aligned window).

Every process reports the same figures (they are Redis's, not the process's).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from gateway.core.config import GatewayConfig
from gateway.core.keys import Keys, as_text
from gateway.core.metrics import Metrics
from gateway.core.models import ConversationKey
from gateway.ocs.budget import BudgetScope, index_key, origin_key
from gateway.store import heartbeats
from gateway.store.ledger import TurnState
from gateway.store.waiting import oldest_waiting

__all__ = ["GaugeRefresher", "REFRESH_MAX_AGE_S", "SAMPLE_CONVERSATIONS", "WAITING_READ"]

#: Conversations of ``active`` whose turn state and inbox length are read per scrape.
SAMPLE_CONVERSATIONS = 1000
#: Entries of the waiting index read (and healed if stale) per scrape to find the oldest live one.
WAITING_READ = 10
#: Scrapes within this many seconds of a refresh reuse its gauges (per process).
REFRESH_MAX_AGE_S = 5.0
#: Turn states as the gauge labels them; ``queued``: an inbox item no turn has begun yet.
_STATES = (*(str(state) for state in TurnState), "queued")


class GaugeRefresher:
    """Sets the Redis-backed gauges of one process's ``Metrics``, at most once per
    ``REFRESH_MAX_AGE_S``; concurrent scrapes share one refresh. ``Services`` holds one per
    process, so every caller (``/metrics`` of the web process and of the worker) is cached alike."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._refreshed_at: float | None = None

    async def refresh(self, redis: aioredis.Redis, keys: Keys, config: GatewayConfig) -> None:
        """Refresh unless done less than ``REFRESH_MAX_AGE_S`` ago. A failed refresh is not
        remembered: the next scrape tries again.

        Raises:
            RedisError, OSError: Redis did not answer; the gauges keep their last values.
        """
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:
            self._lock, self._loop = asyncio.Lock(), loop  # an asyncio lock belongs to one loop
        async with self._lock:
            # Checked under the lock: whoever waited on a refresh in progress reuses its result.
            if self._refreshed_at is not None and time.monotonic() - self._refreshed_at < REFRESH_MAX_AGE_S:
                return
            await _refresh(self.metrics, redis, keys, config)
            self._refreshed_at = time.monotonic()


async def _refresh(metrics: Metrics, redis: aioredis.Redis, keys: Keys, config: GatewayConfig) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.zcard(keys.active)
        pipe.zrange(keys.active, 0, SAMPLE_CONVERSATIONS - 1)
        pipe.zcard(keys.watch)
        pipe.zcard(keys.dlq)
        (seconds, micros), active, members, watched, dead = await pipe.execute()
    now = int(seconds) + int(micros) / 1e6
    await _conversation_gauges(metrics, redis, keys, [as_text(m) for m in members])
    await _oldest_waiting_gauge(metrics, redis, keys, now)
    metrics.active_conversations.set(int(active))
    metrics.watched_sessions.set(int(watched))
    metrics.dead_letters.set(int(dead))
    # Judged on Redis's clock, as stamped; a worker whose sweep stopped is not counted alive.
    workers = await heartbeats.alive(redis, keys, now=now)
    metrics.workers_alive.set(sum(1 for beat in workers if beat.state(now) == "alive"))
    await _budget_gauges(metrics, redis, keys, config, int(seconds), int(now * 1000))


async def _conversation_gauges(metrics: Metrics, redis: aioredis.Redis, keys: Keys, members: list[str]) -> None:
    """Turns by state and inbox depth over the sample: a state field and a list length each,
    never an inbox item."""
    convs = []
    for member in members:
        try:
            convs.append(ConversationKey.parse(member))
        except ValueError:
            continue  # not ours to count
    replies: list[Any] = []
    if convs:
        async with redis.pipeline(transaction=False) as pipe:
            for conv in convs:
                pipe.hget(keys.turn(conv), "state")
                pipe.llen(keys.inbox(conv))
            replies = await pipe.execute()
    states = dict.fromkeys(_STATES, 0)
    depth = 0
    for i in range(len(convs)):
        state, length = replies[2 * i], int(replies[2 * i + 1] or 0)
        depth += length
        if state is not None and as_text(state) in states:
            states[as_text(state)] += 1
        elif length:
            states["queued"] += 1
    for state, count in states.items():
        metrics.turns_in_flight.labels(state).set(count)
    metrics.inbox_depth.set(depth)


async def _oldest_waiting_gauge(metrics: Metrics, redis: aioredis.Redis, keys: Keys, now: float) -> None:
    """Exact, whatever the number in flight: the first live entry of the waiting index."""
    oldest = await oldest_waiting(redis, keys, limit=WAITING_READ)
    age = max(now - oldest[0].received_at, 0.0) if oldest else 0.0
    metrics.oldest_waiting_turn_age_seconds.set(age)


async def _budget_gauges(
    metrics: Metrics, redis: aioredis.Redis, keys: Keys, config: GatewayConfig, seconds: int, now_ms: int
) -> None:
    # What the gate in gateway/ocs/budget.py enforces, so the 80 % alert fires while it throttles:
    # for an origin its sliding estimate (this window's count plus the previous window's share of
    # the time not yet elapsed); for the aligned session and start windows the larger of this
    # window's count and the previous one's, so a steady load does not fall to 0 at each boundary.
    reads: list[tuple[str, str, float]] = []  # (bot, scope, weight of the count read)
    async with redis.pipeline(transaction=False) as pipe:
        for name, bot in config.bots.items():
            window = bot.budget.window_s
            start = seconds - seconds % window
            left = max(0.0, 1.0 - (now_ms - start * 1000) / (window * 1000))
            url_id = origin_key(bot.base_url)
            for when, weight in ((start, 1.0), (start - window, left)):
                pipe.hget(keys.budget_bucket("url", url_id, when), "n")
                reads.append((name, "origin", weight))
            for channel_name, channel in config.channels.items():
                if channel.bot == name:
                    for when in (start, start - window):
                        pipe.hget(keys.budget_bucket("starts", channel_name, when), "n")
                        reads.append((name, "starts", 0.0))
            for when in (start, start - window):
                _busiest_session(pipe, keys, window, when)
                reads.append((name, "session", 0.0))
        replies = await pipe.execute()
    used: dict[tuple[str, str], float] = {
        (name, scope): 0.0 for name in config.bots for scope in ("origin", "session", "starts")
    }
    for (name, scope, weight), reply in zip(reads, replies):
        if scope == "origin":
            used[(name, scope)] += weight * int(reply or 0)
        elif scope == "starts":
            used[(name, scope)] = max(used[(name, scope)], int(reply or 0))
        else:  # Session buckets are keyed by session id alone: the busiest one, whichever bot's.
            used[(name, scope)] = max(used[(name, scope)], int(reply[0][1]) if reply else 0)
    for name, bot in config.bots.items():
        limits = {
            "origin": bot.budget.requests_per_window,
            "session": bot.budget.session_requests_per_window,
            "starts": bot.budget.starts_per_window,
        }
        for scope, limit in limits.items():
            metrics.ocs_budget_limit.labels(name, scope).set(limit)
            metrics.ocs_budget_used.labels(name, scope).set(used[(name, scope)])


def _busiest_session(pipe: Pipeline, keys: Keys, window_s: int, window_start: int) -> None:
    # The top entry of the window's session index the budget script keeps (score = the count),
    # so the hot session is found in O(log n) however large the keyspace is.
    pipe.zrevrange(index_key(keys, BudgetScope.SESSION, window_s, window_start), 0, 0, withscores=True)
