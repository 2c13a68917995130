"""The conversation lease: one owner per conversation across all worker processes, and every
write of that owner fenced by it.

A lease is a Redis key holding a random token with a TTL. The owning process renews it while it
holds the conversation (waiting turns included), so a process killed with SIGKILL frees its
conversations when the TTL lapses and another process adopts them. Every write the owner makes to
the conversation's state goes through ``Lease.run``: one Lua script that checks the token and
applies the writes atomically, so a process that lost its lease (paused, partitioned, too slow)
can never overwrite what the new owner recorded.

``KeyLease`` is the same owner-token idea without the conversation's bookkeeping, for one
process at a time on anything else (a Telegram bot's poller, a Slack token refresh).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any, Sequence

import redis.asyncio as aioredis

from gateway.core.errors import GatewayError
from gateway.store.lua import LuaScript

__all__ = ["KeyLease", "Lease", "LeaseLost", "Op", "renew_leases"]

# KEYS[1] lease, KEYS[2..] the keys the ops name. ARGV[1] token, ARGV[2] ttl ms (extends the
# lease: a write is also a sign of life), then per op: command, key index, argument count, args.
_FENCED = LuaScript("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local results = {0}
local i = 3
while i <= #ARGV do
  local n = tonumber(ARGV[i + 2])
  local args = {}
  for j = 1, n do args[j] = ARGV[i + 2 + j] end
  local ok, value = pcall(redis.call, ARGV[i], KEYS[tonumber(ARGV[i + 1])], unpack(args))
  if not ok then return redis.error_reply(tostring(value)) end
  if type(value) == 'table' and value.ok then value = value.ok end
  results[#results + 1] = value
  i = i + 3 + n
end
return results
""")

# KEYS: lease, inbox, turn, active. ARGV: token, member. Gives the conversation up only when
# nothing is left to do, in the same atomic step that checks it: a message that arrives a moment
# later finds no owner and its wake-up claims the conversation afresh.
_RELEASE_IF_IDLE = LuaScript("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('LLEN', KEYS[2]) > 0 or redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[4], ARGV[2])
return 1
""")

# KEYS: lease, active. ARGV: token, ttl ms, member, score. Taking a conversation also moves its
# sweeper score past the lease's life, so no other process tries to adopt it meanwhile.
_ACQUIRE = LuaScript("""
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[2], 'XX', ARGV[4], ARGV[3])
return 1
""")

_RELEASE = LuaScript("""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""")

# KEYS[1] lease; ARGV token, ttl ms. Take the lease if free, extend it if ours; 1 when held.
_TAKE = LuaScript("""
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
""")

# KEYS[1] lease; ARGV token, ttl ms. Extend only our own lease; 0 when it is gone or another's.
_EXTEND = LuaScript("""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
""")

# KEYS[1] the sweeper's set, KEYS[2..] leases. ARGV[1] ttl ms, ARGV[2] the score that keeps a
# held conversation out of the sweeper's reach, then per lease: token, member. Returns the
# indexes (1-based) of the leases that were lost.
_RENEW_ALL = LuaScript("""
local lost = {}
for i = 2, #KEYS do
  local token = ARGV[1 + (i - 1) * 2]
  local member = ARGV[2 + (i - 1) * 2]
  if redis.call('GET', KEYS[i]) == token then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
    redis.call('ZADD', KEYS[1], 'XX', ARGV[2], member)
  else
    lost[#lost + 1] = i - 1
  end
end
return lost
""")


class LeaseLost(GatewayError):
    """Another process owns the conversation now: stop before the next outside call."""


@dataclass(frozen=True, slots=True)
class Op:
    """One Redis command on one key, applied inside a fenced write."""

    command: str
    key: str
    args: tuple[Any, ...] = ()


class Lease:
    """A held lease; get one with ``await Lease.acquire(...)``.

    ``valid_until`` is this process's own bound (monotonic) on how long the lease surely lasts:
    the last successful renewal's start plus the TTL. Past it the owner stops calling out.
    """

    def __init__(self, redis: aioredis.Redis, key: str, token: str, ttl_ms: int, valid_from: float) -> None:
        self._redis = redis
        self.key = key
        self.token = token
        self.ttl_ms = ttl_ms
        self.valid_until = valid_from + ttl_ms / 1000
        self.lost = False

    @classmethod
    async def acquire(
        cls,
        redis: aioredis.Redis,
        key: str,
        *,
        ttl_s: float,
        active: str | None = None,
        member: str = "",
        hold_until: float = 0.0,
    ) -> Lease | None:
        """Take the lease, or None when another owner holds it. With ``active``, the
        conversation's sweeper score (if it has one) moves to ``hold_until`` in the same step."""
        token = secrets.token_hex(8)
        ttl_ms = max(int(ttl_s * 1000), 1)
        started = time.monotonic()
        if active is None:
            taken = await redis.set(key, token, nx=True, px=ttl_ms)
        else:
            taken = await _ACQUIRE(redis, (key, active), (token, ttl_ms, member, hold_until))
        if taken:
            return cls(redis, key, token, ttl_ms, started)
        return None

    def check(self) -> None:
        """Raise ``LeaseLost`` unless the lease surely still holds (keeps a safety margin of a
        tenth of the TTL for the call about to be made)."""
        if self.lost or time.monotonic() > self.valid_until - self.ttl_ms / 10_000:
            self.lost = True
            raise LeaseLost(self.key)

    def renewed(self, started: float) -> None:
        self.valid_until = max(self.valid_until, started + self.ttl_ms / 1000)

    async def run(self, ops: Sequence[Op]) -> list[Any]:
        """Apply ``ops`` atomically if we still hold the lease (and extend it); their replies.

        Raises:
            LeaseLost: the token no longer matches; nothing was written.
        """
        keys: list[str] = [self.key]
        index: dict[str, int] = {}
        argv: list[Any] = [self.token, self.ttl_ms]
        for op in ops:
            if op.key not in index:
                keys.append(op.key)
                index[op.key] = len(keys)
            argv.extend((op.command, index[op.key], len(op.args), *op.args))
        started = time.monotonic()
        result = await _FENCED(self._redis, keys, argv)
        if result and result[0] == -1:
            self.lost = True
            raise LeaseLost(self.key)
        self.renewed(started)
        return list(result[1:])

    async def release_if_idle(self, *, inbox: str, turn: str, active: str, member: str) -> bool:
        """Give the conversation up if no work is left; False when there is (keep going).

        Raises:
            LeaseLost: someone else owns it already.
        """
        result = await _RELEASE_IF_IDLE(self._redis, (self.key, inbox, turn, active), (self.token, member))
        if result == -1:
            self.lost = True
            raise LeaseLost(self.key)
        return bool(result)

    async def release(self) -> None:
        await _RELEASE(self._redis, (self.key,), (self.token,))


async def renew_leases(redis: aioredis.Redis, active: str, held: Sequence[tuple[Lease, str]], *, hold_until: float) -> None:
    """Renew every lease in ``held`` (lease, sweeper member) in one round trip, and keep their
    conversations' sweeper scores at ``hold_until`` so no other process tries to adopt them.
    Leases found lost are marked ``lost``."""
    if not held:
        return
    ttl_ms = max(lease.ttl_ms for lease, _ in held)
    argv: list[Any] = [ttl_ms, hold_until]
    for lease, member in held:
        argv.extend((lease.token, member))
    started = time.monotonic()
    lost = await _RENEW_ALL(redis, (active, *(lease.key for lease, _ in held)), argv)
    lost_set = {int(i) for i in lost}
    for position, (lease, _) in enumerate(held, start=1):
        if position in lost_set:
            lease.lost = True
        else:
            lease.renewed(started)


class KeyLease:
    """One holder at a time of ``key`` across processes: the key holds the holder's random token
    and lapses ``ttl_s`` after its last renewal, so a dead holder frees it.

    Parameters:
        redis: an asyncio client.
        key: the lease's key.
        ttl_s: how long a take or renewal holds it.
    """

    def __init__(self, redis: aioredis.Redis, key: str, ttl_s: float) -> None:
        self._redis = redis
        self.key = key
        self.ttl_ms = max(int(ttl_s * 1000), 1)
        self.token = secrets.token_hex(16)

    async def take(self) -> bool:
        """Take the lease if it is free (or extend it if this holder has it); True when held."""
        return bool(await _TAKE(self._redis, (self.key,), (self.token, self.ttl_ms)))

    async def renew(self) -> bool:
        """Extend the lease; False when it lapsed or another holder has it."""
        return bool(await _EXTEND(self._redis, (self.key,), (self.token, self.ttl_ms)))

    async def release(self) -> None:
        """Give the lease up, if this holder still has it."""
        await _RELEASE(self._redis, (self.key,), (self.token,))
