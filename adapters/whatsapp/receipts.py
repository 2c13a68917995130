"""Delivery statuses: what Meta says became of a message we sent (``sent``, ``delivered``,
``read``, ``failed``). They never start a turn; they update the message's delivery record.

Each message we send gets a record under its wamid (``wa:sent:{channel}:{wamid}``): the delivery
id of the reply part it carried, the conversation, and its status, which only moves forward
(``accepted`` → ``sent`` → ``delivered`` → ``read``; Meta may send them out of order, or skip
``delivered`` when the message was read at once), with ``failed`` and its error code on top of
whatever came before. Every message carries its part's delivery id as
``biz_opaque_callback_data``, which Meta returns in the statuses: that is how a part whose sender
died mid-request is known to have gone (``claim_part``). A status for a message without a record (sent before the record existed,
or by another tool on the same number) is counted and otherwise ignored.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from adapters.whatsapp.inbound import StatusUpdate
from adapters.whatsapp.keys import WhatsAppKeys
from gateway.store.lua import LuaScript

__all__ = ["Claim", "PART_TTL_S", "RECORD_TTL_S", "STATUSES", "apply_statuses", "claim_part", "record_sent", "release_part"]

#: The statuses Meta sends, in the order a message goes through them.
STATUSES = ("accepted", "sent", "delivered", "read", "failed")
#: How long a delivery record is kept (Meta keeps trying an offline phone for 30 days).
RECORD_TTL_S = 30 * 24 * 3600
#: How long a sent part's wamid answers its retries (a dead letter replayed within a week).
PART_TTL_S = 7 * 24 * 3600

# KEYS: per status, its delivery record and its part's key (see ``claim_part``); ARGV: per
# status, status, timestamp, error, wamid and whether it named its part (five each). A status
# moves a record only forward; ``failed`` always lands, with its error. A status naming its part
# settles a part still claimed as pending: Meta took it, whatever its sender learnt. Returns how
# many records moved.
_APPLY = LuaScript("""
local rank = {accepted = 0, sent = 1, delivered = 2, read = 3, failed = 4}
local moved = 0
for i = 1, #KEYS / 2 do
  local key, part = KEYS[i * 2 - 1], KEYS[i * 2]
  local status = ARGV[i * 5 - 4]
  if ARGV[i * 5] == '1' and status ~= 'failed' then
    local held = redis.call('GET', part)
    if held == false or string.sub(held, 1, 8) == 'pending:' then
      redis.call('SET', part, ARGV[i * 5 - 1], 'EX', tonumber(ARGV[#ARGV]))
    end
  end
  if redis.call('EXISTS', key) == 1 and rank[status] ~= nil then
    local current = rank[redis.call('HGET', key, 'status') or 'accepted'] or 0
    if rank[status] > current then
      redis.call('HSET', key, 'status', status, 'at', ARGV[i * 5 - 3])
      if status == 'failed' then redis.call('HSET', key, 'error', ARGV[i * 5 - 2]) end
      moved = moved + 1
    end
  end
end
return moved
""")

# KEYS: the part's key; ARGV: a pending marker, its TTL (ms). Claims the part for one sender:
# {1} claimed; {0, wamid} already sent; {2, ttl_ms} another sender holds it (or died holding it).
_CLAIM = LuaScript("""
local held = redis.call('GET', KEYS[1])
if held == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', tonumber(ARGV[2]))
  return {1, ''}
end
if string.sub(held, 1, 8) == 'pending:' then
  return {2, tostring(redis.call('PTTL', KEYS[1]))}
end
return {0, held}
""")

# KEYS: the part's key; ARGV: our pending marker. Lets go of a claim whose send failed.
_RELEASE = LuaScript("""
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
""")


@dataclass(frozen=True, slots=True)
class Claim:
    """What ``claim_part`` found: ``marker`` set when this sender holds the part; ``wamid`` when
    Meta already took it; else another sender holds it for ``wait_s`` more."""

    marker: str | None = None
    wamid: str | None = None
    wait_s: float = 0.0


async def claim_part(redis: aioredis.Redis, keys: WhatsAppKeys, channel: str, delivery_id: str, *, ttl_s: float) -> Claim:
    """Claim the reply part ``delivery_id`` before sending it (Meta has no idempotency key).

    A sender killed after its request left leaves the claim to expire: by then Meta's ``sent``
    status, which names the part (``biz_opaque_callback_data``), has settled it if Meta took it,
    and the next sender returns that wamid instead of sending again; if Meta never got it, the
    next sender claims it anew.
    """
    marker = f"pending:{uuid.uuid4().hex}"
    status, value = await _CLAIM(redis, [keys.part(channel, delivery_id)], [marker, max(int(ttl_s * 1000), 1)])
    text = value.decode() if isinstance(value, bytes) else str(value)
    if int(status) == 1:
        return Claim(marker=marker)
    if int(status) == 0:
        return Claim(wamid=text)
    return Claim(wait_s=max(int(text), 0) / 1000.0)


async def release_part(redis: aioredis.Redis, keys: WhatsAppKeys, channel: str, delivery_id: str, marker: str) -> None:
    """The send failed (nothing reached the user): the part may be sent again at once."""
    await _RELEASE(redis, [keys.part(channel, delivery_id)], [marker])


async def record_sent(
    redis: aioredis.Redis, keys: WhatsAppKeys, channel: str, wamid: str, *, delivery_id: str, conversation: str, at: float
) -> None:
    """The delivery record of a message Meta accepted, and its wamid under the part's delivery id."""
    key = keys.sent(channel, wamid)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping={"delivery": delivery_id, "conversation": conversation, "status": "accepted", "at": int(at)})
        pipe.expire(key, RECORD_TTL_S)
        pipe.set(keys.part(channel, delivery_id), wamid, ex=PART_TTL_S)
        await pipe.execute()





async def apply_statuses(redis: aioredis.Redis, keys: WhatsAppKeys, channel: str, statuses: Sequence[StatusUpdate]) -> int:
    """Move the delivery records the statuses name, in one round trip; returns how many moved."""
    if not statuses:
        return 0
    args: list[str | int] = []
    keys_of: list[str] = []
    for update in statuses:
        error = f"{update.error_code}: {update.error_title}" if update.error_code is not None else update.error_title
        args += [update.status, update.timestamp, error, update.wamid, 1 if update.callback_data else 0]
        keys_of += [keys.sent(channel, update.wamid), keys.part(channel, update.callback_data or "-")]
    return int(await _APPLY(redis, keys_of, [*args, PART_TTL_S]))
