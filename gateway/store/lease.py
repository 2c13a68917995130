"""The conversation lease: one owner per conversation across all worker processes, and every
write of that owner fenced by it.

A lease is a Redis key holding a random token with a TTL. The owning process renews it while it
holds the conversation (waiting turns included), so a process killed with SIGKILL frees its
conversations when the TTL lapses and another process adopts them. Every write the owner makes to
the conversation's state goes through ``Lease.run``: one Lua script that checks the token, so a
process that lost its lease (paused, partitioned, too slow) can never overwrite what the new owner
recorded.

What a fenced write guarantees. Redis runs the script with nothing else in between, but it does
not undo a script's earlier commands when a later one fails. So the script first checks every op
without writing: the command is one it knows (``DEL``, ``EXPIRE``, ``HSET``, ``HDEL``,
``HINCRBY``, ``ZADD``, ``ZREM``, ``ZREMRANGEBYSCORE``, ``RPUSH``, ``LREM``, ``LINDEX``, ``LRANGE``), the
arguments are as many and of the kind it needs (integers, scores), each key holds the type the
command needs as the earlier ops will have left it, and a ``HINCRBY`` field holds an integer. Any
op that fails a check refuses the whole write (``WriteRefused``): nothing is written and the lease
is not extended. Integers of more than 15 digits are refused though Redis would take some.

Once the checks pass, the ops cannot fail for any reason the script can see. Redis refuses a
script's writes for lack of memory (``maxmemory``) only at its first write, and on a read-only
replica or after a failed disk write at any write, but none of those conditions changes while a
script runs: either the first write fails and nothing is written, or every op is applied. What
remains, and is not guarded: a Redis user whose ACL denies some of these commands or keys but not
others (the first denied op fails and the ones before it stay: a configuration error); and Redis
itself dying mid-script (a crash, a kill, an allocation that fails): what was in memory is lost,
and since Redis hands a script's writes to its AOF and replicas as one MULTI/EXEC, a restart or a
failover finds all of a script's writes or none.

``KeyLease`` is the same owner-token idea without the conversation's bookkeeping, for one
process at a time on anything else (a Telegram bot's poller, a Slack token refresh).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from gateway.core.errors import GatewayError
from gateway.store.lua import LuaScript
from gateway.store.replication import NO_WAIT, Durability

__all__ = ["KeyLease", "Lease", "LeaseLost", "Op", "WriteRefused", "renew_leases"]

# KEYS[1] lease, KEYS[2..] the keys the ops name. ARGV[1] token, ARGV[2] ttl ms (extends the
# lease: a write is also a sign of life), then per op: command, key index, argument count, args.
# Redis does not roll a script back when a command in it fails, so every op is checked before the
# first write, against the keys as the earlier ops will leave them; only then is anything applied.
_FENCED = LuaScript("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1} end

-- Redis's own integer syntax (no sign but '-', no leading zero), kept to 15 digits: exact as a
-- Lua number, and no command here can overflow with it (EXPIRE in ms, HINCRBY's sum).
local function integer(s)
  if type(s) == 'number' then return s end
  if s ~= '0' and not (s:match('^-?[1-9]%d*$') and #s:gsub('^-', '') <= 15) then return nil end
  return tonumber(s)
end

-- A float as Redis reads one: the whole text, no space, not NaN, not out of range (strtod's
-- overflow to inf and underflow to 0 are refused; 'inf' itself is a score).
local function float(s)
  if s:find('[%sxX]') then return nil end
  local n = tonumber(s)
  if n == nil or n ~= n then return nil end
  if (n == math.huge or n == -math.huge) and not s:lower():match('^[+-]?inf') then return nil end
  if n == 0 and s:match('^[^eE]*[1-9]') then return nil end
  return n
end

local function bound(s)
  if s:sub(1, 1) == '(' then s = s:sub(2) end
  return float(s)
end

-- What the key of each KEYS index will hold when the op being checked runs: its type ('none'
-- when absent) and the hash fields the checked ops wrote (false: deleted). 'fresh' means no
-- field exists that the checked ops did not write.
local held = {}
local function key_state(k)
  if held[k] == nil then
    local t = redis.call('TYPE', KEYS[k])['ok']
    held[k] = {type = t, fields = {}, fresh = t == 'none'}
  end
  return held[k]
end

local function hash_field(k, state, f)
  local v = state.fields[f]
  if v ~= nil then return v end
  if state.fresh then return false end
  return redis.call('HGET', KEYS[k], f)
end

local ZADD_FLAGS = {NX = true, XX = true, GT = true, LT = true, CH = true}

-- Per command: the type it needs (nil: any), whether it creates the key when absent, and a check
-- of its arguments that returns why it would fail, or nil, and notes what the op leaves behind.
-- An op that may empty a key (HDEL, ZREM, LREM, ...) leaves its type as it was: a later op of
-- another type on that key is refused though it might have run; never the other way round.
local COMMANDS = {
  DEL = {check = function(a, k)
    if #a ~= 0 then return 'takes no arguments' end
    held[k] = {type = 'none', fields = {}, fresh = true}
  end},
  EXPIRE = {check = function(a)
    if #a ~= 1 or not integer(a[1]) then return 'takes one integer (seconds)' end
  end},
  HSET = {creates = true, needs = 'hash', check = function(a, k, state)
    if #a < 2 or #a % 2 ~= 0 then return 'takes field value pairs' end
    for j = 1, #a, 2 do state.fields[a[j]] = a[j + 1] end
  end},
  HDEL = {needs = 'hash', check = function(a, k, state)
    if #a < 1 then return 'takes at least one field' end
    for j = 1, #a do state.fields[a[j]] = false end
  end},
  HINCRBY = {creates = true, needs = 'hash', check = function(a, k, state)
    if #a ~= 2 then return 'takes a field and an increment' end
    local by = integer(a[2])
    if not by then return 'increment ' .. a[2] .. ' is not an integer' end
    local current = hash_field(k, state, a[1])
    local base = 0
    if current then base = integer(current) end
    if not base then return 'field ' .. a[1] .. ' holds no integer (of at most 15 digits)' end
    if math.abs(base + by) >= 1e15 then return 'the sum would pass 15 digits' end
    state.fields[a[1]] = base + by
  end},
  ZADD = {creates = true, needs = 'zset', check = function(a)
    local flags, i = {}, 1
    while a[i] and ZADD_FLAGS[a[i]:upper()] do flags[a[i]:upper()] = true; i = i + 1 end
    local pairs_left = #a - i + 1
    if pairs_left < 2 or pairs_left % 2 ~= 0 then return 'takes [flags] score member pairs' end
    if (flags.NX and (flags.XX or flags.GT or flags.LT)) or (flags.GT and flags.LT) then
      return 'flags that do not go together'
    end
    for j = i, #a, 2 do
      if not float(a[j]) then return 'score ' .. a[j] .. ' is not a number' end
    end
  end},
  ZREM = {needs = 'zset', check = function(a)
    if #a < 1 then return 'takes at least one member' end
  end},
  ZREMRANGEBYSCORE = {needs = 'zset', check = function(a)
    if #a ~= 2 or not bound(a[1]) or not bound(a[2]) then return 'takes a min and a max score' end
  end},
  RPUSH = {creates = true, needs = 'list', check = function(a)
    if #a < 1 then return 'takes at least one element' end
  end},
  LREM = {needs = 'list', check = function(a)
    if #a ~= 2 or not integer(a[1]) then return 'takes a count (integer) and an element' end
  end},
  LINDEX = {needs = 'list', check = function(a)
    if #a ~= 1 or not integer(a[1]) then return 'takes an index (integer)' end
  end},
  LRANGE = {needs = 'list', check = function(a)
    if #a ~= 2 or not integer(a[1]) or not integer(a[2]) then return 'takes a start and a stop (integers)' end
  end},
}

local function refuse(n, command, why)
  return redis.error_reply('ERR fenced write refused, nothing written: op ' .. n .. ' (' .. tostring(command) .. '): ' .. why)
end

local ops = {}
local i = 3
while i <= #ARGV do
  local n = #ops + 1
  local name, k, count = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  if k == nil or k < 2 or KEYS[k] == nil or count == nil or count < 0 or i + 2 + count > #ARGV then
    return refuse(n, name, 'malformed op')
  end
  local command = COMMANDS[name:upper()]
  if command == nil then return refuse(n, name, 'not a command a fenced write may run') end
  local args = {}
  for j = 1, count do args[j] = ARGV[i + 2 + j] end
  local state = nil  -- DEL and EXPIRE take any key: no need to ask its type
  if command.needs then
    state = key_state(k)
    if state.type ~= 'none' and state.type ~= command.needs then
      return refuse(n, name, 'the key holds a ' .. state.type .. ', not a ' .. command.needs)
    end
  end
  local why = command.check(args, k, state)
  if why then return refuse(n, name, why) end
  if command.creates then state.type = command.needs end
  ops[n] = {name:upper(), k, args}
  i = i + 3 + count
end

redis.call('PEXPIRE', KEYS[1], ARGV[2])
local results = {0}
for n = 1, #ops do
  local value = redis.call(ops[n][1], KEYS[ops[n][2]], unpack(ops[n][3]))
  if type(value) == 'table' and value.ok then value = value.ok end
  results[n + 1] = value
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


class WriteRefused(GatewayError):
    """Raised when a fenced write would fail part-way (a command it does not know, a wrong
    argument, a key of another type): nothing was written. The message names the op."""


_REFUSED = "fenced write refused"


@dataclass(frozen=True, slots=True)
class Op:
    """One Redis command on one key, applied inside a fenced write (the commands it may be are
    listed in the module's docstring)."""

    command: str
    key: str
    args: tuple[Any, ...] = ()


class Lease:
    """A held lease; get one with ``await Lease.acquire(...)``.

    ``valid_until`` is this process's own bound (monotonic) on how long the lease surely lasts:
    the last successful renewal's start plus the TTL. Past it the owner stops calling out.
    """

    def __init__(
        self, redis: aioredis.Redis, key: str, token: str, ttl_ms: int, valid_from: float, durability: Durability = NO_WAIT
    ) -> None:
        self._redis = redis
        #: How durable a fenced write must be before ``run`` returns (gateway/store/replication.py).
        self.durability = durability
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
        durability: Durability = NO_WAIT,
    ) -> Lease | None:
        """Take the lease, or None when another owner holds it. With ``active``, the
        conversation's sweeper score (if it has one) moves to ``hold_until`` in the same step.
        ``durability``: what every fenced write of this lease waits for (``durable_replicas``)."""
        token = secrets.token_hex(8)
        ttl_ms = max(int(ttl_s * 1000), 1)
        started = time.monotonic()
        if active is None:
            taken = await redis.set(key, token, nx=True, px=ttl_ms)
        else:
            taken = await _ACQUIRE(redis, (key, active), (token, ttl_ms, member, hold_until))
        if taken:
            return cls(redis, key, token, ttl_ms, started, durability)
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
        """Apply all of ``ops`` if we still hold the lease (and extend it); their replies.

        With ``durability`` asking for replicas, it returns only once they hold the write: the
        ledger step before an OCS send and the delivery marks are these writes, and a failover
        must not undo one the worker has acted on.

        Raises:
            LeaseLost: the token no longer matches; nothing was written.
            WriteRefused: an op would fail; nothing was written.
            NotReplicated: written on the primary, not confirmed by the replicas in time (a
                ``RedisError``: the step is retried, as after a crash right after the write).
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
        try:
            result = await self.durability.run(_FENCED, self._redis, keys, argv)
        except ResponseError as exc:
            if _REFUSED in str(exc):
                raise WriteRefused(str(exc)) from exc
            raise
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
