"""Delivery statuses: what Meta says became of a message we sent (``sent``, ``delivered``,
``read``, ``failed``). They never start a turn; they update the message's delivery record.

Each message we send gets a record under its wamid (``wa:sent:{channel}:{wamid}``): the delivery
id of the reply part it carried, the conversation, and its status, which only moves forward
(``accepted`` → ``sent`` → ``delivered`` → ``read``; Meta may send them out of order, or skip
``delivered`` when the message was read at once), with ``failed`` and its error code on top of
whatever came before. A status for a message without a record (sent before the record existed,
or by another tool on the same number) is counted and otherwise ignored.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from adapters.whatsapp.inbound import StatusUpdate
from adapters.whatsapp.keys import WhatsAppKeys
from gateway.store.lua import LuaScript

__all__ = ["RECORD_TTL_S", "STATUSES", "apply_statuses", "record_sent"]

#: The statuses Meta sends, in the order a message goes through them.
STATUSES = ("accepted", "sent", "delivered", "read", "failed")
#: How long a delivery record is kept (Meta keeps trying an offline phone for 30 days).
RECORD_TTL_S = 30 * 24 * 3600

# KEYS: the records; ARGV: per record, status, timestamp and error (three each). A status moves
# a record only forward; ``failed`` always lands, with its error. Returns how many moved.
_APPLY = LuaScript("""
local rank = {accepted = 0, sent = 1, delivered = 2, read = 3, failed = 4}
local moved = 0
for i, key in ipairs(KEYS) do
  local status = ARGV[i * 3 - 2]
  if redis.call('EXISTS', key) == 1 and rank[status] ~= nil then
    local current = rank[redis.call('HGET', key, 'status') or 'accepted'] or 0
    if rank[status] > current then
      redis.call('HSET', key, 'status', status, 'at', ARGV[i * 3 - 1])
      if status == 'failed' then redis.call('HSET', key, 'error', ARGV[i * 3]) end
      moved = moved + 1
    end
  end
end
return moved
""")


async def record_sent(
    redis: aioredis.Redis, keys: WhatsAppKeys, channel: str, wamid: str, *, delivery_id: str, conversation: str, at: float
) -> None:
    """The delivery record of a message Meta accepted."""
    key = keys.sent(channel, wamid)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping={"delivery": delivery_id, "conversation": conversation, "status": "accepted", "at": int(at)})
        pipe.expire(key, RECORD_TTL_S)
        await pipe.execute()


async def apply_statuses(redis: aioredis.Redis, keys: WhatsAppKeys, channel: str, statuses: Sequence[StatusUpdate]) -> int:
    """Move the delivery records the statuses name, in one round trip; returns how many moved."""
    if not statuses:
        return 0
    args: list[str | int] = []
    for update in statuses:
        error = f"{update.error_code}: {update.error_title}" if update.error_code is not None else update.error_title
        args += [update.status, update.timestamp, error]
    return int(await _APPLY(redis, [keys.sent(channel, s.wamid) for s in statuses], args))
