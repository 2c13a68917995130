"""Who a Telegram message is for: bot commands, mentions and replies (group gating).

In a group the bot answers only what is addressed to it (docs/PLATFORMS.md §1.4, privacy mode): a
command (bare, or ``/cmd@ThisBot``), an ``@mention`` or text mention of the bot, or a reply to one
of its messages. Telegram's privacy mode delivers exactly these to a bot by default, so the
gateway's view and Telegram's agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from telegram import Message, MessageEntity

__all__ = ["BotIdentity", "Command", "addressed", "parse_command", "strip_leading_mention"]

_LEADING_MENTION = re.compile(r"^@(\w+)[\s,:]*", re.ASCII)


@dataclass(frozen=True, slots=True)
class BotIdentity:
    """Who the bot is (from getMe), for mentions, replies and ``/cmd@name`` in groups."""

    id: int
    username: str


@dataclass(frozen=True, slots=True)
class Command:
    """A bot command at the start of a message: ``/name@target args``."""

    name: str  # lower-case, without "/" and "@bot"
    args: str
    text: str  # the message text with our "@bot" suffix removed
    for_other_bot: bool


def parse_command(message: Message, me: BotIdentity | None) -> Command | None:
    """The bot command the message starts with, if any (a bot_command entity at offset 0)."""
    text = message.text or ""
    entity = next((e for e in message.entities if e.type == MessageEntity.BOT_COMMAND and e.offset == 0), None)
    if entity is None:
        return None
    word = message.parse_entity(entity)
    name, _, target = word[1:].partition("@")
    rest = text[len(word) :]
    ours = me is not None and target.lower() == me.username.lower()
    return Command(
        name=name.lower(),
        args=rest.strip(),
        text=f"/{name}{rest}" if ours or not target else text,
        for_other_bot=bool(target) and not ours,
    )


def addressed(message: Message, me: BotIdentity | None) -> bool:
    """Whether a group message is for the bot: mentioned, or a reply to one of its messages."""
    if me is None:
        return False
    entities = message.parse_entities() or message.parse_caption_entities()
    for entity, text in entities.items():
        if entity.type == MessageEntity.MENTION and text[1:].lower() == me.username.lower():
            return True
        if entity.type == MessageEntity.TEXT_MENTION and entity.user is not None and entity.user.id == me.id:
            return True
    replied = message.reply_to_message
    # In forum topics every message "replies" to the topic's creation message: not a real reply.
    return (
        replied is not None
        and replied.forum_topic_created is None
        and replied.from_user is not None
        and replied.from_user.id == me.id
    )


def strip_leading_mention(text: str, me: BotIdentity | None) -> str:
    """"@bot what time is it?" → "what time is it?"; other mentions stay."""
    match = _LEADING_MENTION.match(text)
    if me is None or match is None or match.group(1).lower() != me.username.lower():
        return text
    return text[match.end() :] or text
