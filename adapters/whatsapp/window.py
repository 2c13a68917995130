"""WhatsApp's 24-hour customer-service window: free-form messages may go to a user only within
24 hours of their last message; after that only an approved template may (error 131047
otherwise; docs/WHATSAPP.md, "The 24-hour window").

The edge records when each user last wrote (Meta's own timestamp of the message) in a key that
expires when the window closes, on Redis's clock, so every replica and worker agrees; a sender
asks whether the key is there. Meta redelivers old webhooks for days: an older timestamp never
replaces a newer one, and a message whose window has already closed records nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

import redis.asyncio as aioredis

from adapters.whatsapp.keys import WhatsAppKeys
from gateway.store.lua import LuaScript

__all__ = ["WINDOW_S", "is_open", "record_last_wrote"]

#: The customer-service window.
WINDOW_S = 24 * 3600

# KEYS: one window key per user; ARGV: their message timestamps (s), then the window (s).
_RECORD = LuaScript("""
local now = tonumber(redis.call('TIME')[1])
local window = tonumber(ARGV[#ARGV])
for i, key in ipairs(KEYS) do
  local stamp = tonumber(ARGV[i])
  local closes = stamp + window
  local current = tonumber(redis.call('GET', key) or '0')
  if stamp > current and closes > now then
    redis.call('SET', key, stamp, 'EXAT', closes)
  end
end
return 1
""")


async def record_last_wrote(redis: aioredis.Redis, keys: WhatsAppKeys, channel: str, last_wrote: Mapping[str, int]) -> None:
    """Open (or extend) the window of each user who wrote, in one round trip."""
    if not last_wrote:
        return
    users = sorted(last_wrote)
    await _RECORD(redis, [keys.window(channel, user) for user in users], [*(last_wrote[u] for u in users), WINDOW_S])


async def is_open(redis: aioredis.Redis, keys: WhatsAppKeys, channel: str, wa_id: str) -> bool:
    """Whether a free-form message may go to ``wa_id`` now."""
    return bool(await redis.exists(keys.window(channel, wa_id)))
