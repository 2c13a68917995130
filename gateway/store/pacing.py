"""Spacing sends out so that a platform's flood limits are never hit (Telegram ~1 msg/s per
chat, Slack ~1 msg/s per channel), shared by every worker through Redis.

A slot is booked only by a caller that will use it: ``take_slots`` books when the wait fits in
the caller's ``max_wait_s`` (the caller sleeps that long, then sends) and otherwise books
nothing and says how long until the keys are free. Booking a slot and then backing off would
push every concurrent sender's slot further out, so that N senders on one key would keep
postponing each other (issue 8: five Slack threads answered at once, three replies lost).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway.store.lua import LuaScript

__all__ = ["Slot", "reserve_slot", "take_slot", "take_slots"]

# KEYS: the pacing keys; ARGV: max_wait_ms (-1: no limit), then one interval_ms per key.
# The send happens at the latest of the keys' next free slots; if that is within max_wait, every
# key's next free slot moves one of its intervals past it, else nothing is written. All or none,
# in one script, so a sender never holds one key's slot while it waits out another's. The clock
# is Redis's (TIME), so workers on hosts whose clocks disagree still share one timeline.
_TAKE = LuaScript("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local max_wait = tonumber(ARGV[1])
local at = now
for i, key in ipairs(KEYS) do
  local nxt = tonumber(redis.call('GET', key) or '0')
  if nxt > at then at = nxt end
end
local wait = at - now
if max_wait >= 0 and wait > max_wait then
  return {0, wait}
end
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[1 + i])
  redis.call('SET', key, at + interval, 'PX', math.max(wait + interval * 4, 1000))
end
return {1, wait}
""")


@dataclass(frozen=True, slots=True)
class Slot:
    """The answer of a pacing check.

    ``granted``: a slot was booked; sleep ``wait_s`` and send. Not granted: nothing was booked;
    the keys are next free in ``wait_s`` (come back then, without counting an attempt).
    """

    granted: bool
    wait_s: float


async def take_slots(redis: aioredis.Redis, intervals: Sequence[tuple[str, float]], *, max_wait_s: float) -> Slot:
    """Book one send on every ``(key, interval_s)`` pair, or on none of them.

    Parameters:
        intervals: each pacing key with the spacing it enforces, in seconds.
        max_wait_s: the longest wait the caller will sleep through; ``math.inf`` books always.

    Returns:
        ``Slot(True, wait_s)`` when booked, ``Slot(False, wait_s)`` when the wait is too long.
    """
    if not intervals:
        raise ValueError("take_slots needs at least one key")
    max_wait_ms = -1 if math.isinf(max_wait_s) else max(int(max_wait_s * 1000), 0)
    keys = [key for key, _ in intervals]
    args = [max_wait_ms, *(max(int(interval * 1000), 1) for _, interval in intervals)]
    granted, wait_ms = await _TAKE(redis, keys, args)
    return Slot(granted=bool(granted), wait_s=max(float(wait_ms), 0.0) / 1000.0)


async def take_slot(redis: aioredis.Redis, key: str, interval_s: float, *, max_wait_s: float) -> Slot:
    """``take_slots`` for a single key (one Slack channel)."""
    return await take_slots(redis, [(key, interval_s)], max_wait_s=max_wait_s)


async def reserve_slot(redis: aioredis.Redis, key: str, interval_s: float) -> float:
    """Book the next slot on ``key`` whatever the wait; returns the seconds until it.

    Only for a caller that will certainly send then (tests fill a key with it); a sender that
    may back off uses ``take_slot``.
    """
    return (await take_slot(redis, key, interval_s, max_wait_s=math.inf)).wait_s
