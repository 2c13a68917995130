"""Following a Telegram group that became a supergroup (docs/PLATFORMS.md §1.5).

Telegram gives the supergroup a new chat id, says so with a service message in each chat
(``migrate_to_chat_id`` in the old one, ``migrate_from_chat_id`` in the new one) and refuses
sends to the old id (400 with ``parameters.migrate_to_chat_id``; PTB's ``ChatMigrated``).

Rather than moving Redis keys under a conversation a worker may be holding (a turn in flight,
its lease, ledger, fingerprints and watch all hang off the key), the conversation keeps its key
and the supergroup's chat is *aliased* to it: messages in the supergroup are filed under the old
chat's conversation key (so they continue the same OCS session), while their route carries the
new chat id. Sends still routed to the old id (a reply in flight, a watch push) are redirected.
Two hashes per channel hold this, written by whichever signal arrives first (either service
message, or a send's ``ChatMigrated``), idempotently.

The bot's membership of a migrated group no longer matters: the conversation continues in the
supergroup, whose own ``my_chat_member`` updates (filed under the same key) decide whether it is
gone. Telegram sends the supergroup's ``member`` at the upgrade and has been seen to send a
``left`` for the old group later (tdlib/telegram-bot-api#266), and webhooks deliver the two chats
in separate queues, so they come in either order: ``record_membership`` ignores a migrated
group, atomically with the migration's record, and a migration the bot saw happen clears a
``gone`` that an old-group update filed just before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from telegram import Update

from adapters.telegram.inbound import conversation_id
from adapters.telegram.keys import TelegramKeys
from gateway.core.errors import StoreUnavailable
from gateway.core.keys import Keys, as_text
from gateway.core.models import ConversationKey
from gateway.store.lua import LuaScript

__all__ = [
    "ChatMigration",
    "chat_migration",
    "conversation_chat",
    "current_chat",
    "record_membership",
    "record_migration",
]

# KEYS[1] the conversation's hash, KEYS[2] the channel's migrated groups; ARGV group chat id ('' for
# other chats), '1' gone / '0' back. One script, so a migration recorded at the same moment is
# either seen here or runs after (and clears what this wrote).
_MEMBERSHIP = LuaScript("""
if ARGV[1] ~= '' and redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return 0
end
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'gone', '1')
else
  redis.call('HDEL', KEYS[1], 'gone')
end
return 1
""")


@dataclass(frozen=True, slots=True)
class ChatMigration:
    """Group ``old_chat_id`` is now supergroup ``new_chat_id``."""

    old_chat_id: int
    new_chat_id: int


def chat_migration(update: Update) -> ChatMigration | None:
    """The migration a service message announces, from either side; None for anything else."""
    message = update.message
    if message is None:
        return None
    if message.migrate_to_chat_id:
        return ChatMigration(message.chat.id, int(message.migrate_to_chat_id))
    if message.migrate_from_chat_id:
        return ChatMigration(int(message.migrate_from_chat_id), message.chat.id)
    return None


async def record_migration(
    redis: aioredis.Redis, keys: Keys, channel: str, migration: ChatMigration, *, bot_in_chat: bool = False
) -> None:
    """Remember both directions (old → new for sends, new → old for conversation keys).

    ``bot_in_chat``: the bot received a migration notice, so it is a member of the supergroup;
    the group's chat-level conversation is then not gone, whatever the old group's
    ``my_chat_member`` said just before. (A send's ``ChatMigrated`` proves no membership.)

    Raises:
        StoreUnavailable: Redis did not take it (the update is then not acknowledged).
    """
    old, new = str(migration.old_chat_id), str(migration.new_chat_id)
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hset(TelegramKeys.of(keys).migrated(channel), old, new)
            # A group migrates once; if the old chat was itself an alias, keep the first key.
            pipe.hsetnx(TelegramKeys.of(keys).chat_alias(channel), new, old)
            if bot_in_chat:
                group = ConversationKey(channel, conversation_id(migration.old_chat_id))
                pipe.hdel(keys.conversation(group), "gone")
            await pipe.execute()
    except (RedisError, OSError) as exc:
        # No chat id in the message: the poller and the edge log it.
        raise StoreUnavailable("cannot record a Telegram group migration") from exc


async def record_membership(
    redis: aioredis.Redis, keys: Keys, key: ConversationKey, *, gone: bool, group_chat_id: int | None
) -> bool:
    """Mark conversation ``key`` gone (or not); False, writing nothing, when ``group_chat_id`` (the
    basic group the update came from) has migrated: the supergroup's membership decides now.

    Raises:
        StoreUnavailable: Redis is down (the update is then not acknowledged).
    """
    group = str(group_chat_id) if group_chat_id is not None else ""
    try:
        done = await _MEMBERSHIP(
            redis, [keys.conversation(key), TelegramKeys.of(keys).migrated(key.channel)], [group, "1" if gone else "0"]
        )
    except (RedisError, OSError) as exc:
        raise StoreUnavailable("cannot record a Telegram membership change") from exc
    return bool(done)


async def conversation_chat(redis: aioredis.Redis, keys: Keys, channel: str, chat_id: int) -> int | None:
    """The group chat id whose conversations supergroup ``chat_id`` continues, if it migrated.

    Raises:
        StoreUnavailable: Redis is down (the update is then not acknowledged).
    """
    try:
        value = await redis.hget(TelegramKeys.of(keys).chat_alias(channel), str(chat_id))
    except (RedisError, OSError) as exc:
        raise StoreUnavailable("cannot read Telegram chat aliases") from exc
    return int(as_text(value)) if value is not None else None


async def current_chat(redis: aioredis.Redis, keys: Keys, channel: str, chat_id: str) -> str:
    """Where a send to ``chat_id`` must go now: the supergroup if the group migrated.

    A Redis failure here falls back to ``chat_id``: the send then meets ``ChatMigrated`` and
    follows it anyway.
    """
    try:
        value = await redis.hget(TelegramKeys.of(keys).migrated(channel), chat_id)
    except (RedisError, OSError):
        return chat_id
    return as_text(value) if value is not None else chat_id
