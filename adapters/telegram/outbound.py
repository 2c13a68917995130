"""Sending to Telegram: messages, files and typing, paced, with PTB errors translated into ours.

PTB classifies the Bot API's answers by HTTP status and ``parameters`` (docs/PLATFORMS.md §1.2);
``translate`` maps its classes onto ``gateway.core.errors`` in one table, keeping the cause. Mind
the PTB wart: ``BadRequest`` and ``TimedOut`` subclass ``NetworkError``, so they are matched
before it, or a permanent 400 would be retried forever.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from datetime import timedelta
from typing import Any

import redis.asyncio as aioredis
from telegram import Bot, InputFile, ReplyParameters
from telegram.constants import ChatAction
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
    TimedOut,
)

from adapters.telegram.keys import TelegramKeys
from gateway.core.channel import VoiceNote
from gateway.core.errors import (
    DeliveryError,
    DeliveryRejected,
    PacingWait,
    RecipientGone,
    RetryLater,
)
from gateway.core.keys import Keys
from gateway.core.models import Outgoing, ReplyAttachment, Route
from gateway.store.pacing import Clearance, take_send

__all__ = [
    "UPLOAD_LIMIT_BYTES",
    "chat_interval",
    "pace",
    "retry_after_seconds",
    "send_file",
    "send_link",
    "send_text",
    "send_typing",
    "send_voice",
    "translate",
]

log = logging.getLogger(__name__)

#: Bot API upload limit for documents (50 MB); bigger files go out as a link instead.
UPLOAD_LIMIT_BYTES = 50 * 1024 * 1024
#: sendPhoto takes at most 10 MB and only these formats; other images go as documents.
_PHOTO_LIMIT_BYTES = 10 * 1024 * 1024
_PHOTO_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})
#: Flood limits (docs/PLATFORMS.md §1.5): about 1 message/s per private chat, at most ~20 a minute in a
#: group, ~30/s for the bot. The channel config sets the intervals (``private_interval_s``,
#: ``group_interval_s``, ``bot_interval_s``); these are only what a bare ``pace`` call uses. The
#: bot's 25 (in any sliding second, on Redis's clock) leaves Telegram's ~30 room for what the
#: grants cannot see: the time from a grant to Telegram's receipt varies per request.
CHAT_INTERVAL_S = 1.0
BOT_INTERVAL_S = 1 / 25
#: Chat types Telegram paces as groups (a channel post is paced like one too).
_GROUP_CHAT_TYPES = frozenset({"group", "supergroup", "channel"})
#: A pacing wait up to this (in all, for one send) is booked and slept; a longer one books
#: nothing and goes back to the queue (``PacingWait``).
MAX_PACING_SLEEP_S = 1.5
#: After a network failure or a timeout, try again this much later.
NETWORK_RETRY_S = 5.0


def translate(exc: TelegramError) -> DeliveryError:
    """The gateway error for a PTB error (raise it ``from exc``)."""
    if isinstance(exc, RetryAfter):
        return RetryLater(retry_after_seconds(exc), "telegram flood control (429)", rate_limited=True)
    if isinstance(exc, ChatMigrated):
        return RecipientGone("group moved to a supergroup", new_chat_id=str(exc.new_chat_id))
    if isinstance(exc, Forbidden):
        # 403: blocked by the user, kicked from the group, user deactivated (docs/PLATFORMS.md §1.2).
        return RecipientGone(exc.message)
    if isinstance(exc, BadRequest):
        if "chat not found" in exc.message.lower():
            return RecipientGone(exc.message)
        return DeliveryRejected(exc.message)
    if isinstance(exc, InvalidToken):
        return DeliveryRejected("Telegram rejected the bot token: check the channel's token")
    if isinstance(exc, (TimedOut, NetworkError)):
        # Includes 5xx. A timed-out send may have gone through; one duplicate beats a loss.
        return RetryLater(NETWORK_RETRY_S, f"telegram unreachable: {exc.message}")
    return DeliveryRejected(f"telegram: {exc.message}")


def retry_after_seconds(exc: RetryAfter) -> float:
    """The wait Telegram asked for, in seconds."""
    # PTB 22 returns an int or a timedelta depending on PTB_TIMEDELTA and warns about the change.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value: Any = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def chat_interval(chat_type: str | None, *, private_s: float, group_s: float) -> float:
    """The spacing between two sends in one chat: groups get Telegram's per-group limit; a
    route without a type (stored before routes carried one) is paced as a private chat."""
    return group_s if chat_type in _GROUP_CHAT_TYPES else private_s


async def pace(
    redis: aioredis.Redis,
    keys: Keys,
    channel: str,
    chat_id: str,
    *,
    chat_interval_s: float = CHAT_INTERVAL_S,
    bot_interval_s: float = BOT_INTERVAL_S,
) -> int:
    """Wait for this chat's and this bot's next send slot (shared by every worker), then take
    the send.

    Both slots are booked in one script or neither is: a sender sent back to the queue holds no
    slot that would delay the others. The send itself is granted only once the slot is due, on
    Redis's clock, and while the bot's last second allows it: a sender that woke late does not
    add to a second already full.

    Returns:
        The grant's time on Redis's clock, in µs.

    Raises:
        PacingWait: the wait is long; nothing was booked and the worker should come back then
            rather than hold a thread.
    """
    tg_keys = TelegramKeys.of(keys)
    chat = (tg_keys.chat_pace(channel, chat_id), chat_interval_s)
    bot = (tg_keys.bot_pace(channel), tg_keys.bot_sends(channel), bot_interval_s)
    slot = await take_send(redis, chat=chat, bot=bot, max_wait_s=MAX_PACING_SLEEP_S)
    slept = 0.0
    while slot.clearance is not Clearance.SEND:
        if slot.clearance is Clearance.REFUSED or slept + slot.wait_s > MAX_PACING_SLEEP_S:
            raise PacingWait(slot.wait_s, "pacing sends to stay under Telegram's flood limits")
        await asyncio.sleep(slot.wait_s)
        slept += slot.wait_s
        slot = await take_send(redis, chat=chat, bot=bot, max_wait_s=MAX_PACING_SLEEP_S, holding=True)
    return slot.at_us


def _target(route: Route) -> dict[str, Any]:
    """chat_id, topic and reply-to of a route as Bot API arguments."""
    args: dict[str, Any] = {"chat_id": int(route["chat_id"])}
    if route.get("message_thread_id"):
        args["message_thread_id"] = int(route["message_thread_id"])
    if route.get("reply_to"):
        # Without allow_sending_without_reply a deleted question makes the answer fail (400).
        args["reply_parameters"] = ReplyParameters(int(route["reply_to"]), allow_sending_without_reply=True)
    return args


def _entities_refused(exc: BadRequest) -> bool:
    return "can't parse entities" in exc.message.lower()


async def send_text(bot: Bot, route: Route, outgoing: Outgoing) -> str:
    """Send one text chunk; if Telegram refuses its HTML, send the plain twin instead.

    Raises:
        TelegramError: anything else; the caller translates it.
    """
    target = _target(route)
    parse_mode = outgoing.hints.get("parse_mode")
    try:
        message = await bot.send_message(text=outgoing.text, parse_mode=parse_mode, **target)
    except BadRequest as exc:
        if not parse_mode or not _entities_refused(exc):
            raise
        # Our renderer should never produce bad HTML; if it does, words beat formatting.
        log.warning("telegram refused %s formatting (%s); sent as plain text", parse_mode, exc.message)
        message = await bot.send_message(text=outgoing.plain or outgoing.text, **target)
    return str(message.message_id)


async def send_link(bot: Bot, route: Route, attachment: ReplyAttachment) -> str:
    """Stand-in for a file over the upload limit: its name and URL as a text message."""
    text = f"{attachment.name} ({attachment.size // (1024 * 1024)} MB): {attachment.content_url}"
    message = await bot.send_message(text=text, **_target(route))
    return str(message.message_id)


async def send_file(bot: Bot, route: Route, attachment: ReplyAttachment, data: bytes) -> str:
    """Upload a file: as a photo when Telegram can show it inline, else as a document."""
    target = _target(route)
    upload = InputFile(data, filename=attachment.name)
    if attachment.content_type.lower() in _PHOTO_TYPES and len(data) <= _PHOTO_LIMIT_BYTES:
        message = await bot.send_photo(photo=upload, **target)
    else:
        message = await bot.send_document(document=upload, **target)
    return str(message.message_id)


async def send_voice(bot: Bot, route: Route, note: VoiceNote) -> str:
    """A spoken answer as a voice note (sendVoice: OGG/Opus, docs/PLATFORMS.md §1.5), without a
    caption: its words went before it as text."""
    duration = round(note.duration_s) if note.duration_s else None
    message = await bot.send_voice(voice=InputFile(note.data, filename=note.name), duration=duration, **_target(route))
    return str(message.message_id)


async def send_typing(bot: Bot, route: Route) -> None:
    """Show "typing…" for about 5 s (docs/PLATFORMS.md §1.5); failures are only logged."""
    target = _target(route)
    target.pop("reply_parameters", None)
    try:
        await bot.send_chat_action(action=ChatAction.TYPING, **target)
    except TelegramError as exc:
        log.debug("telegram typing indicator failed for chat %s: %s", route.get("chat_id"), exc.message)
