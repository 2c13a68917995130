"""Spacing sends out so that a platform's flood limits are never hit (Telegram ~1 msg/s per
chat, Slack ~1 msg/s per channel), shared by every worker through Redis."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

__all__ = ["reserve_slot"]

# Atomically book the next free slot: the slot is max(now, next_free); next_free moves one
# interval past it. Returns how long the caller must wait, in ms.
_RESERVE = """
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local nxt = tonumber(redis.call('GET', KEYS[1]) or '0')
local slot = math.max(now, nxt)
redis.call('SET', KEYS[1], slot + interval, 'PX', math.max(interval * 4, 1000))
return slot - now
"""


async def reserve_slot(redis: aioredis.Redis, key: str, interval_s: float) -> float:
    """Book the next send slot on ``key``; returns the seconds to wait before sending.

    Callers sleep for a short wait and raise ``RetryLater`` for a long one, so no worker
    thread is held for seconds.
    """
    now_ms = int(time.time() * 1000)
    wait_ms = await redis.eval(_RESERVE, 1, key, now_ms, int(interval_s * 1000))  # type: ignore[misc]
    return float(wait_ms) / 1000.0
