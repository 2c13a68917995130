"""Spacing sends out so that a platform's flood limits are never hit (Telegram ~1 msg/s per
chat, Slack ~1 msg/s per channel), shared by every worker through Redis.

A slot is booked only by a caller that will use it: ``take_slots`` books when the wait fits in
the caller's ``max_wait_s`` (the caller sleeps that long, then sends) and otherwise books
nothing and says how long until the keys are free. Booking a slot and then backing off would
push every concurrent sender's slot further out, so that N senders on one key would keep
postponing each other (issue 8: five Slack threads answered at once, three replies lost).

A booked slot is a time to come, and the sender sends when its sleep ends: under load that is
late, by as much as its event loop was busy, so that sends booked 40 ms apart went out bunched
(issue 19: 31 in one second for a bot paced at 25). ``take_send`` therefore books the slot as
``take_slots`` does and then grants the send itself only when it is due, at the time Redis says
so: the bot's sends of the last second are kept, and a send is granted only while fewer than its
allowance were granted in the second ending now. The rate holds over the grants in every sliding
second whatever the senders' lateness, and the booked slots still spread the senders out, so
that they do not all ask at once when a second frees.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import redis.asyncio as aioredis

from gateway.store.lua import LuaScript

__all__ = ["Clearance", "SendSlot", "Slot", "reserve_slot", "take_send", "take_slot", "take_slots"]

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


# KEYS: the chat's and the bot's pacing keys, the bot's list of recent sends, the chat's last grant
# (ms); ARGV: book (1 on a
# sender's first call, 0 when it comes back to a slot it booked), max_wait_ms (-1: no limit), the
# chat's and the bot's intervals (ms), the sends allowed per window, the window (µs).
# Booking is _TAKE's, on the two pacing keys: a slot not yet due is booked and its wait returned.
# A due slot is granted if fewer than the allowance of sends were stamped in the window ending
# now; then the send is stamped (µs) at the head of the list, which keeps only the last allowance
# of stamps: the oldest of them says when the window frees. A full window returns that wait and
# keeps the booking. Answers: {0 refused, nothing booked | 1 send now | 2 sleep and come back,
# wait_us, now_us}.
_SEND = LuaScript("""
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
if ARGV[1] == '1' then
  local max_wait = tonumber(ARGV[2])
  local at = now
  for i = 1, 2 do
    local nxt = tonumber(redis.call('GET', KEYS[i]) or '0')
    if nxt > at then at = nxt end
  end
  local wait = at - now
  if max_wait >= 0 and wait > max_wait then
    return {0, wait * 1000, now_us}
  end
  for i = 1, 2 do
    local interval = tonumber(ARGV[2 + i])
    redis.call('SET', KEYS[i], at + interval, 'PX', math.max(wait + interval * 4, 1000))
  end
  if wait > 0 then
    return {2, wait * 1000, now_us}
  end
end
-- The chat's own spacing holds over its grants too: a sender that woke late does not go out on
-- the heels of the chat's previous send (its booked slot only said when to come back).
local chat_interval = tonumber(ARGV[3])
local last = tonumber(redis.call('GET', KEYS[4]) or '0')
if last > now then
  redis.call('DEL', KEYS[4])  -- Redis's clock went back: a grant in its future says nothing
elseif last + chat_interval > now then
  return {2, (last + chat_interval - now) * 1000, now_us}
end
local sends = tonumber(ARGV[5])
local window = tonumber(ARGV[6])
local newest = redis.call('LINDEX', KEYS[3], 0)
if newest and tonumber(newest) > now_us then
  -- Redis's clock went back: stamps in its future would hold the bot for as long; forget them.
  redis.call('DEL', KEYS[3])
else
  local oldest = redis.call('LINDEX', KEYS[3], sends - 1)
  if oldest and tonumber(oldest) + window > now_us then
    return {2, tonumber(oldest) + window - now_us, now_us}
  end
end
redis.call('LPUSH', KEYS[3], t[1] .. string.sub('00000' .. t[2], -6))
redis.call('LTRIM', KEYS[3], 0, sends - 1)
redis.call('PEXPIRE', KEYS[3], math.ceil(window / 1000))
redis.call('SET', KEYS[4], now, 'PX', chat_interval)
return {1, 0, now_us}
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


class Clearance(Enum):
    """What ``take_send`` says a sender may do."""

    SEND = "send"  # now: the send is granted and stamped
    WAIT = "wait"  # the slot is booked: sleep ``wait_s``, then ask again as its holder
    REFUSED = "refused"  # nothing was booked: the wait is longer than the sender would sleep


@dataclass(frozen=True, slots=True)
class SendSlot:
    """The answer of ``take_send``: the clearance, how long to wait (``WAIT`` and ``REFUSED``),
    and Redis's time of the answer (µs since the epoch: a ``SEND``'s grant time)."""

    clearance: Clearance
    wait_s: float
    at_us: int


def _allowance(interval_s: float) -> tuple[int, float]:
    """Sends per sliding window for one send every ``interval_s``: ``1/25`` → 25 in any second;
    an interval of a second or more is a window holding one send."""
    if interval_s >= 1.0:
        return 1, interval_s
    # The epsilon keeps 1/(1/25) at 25 however the division rounds.
    return max(1, math.floor(1.0 / interval_s + 1e-9)), 1.0


async def take_send(
    redis: aioredis.Redis,
    *,
    chat: tuple[str, float],
    bot: tuple[str, str, float],
    max_wait_s: float,
    holding: bool = False,
) -> SendSlot:
    """Book one send on a chat and its bot (both or neither, as ``take_slots``), and grant it
    when it is due and the bot's rate allows, in one round trip.

    Parameters:
        chat: the chat's pacing key and the spacing it enforces, in seconds.
        bot: the bot's pacing key, its list of recent sends, and the spacing of its sends (also
            their rate: at most ``1 / interval`` in any second).
        max_wait_s: the longest wait the caller will sleep through before its slot.
        holding: the caller booked a slot earlier and has slept until it: nothing is booked
            again, the send is granted if the bot's last second allows.
    """
    (chat_key, chat_interval_s), (bot_key, sends_key, bot_interval_s) = chat, bot
    sends, window_s = _allowance(bot_interval_s)
    args = [
        0 if holding else 1,
        -1 if math.isinf(max_wait_s) else max(int(max_wait_s * 1000), 0),
        max(int(chat_interval_s * 1000), 1),
        max(int(bot_interval_s * 1000), 1),
        sends,
        max(round(window_s * 1_000_000), 1),
    ]
    # The chat's last grant (ms) lives beside its pacing key, for as long as it holds the next one back.
    status, wait_us, at_us = await _SEND(redis, [chat_key, bot_key, sends_key, f"{chat_key}:last"], args)
    clearance = {0: Clearance.REFUSED, 1: Clearance.SEND, 2: Clearance.WAIT}[int(status)]
    return SendSlot(clearance, max(float(wait_us), 0.0) / 1_000_000, int(at_us))
