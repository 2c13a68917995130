"""The gauges read from Redis just before a scrape: turns in flight, inbox depth, the oldest
waiting message, dead letters, watched sessions, live workers and the OCS request budget.

A scrape must stay cheap however many conversations there are, so nothing here walks the
keyspace per conversation: the counts come from the sorted sets the sweeper and the dead-letter
store keep anyway (``active``, ``watch``, ``dlq``), and the per-conversation figures (turn state,
inbox length, the head's age) are read for at most ``SAMPLE_CONVERSATIONS`` of ``active`` in one
pipelined round trip — exact below that size, a sample above it (``ocsgw_active_conversations``
stays exact). Budget buckets per OCS origin and per channel are read by key; per-session buckets
have no index, so the busiest session is found by a SCAN capped at ``SESSION_SCAN_CALLS`` calls.

Every process reports the same figures (they are Redis's, not the process's).
"""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from gateway.core.config import GatewayConfig
from gateway.core.keys import Keys, as_text
from gateway.core.metrics import Metrics
from gateway.core.models import ConversationKey
from gateway.ocs.budget import origin_key
from gateway.store import heartbeats
from gateway.store.ledger import TurnState

__all__ = ["SAMPLE_CONVERSATIONS", "SESSION_SCAN_CALLS", "refresh_gauges"]

#: Conversations of ``active`` whose turn state, inbox length and head age are read per scrape.
SAMPLE_CONVERSATIONS = 1000
#: SCAN calls (COUNT 1000 each) spent looking for per-session budget buckets per scrape.
SESSION_SCAN_CALLS = 10
#: Turn states as the gauge labels them; ``queued``: an inbox item no turn has begun yet.
_STATES = (*(str(state) for state in TurnState if state is not TurnState.DONE), "queued")


async def refresh_gauges(metrics: Metrics, redis: aioredis.Redis, keys: Keys, config: GatewayConfig) -> None:
    """Set the Redis-backed gauges of ``metrics``.

    Raises:
        RedisError, OSError: Redis did not answer; the gauges keep their last values.
    """
    async with redis.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.zcard(keys.active)
        pipe.zrange(keys.active, 0, SAMPLE_CONVERSATIONS - 1)
        pipe.zcard(keys.watch)
        pipe.zcard(keys.dlq)
        (seconds, micros), active, members, watched, dead = await pipe.execute()
    now = int(seconds) + int(micros) / 1e6
    await _conversation_gauges(metrics, redis, keys, [as_text(m) for m in members], now)
    metrics.active_conversations.set(int(active))
    metrics.watched_sessions.set(int(watched))
    metrics.dead_letters.set(int(dead))
    workers = await heartbeats.alive(redis, keys)
    metrics.workers_alive.set(sum(1 for beat in workers if beat.is_alive()))
    await _budget_gauges(metrics, redis, keys, config, int(seconds), int(now * 1000))


async def _conversation_gauges(metrics: Metrics, redis: aioredis.Redis, keys: Keys, members: list[str], now: float) -> None:
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
                pipe.lindex(keys.inbox(conv), 0)
            replies = await pipe.execute()
    states = dict.fromkeys(_STATES, 0)
    depth = 0
    oldest: float | None = None
    for i in range(len(convs)):
        state, length, head = replies[3 * i], int(replies[3 * i + 1] or 0), replies[3 * i + 2]
        depth += length
        if state is not None and as_text(state) in states:
            states[as_text(state)] += 1
        elif length:
            states["queued"] += 1
        received = _received_at(head)
        if received is not None and (oldest is None or received < oldest):
            oldest = received
    for state, count in states.items():
        metrics.turns_in_flight.labels(state).set(count)
    metrics.inbox_depth.set(depth)
    metrics.oldest_waiting_turn_age_seconds.set(max(now - oldest, 0.0) if oldest is not None else 0.0)


def _received_at(head: Any) -> float | None:
    """The head item's arrival time; its text is parsed, never kept or logged."""
    if head is None:
        return None
    try:
        value = json.loads(head).get("received_at")
    except (ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


async def _budget_gauges(
    metrics: Metrics, redis: aioredis.Redis, keys: Keys, config: GatewayConfig, seconds: int, now_ms: int
) -> None:
    # The buckets gateway/ocs/budget.py writes for the current aligned window.
    lookups: list[tuple[str, str, str]] = []  # (bot, scope, key)
    for name, bot in config.bots.items():
        start = seconds - seconds % bot.budget.window_s
        lookups.append((name, "origin", keys.budget_bucket("url", origin_key(bot.base_url), start)))
        for channel_name, channel in config.channels.items():
            if channel.bot == name:
                lookups.append((name, "starts", keys.budget_bucket("starts", channel_name, start)))
    used: dict[tuple[str, str], int] = {(name, scope): 0 for name in config.bots for scope in ("origin", "session", "starts")}
    if lookups:
        async with redis.pipeline(transaction=False) as pipe:
            for _, _, key in lookups:
                pipe.hget(key, "n")
            counts = await pipe.execute()
        for (bot_name, scope, _), count in zip(lookups, counts):
            used[(bot_name, scope)] = max(used[(bot_name, scope)], int(count or 0))
    busiest_session = await _busiest_session(redis, keys, now_ms)
    for name, bot in config.bots.items():
        # Session buckets are keyed by session id alone: the busiest one, whichever bot's.
        used[(name, "session")] = busiest_session
        limits = {
            "origin": bot.budget.requests_per_window,
            "session": bot.budget.session_requests_per_window,
            "starts": bot.budget.starts_per_window,
        }
        for scope, limit in limits.items():
            metrics.ocs_budget_limit.labels(name, scope).set(limit)
            metrics.ocs_budget_used.labels(name, scope).set(used[(name, scope)])


async def _busiest_session(redis: aioredis.Redis, keys: Keys, now_ms: int) -> int:
    pattern = f"{keys.budget_bucket('session', '*')}:*"
    found: list[Any] = []
    cursor = 0
    for _ in range(SESSION_SCAN_CALLS):
        cursor, batch = await redis.scan(cursor=cursor, match=pattern, count=1000)
        found.extend(batch)
        if int(cursor) == 0:
            break
    if not found:
        return 0
    async with redis.pipeline(transaction=False) as pipe:
        for key in found:
            pipe.hmget(key, ["n", "ends"])
        rows = await pipe.execute()
    busiest = 0
    for count, ends in rows:
        if count is not None and int(ends or 0) > now_ms:  # the previous window is kept, not counted
            busiest = max(busiest, int(count))
    return busiest
