"""The waiting index: which conversations have an unanswered message, and since when.

``waiting`` (a sorted set) scores each conversation whose inbox is not empty by the
``received_at`` of its inbox's head, so the oldest message still waiting anywhere is its first
member: exact and O(log n) however many conversations are in flight, and read without touching a
message body. The writers keep it right in the same atomic step as the inbox change:

* every append (admission, a watch's bot-initiated message, a dead-letter replay) adds the
  conversation with ``NX`` (an older head keeps its time); admission and replay, which see the
  append's result, overwrite instead when their item became the head (a leftover entry of an
  inbox emptied behind the index's back then gets the right time at once);
* a turn's ``begin`` overwrites it with its head's time: the head is the authority;
* a turn's ``finish`` removes it; the next ``begin`` puts it back.

Nothing else may be trusted to be exact (a crash between ``finish`` and the next ``begin``
leaves the conversation out until the sweeper adopts it, within ``stall_grace_s``; an inbox
trimmed by hand leaves its entry behind), so the reader heals what
it reads: an entry whose inbox is empty is removed, atomically with the check, and not reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from gateway.core.keys import Keys, as_text
from gateway.core.models import ConversationKey
from gateway.store.lua import LuaScript

__all__ = ["NOTE_WAITING_LUA", "Waiting", "oldest_waiting"]

#: Lua, prepended to the scripts that append to an inbox and see the append's result (admission,
#: dead-letter replay): ``note_waiting(waiting, conv, length, received, now)`` after an RPUSH
#: that left the inbox ``length`` long. The item's time (``now`` when it has none) when it became
#: the head, else an older head keeps its own.
NOTE_WAITING_LUA = """
local function note_waiting(waiting, conv, length, received, now)
  received = tonumber(received)
  if received <= 0 then received = now end
  if length == 1 then
    redis.call('ZADD', waiting, received, conv)
  else
    redis.call('ZADD', waiting, 'NX', received, conv)
  end
end
"""

#: Rounds of ``oldest_waiting`` spent when everything read was stale (healed) before giving up.
_ROUNDS = 3

# KEYS[1] waiting, KEYS[2..] the members' inboxes. ARGV: the members, in the same order. Drops
# each member whose inbox is empty (checked and removed in one step, so an append racing the
# read is never lost) and returns, per member, its current score, or false once dropped.
_HEAL = LuaScript("""
local out = {}
for i = 2, #KEYS do
  local member = ARGV[i - 1]
  if redis.call('LLEN', KEYS[i]) == 0 then
    redis.call('ZREM', KEYS[1], member)
    out[i - 1] = false
  else
    out[i - 1] = redis.call('ZSCORE', KEYS[1], member)
  end
end
return out
""")


@dataclass(frozen=True, slots=True)
class Waiting:
    """A conversation with an unanswered message: its key and its head's ``received_at``."""

    conversation: ConversationKey
    received_at: float


async def oldest_waiting(redis: aioredis.Redis, keys: Keys, *, limit: int) -> list[Waiting]:
    """Up to ``limit`` conversations with the oldest unanswered heads, oldest first.

    Reads the index, never an inbox item; entries whose inbox turned out empty are removed
    (and up to ``_ROUNDS`` batches read when a batch was all stale).

    Raises:
        RedisError, OSError: Redis did not answer.
    """
    found: list[Waiting] = []
    for _ in range(_ROUNDS):
        # Stale entries read in a round are removed, so each round reads from the top again.
        rows = cast("list[tuple[Any, float]]", await redis.zrange(keys.waiting, 0, limit - 1, withscores=True))
        if not rows:
            break
        members = [as_text(member) for member, _ in rows]
        convs: list[tuple[str, ConversationKey]] = []
        foreign: list[str] = []
        for member in members:
            try:
                convs.append((member, ConversationKey.parse(member)))
            except ValueError:
                foreign.append(member)  # only conversations belong here: never report it again
        if foreign:
            await redis.zrem(keys.waiting, *foreign)
        if convs:
            scores = await _HEAL(
                redis, [keys.waiting, *(keys.inbox(conv) for _, conv in convs)], [member for member, _ in convs]
            )
            found.extend(Waiting(conv, float(score)) for (_, conv), score in zip(convs, scores) if score is not None)
        if found or len(rows) < limit:
            break
    found.sort(key=lambda w: (w.received_at, str(w.conversation)))
    return found[:limit]
