"""Admitting an inbound event: claim its ids and append it to the conversation's inbox, in one
atomic step, before the platform gets its 200 (DESIGN "Nothing acknowledged is lost").

A claim without the append would lose the message on a crash between the two (the platform's
retry would be taken for a duplicate), so both happen in one Lua script.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.errors import StoreUnavailable
from gateway.keys import Keys
from gateway.models import Inbound

__all__ = ["admit"]

# KEYS: inbox, active, seen-1 … seen-n.  ARGV: dedup ttl (s), payload, conversation key, now.
# Returns 1 when stored, 0 when any id was seen before.
_ADMIT = """
for i = 3, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then return 0 end
end
for i = 3, #KEYS do
  redis.call('SET', KEYS[i], '1', 'EX', ARGV[1])
end
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], 'NX', ARGV[4], ARGV[3])
return 1
"""


async def admit(redis: aioredis.Redis, keys: Keys, inbound: Inbound, *, dedup_ttl_s: int) -> bool:
    """Store ``inbound`` unless it was seen before; True when it was stored.

    Raises:
        StoreUnavailable: Redis did not take it; the caller must not acknowledge (503).
    """
    channel = inbound.key.channel
    seen = [keys.seen(channel, inbound.event_id), *(keys.seen(channel, alias) for alias in inbound.alias_ids)]
    try:
        stored = await redis.eval(  # type: ignore[misc]
            _ADMIT,
            2 + len(seen),
            keys.inbox(inbound.key),
            keys.active,
            *seen,
            dedup_ttl_s,
            inbound.to_json(),
            str(inbound.key),
            time.time(),
        )
    except (RedisError, OSError) as exc:
        raise StoreUnavailable(f"Redis refused the message: {exc}") from exc
    return bool(stored)
