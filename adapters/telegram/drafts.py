"""OCS's progress lines as a Telegram message draft (``sendMessageDraft``, Bot API 9.3+).

A draft is the "being written" bubble of a private chat: it shows the current line, each new
line under the same ``draft_id`` animates into it, and the answer's ``sendMessage`` replaces it.
It is ephemeral (about 30 s without an update) and never holds an answer: only progress lines go
into it, so the answer always arrives as a message of its own.

Drafts exist only in private chats. Where Telegram refuses one (an older Bot API server, a chat
that does not allow it) the chat is remembered for ``REFUSAL_TTL_S`` and not asked again on
every poll: the engine keeps "typing…" there. Drafts take the bot's pacing slot only when it is
free within a quarter of a second, so they never push the bot into flood control nor hold its
real messages up for long, and a skipped draft costs nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from telegram import Bot
from telegram.error import BadRequest, Forbidden, TelegramError

from adapters.telegram.keys import TelegramKeys
from gateway.core.keys import Keys
from gateway.core.models import Route
from gateway.store.pacing import take_slots

__all__ = ["DRAFT_REFRESH_S", "Drafts", "MAX_DRAFT_CHARS", "REFUSAL_TTL_S", "draft_id", "private_chat"]

log = logging.getLogger(__name__)

#: A draft fades about 30 s after its last update: the same line is sent again after this long.
DRAFT_REFRESH_S = 20.0
#: A chat whose draft Telegram refused is not asked again for this long.
REFUSAL_TTL_S = 3600.0
#: The Bot API takes 4096 characters; a progress line is one short sentence.
MAX_DRAFT_CHARS = 1000
#: A draft call must not hold the turn: the poll that carried the line waits for it.
_TIMEOUT_S = 5.0
#: A draft waits this long at most for the bot's send slot; a busy bot skips it.
_SLOT_WAIT_S = 0.25
#: Turns and chats remembered per process (the oldest are forgotten first).
_REMEMBERED = 4096


def draft_id(turn_id: str) -> int:
    """The draft's id for a turn: non-zero, 31 bits, the same for every line of the turn, so that
    each line replaces the last in one draft."""
    value = int.from_bytes(hashlib.sha256(turn_id.encode()).digest()[:4], "big") & 0x7FFFFFFF
    return value or 1


def private_chat(route: Route) -> bool:
    """Whether the route is a private chat (a route stored before routes had ``chat_type`` is
    one when its id is a user's, positive)."""
    chat_type = route.get("chat_type")
    if chat_type:
        return chat_type == "private"
    chat_id = route.get("chat_id", "")
    return chat_id.isdigit() and int(chat_id) > 0


class _Recent(OrderedDict[str, tuple[str, float]]):
    """A bounded map: adding beyond ``_REMEMBERED`` entries forgets the oldest."""

    def put(self, key: str, value: tuple[str, float]) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > _REMEMBERED:
            self.popitem(last=False)


class Drafts:
    """The drafts of one bot: which line each turn shows, and which chats refused."""

    def __init__(
        self,
        *,
        channel: str,
        redis: aioredis.Redis,
        keys: Keys,
        bot_interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._channel = channel
        self._redis = redis
        self._keys = keys
        self._bot_interval_s = bot_interval_s
        self._clock = clock
        self._shown = _Recent()  # turn id → (line, when sent)
        self._refused = _Recent()  # chat id → (Telegram's reason, until when)

    async def show(self, bot: Bot, route: Route, text: str, turn_id: str) -> bool:
        """Put ``text`` in the turn's draft; True if the chat shows it now. Never raises."""
        line = text.strip()[:MAX_DRAFT_CHARS]
        chat_id = route.get("chat_id", "")
        if not line or not chat_id or not private_chat(route) or self._is_refused(chat_id):
            return False
        now = self._clock()
        shown = self._shown.get(turn_id)
        if shown is not None and shown[0] == line and now - shown[1] < DRAFT_REFRESH_S:
            return True  # already on screen
        recent = shown is not None and now - shown[1] < DRAFT_REFRESH_S
        if not await self._bot_slot_free():
            return recent  # the last line is still showing; this one waits for the next poll
        thread = route.get("message_thread_id")
        try:
            await bot.send_message_draft(
                chat_id=int(chat_id),
                draft_id=draft_id(turn_id),
                text=line,
                message_thread_id=int(thread) if thread else None,
                read_timeout=_TIMEOUT_S,
                write_timeout=_TIMEOUT_S,
                connect_timeout=_TIMEOUT_S,
            )
        except (BadRequest, Forbidden) as exc:
            # Not a private chat after all, a Bot API without drafts, a user who blocked the bot
            # (the answer's own send reports that): typing… from now on in this chat.
            self._refused.put(chat_id, (exc.message, now + REFUSAL_TTL_S))
            log.debug("telegram %s: no drafts in this chat (%s)", self._channel, exc.message)
            return False
        except TelegramError as exc:  # flood control, the network: the next line tries again
            log.debug("telegram %s: draft not sent: %s", self._channel, exc.message)
            return recent
        self._shown.put(turn_id, (line, now))
        return True

    def _is_refused(self, chat_id: str) -> bool:
        refused = self._refused.get(chat_id)
        if refused is None:
            return False
        if refused[1] <= self._clock():
            del self._refused[chat_id]
            return False
        return True

    async def _bot_slot_free(self) -> bool:
        """Book the bot's next send slot if it comes within ``_SLOT_WAIT_S`` (and wait for it)."""
        try:
            slot = await take_slots(
                self._redis, [(TelegramKeys.of(self._keys).bot_pace(self._channel), self._bot_interval_s)],
                max_wait_s=_SLOT_WAIT_S,
            )
        except RedisError:
            return False
        if slot.granted and slot.wait_s > 0:
            await asyncio.sleep(slot.wait_s)
        return slot.granted
