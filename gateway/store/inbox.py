"""Admitting an inbound event: claim its ids, append it to the conversation's inbox, mark the
conversation active and waiting (``gateway/store/waiting.py``) and put its wake-up on the Dramatiq
queue, in one atomic step and one round trip, before the platform gets its 200 (docs/ARCHITECTURE.md "Nothing
acknowledged is lost").

A claim without the append would lose the message on a crash between the two (the platform's
retry would be taken for a duplicate), so both happen in one Lua script. The wake-up rides in the
same script because a separate enqueue was a second round trip and, through Dramatiq's broker,
a synchronous Redis call on the edge's event loop (issue 7; measured in
``gateway/store/dramatiq_queue.py``, the one module that knows Dramatiq's Redis layout).

Whether the 200 means "on disk" is the Redis server's business: with ``appendfsync always`` it
fsyncs the append-only file before it replies (``gateway/store/redis_check.py`` checks at start-up).
With ``durable_replicas`` the 200 waits until that many replicas hold the admission
(``gateway/store/replication.py``).
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.core.errors import StoreUnavailable
from gateway.core.keys import Keys
from gateway.core.models import Inbound
from gateway.store.dramatiq_queue import ENQUEUE_LUA, WakeQueue
from gateway.store.lua import LuaScript
from gateway.store.replication import NO_WAIT, Durability
from gateway.store.waiting import NOTE_WAITING_LUA

__all__ = ["Admitter", "WakeQueue", "admit"]

# KEYS: inbox, active, waiting, seen-1 … seen-n, then (when waking) WakeQueue.keys.
# ARGV: n, dedup ttl (s), payload, conversation key, the event's received_at (0: unknown), then
# (when waking) WakeQueue.args.
# The last ARGV is '1' when the caller WAITs for replicas (durable_replicas).
# Returns 1 when stored, 0 when any id was seen before (nothing written then, but with WAIT one
# write that keeps the claim's expiry: a retry of an event whose first admission was not
# confirmed waits for that admission too, since replicas apply the stream in order).
_ADMIT = LuaScript(NOTE_WAITING_LUA + ENQUEUE_LUA + """
local n = tonumber(ARGV[1])
for i = 4, 3 + n do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    if ARGV[#ARGV] == '1' then redis.call('SET', KEYS[i], '1', 'KEEPTTL') end
    return 0
  end
end
for i = 4, 3 + n do
  redis.call('SET', KEYS[i], '1', 'EX', ARGV[2])
end
local length = redis.call('RPUSH', KEYS[1], ARGV[3])
-- Due now on Redis's clock, the one every worker's sweeper reads (gateway/store/clock.py).
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZADD', KEYS[2], 'NX', now, ARGV[4])
note_waiting(KEYS[3], ARGV[4], length, ARGV[5], now)
local wake = 3 + n
if #KEYS > wake then
  dramatiq_enqueue(KEYS[wake + 1], KEYS[wake + 2], KEYS[wake + 3], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
end
return 1
""")


class Admitter:
    """``await admitter(inbound)``: one EVALSHA per event. Build one per process on the client the
    process already uses.

    Parameters:
        redis: an asyncio client.
        keys: our key names.
        dedup_ttl_s: how long an event id stays claimed.
        wake: the queue that gets ``advance(conversation)`` for every stored event, or None to
            store only (benchmarks that enqueue themselves).
    """

    def __init__(
        self, redis: aioredis.Redis, keys: Keys, *, dedup_ttl_s: int, wake: WakeQueue | None,
        durability: Durability = NO_WAIT,
    ) -> None:
        self._durability = durability
        self._keys = keys
        self._dedup_ttl_s = dedup_ttl_s
        self._wake = wake
        self._redis = redis

    async def __call__(self, inbound: Inbound) -> bool:
        """Store ``inbound`` unless it was seen before; True when it was stored.

        Raises:
            StoreUnavailable: Redis did not take it; the caller must not acknowledge (503).
        """
        channel = inbound.key.channel
        conversation = str(inbound.key)
        seen = [self._keys.seen(channel, inbound.event_id), *(self._keys.seen(channel, a) for a in inbound.alias_ids)]
        keys: list[str] = [self._keys.inbox(inbound.key), self._keys.active, self._keys.waiting, *seen]
        args: list[str | bytes | int | float] = [
            len(seen), self._dedup_ttl_s, inbound.to_json(), conversation, repr(float(inbound.received_at)),
        ]
        if self._wake is not None:
            keys += self._wake.keys
            args += self._wake.args(conversation)
        args.append("1" if self._durability.waits else "0")
        try:
            stored = await self._durability.run(_ADMIT, self._redis, keys, args)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"Redis refused the message: {exc}") from exc
        return bool(stored)


async def admit(
    redis: aioredis.Redis, keys: Keys, inbound: Inbound, *, dedup_ttl_s: int, wake: WakeQueue | None = None
) -> bool:
    """One-off ``Admitter(...)(inbound)`` for callers without a long-lived admitter (benchmarks,
    tools). True when stored, False for a duplicate.

    Raises:
        StoreUnavailable: Redis did not take it; the caller must not acknowledge (503).
    """
    return await Admitter(redis, keys, dedup_ttl_s=dedup_ttl_s, wake=wake)(inbound)
