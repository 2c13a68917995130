"""The Telegram channel's own Redis keys, under ``{namespace}:tg:`` (``Keys.for_adapter``):

================================  ======  ==================================================
key                               type    meaning
================================  ======  ==================================================
``tg:pace:{channel}:chat:{id}``   string  next free send slot (ms) for one Telegram chat
                                          (``gateway.store.pacing``); PX TTL
``tg:pace:{channel}:bot``         string  next free send slot (ms) for the whole bot; PX TTL
``tg:pace:{channel}:chat:{id}:last``  string  when the chat's last send was granted (ms, Redis
                                          time): its spacing holds over grants; PX TTL
``tg:pace:{channel}:sends``       list    the whole bot's last sends, newest first, as Redis
                                          times (µs), as many as a second allows
                                          (``gateway.store.pacing.take_send``); PX TTL
``tg:poll:{bot_id}:lease``        string  the replica that long-polls this Telegram bot (an
                                          owner token); PX TTL, renewed while it polls
``tg:poll:{bot_id}:offset``       string  getUpdates offset: the last stored update_id + 1
``tg:migrated:{channel}``         hash    Telegram group chat id → the supergroup it became
``tg:chat_alias:{channel}``       hash    supergroup chat id → the group chat id whose
                                          conversations (and OCS sessions) it continues
================================  ======  ==================================================
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.keys import AdapterKeys, Keys

__all__ = ["PREFIX", "TelegramKeys"]

#: Deployed data lives under it: never change it.
PREFIX = "tg"


@dataclass(frozen=True, slots=True)
class TelegramKeys:
    """Builds the Telegram channel's keys."""

    keys: AdapterKeys

    @classmethod
    def of(cls, keys: Keys) -> TelegramKeys:
        return cls(keys.for_adapter(PREFIX))

    def chat_pace(self, channel: str, chat_id: str) -> str:
        return self.keys.key("pace", channel, "chat", chat_id)

    def bot_pace(self, channel: str) -> str:
        return self.keys.key("pace", channel, "bot")

    def bot_sends(self, channel: str) -> str:
        return self.keys.key("pace", channel, "sends")

    def poll_lease(self, bot_id: str) -> str:
        return self.keys.key("poll", bot_id, "lease")

    def poll_offset(self, bot_id: str) -> str:
        return self.keys.key("poll", bot_id, "offset")

    def migrated(self, channel: str) -> str:
        return self.keys.key("migrated", channel)

    def chat_alias(self, channel: str) -> str:
        return self.keys.key("chat_alias", channel)
