"""Telegram updates (webhook POSTs and getUpdates alike) → ``Inbound`` events: the secret
check, the parse, group gating and the conversation keys.

Everything here is pure (no I/O): the adapter fetches the bot's own identity (getMe) and writes
membership changes to Redis; this module only decides.

What we drop, and why (docs/PLATFORMS.md §1.4): edited messages and channel posts (OCS has no "edit"),
messages from other bots (loops are possible again since Bot-to-Bot mode) except the anonymous
group admin, automatic forwards from a linked channel, service messages, and in groups anything
not addressed to the bot unless the channel answers everything. Dropped updates are still
answered 200 by the edge: a non-2xx makes Telegram retry and stalls the chat's queue (docs/PLATFORMS.md §1.3).
"""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from telegram import Chat, Message, Update, User

from adapters.telegram.addressing import (
    BotIdentity,
    addressed,
    parse_command,
    strip_leading_mention,
)
from adapters.telegram.config import TelegramChannelConfig
from adapters.telegram.content import message_content
from gateway.core import safe_json
from gateway.core.errors import PayloadInvalid, SignatureInvalid
from gateway.core.models import ConversationKey, Inbound, InboundKind

__all__ = [
    "BotIdentity",
    "MembershipChange",
    "SECRET_HEADER",
    "check_secret",
    "conversation_id",
    "membership_change",
    "needs_identity",
    "read_update",
    "to_inbound",
]

log = logging.getLogger(__name__)

#: Sent by Telegram on every webhook POST when setWebhook had a secret_token (docs/PLATFORMS.md §1.3).
SECRET_HEADER = "x-telegram-bot-api-secret-token"
#: Senders with ``is_bot`` set who stand for people: an anonymous group admin (GroupAnonymousBot,
#: real sender in ``sender_chat``, docs/PLATFORMS.md §1.4) and a user posting as their channel (Channel_Bot).
_HUMAN_PROXY_BOTS = frozenset({1087968824, 136817688})
_GROUP_TYPES = frozenset({Chat.GROUP, Chat.SUPERGROUP})
_CHAT_TYPES = frozenset({Chat.PRIVATE, *_GROUP_TYPES})

# What PTB's constructors and our reading of its objects raise on a body of the wrong shape (a
# string where an object belongs, a date past year 9999...). Only these are turned into 400s.
_SHAPE_ERRORS = (TypeError, ValueError, KeyError, AttributeError, OverflowError, IndexError)
# PTB turns every date into a datetime, and the C library says EOVERFLOW (an OSError) for Unix
# times near 2**62; de_json does no I/O, so an OSError from it can only be that.
_DE_JSON_ERRORS = (*_SHAPE_ERRORS, OSError)

# The fields the gateway reads, with their Bot API types, checked on the raw JSON before PTB
# sees it, so that a wrong type is refused by name. A nested table is an object with those
# fields, ``[table]`` an array of such objects, ``float`` any number. Absent and null fields are
# PTB's business.
_Fields = Mapping[str, Any]
_USER: _Fields = {"id": int, "is_bot": bool, "first_name": str, "last_name": str, "username": str}
_CHAT: _Fields = {"id": int, "type": str, "title": str, "username": str, "is_forum": bool}
_ENTITY: _Fields = {"type": str, "offset": int, "length": int, "user": _USER}
_FILE: _Fields = {"file_id": str, "file_unique_id": str, "file_size": int, "file_name": str, "mime_type": str}
_POINT: _Fields = {"latitude": float, "longitude": float}
_MESSAGE: _Fields = {
    "message_id": int, "date": int, "chat": _CHAT, "from": _USER, "sender_chat": _CHAT,
    "text": str, "caption": str, "entities": [_ENTITY], "caption_entities": [_ENTITY],
    "message_thread_id": int, "is_topic_message": bool, "is_automatic_forward": bool,
    "author_signature": str, "migrate_to_chat_id": int, "migrate_from_chat_id": int,
    "photo": [_FILE], "document": _FILE, "voice": _FILE, "audio": _FILE, "video": _FILE, "video_note": _FILE,
    "location": _POINT, "venue": {"location": _POINT, "title": str, "address": str},
}  # fmt: skip
_UPDATE_FIELDS: Mapping[str, _Fields] = {
    "message": _MESSAGE,
    "edited_message": _MESSAGE,
    "channel_post": _MESSAGE,
    "edited_channel_post": _MESSAGE,
    "callback_query": {"id": str, "from": _USER, "data": str, "message": _MESSAGE},
    "my_chat_member": {"chat": _CHAT, "from": _USER, "date": int, "new_chat_member": {"status": str, "user": _USER}},
}

_JSON_NAMES: Mapping[type, str] = {
    dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number", type(None): "null",
}  # fmt: skip

_P = ParamSpec("_P")
_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class MembershipChange:
    """The bot was blocked/removed (``gone``) or let back in, in the chat of ``key``."""

    key: ConversationKey
    gone: bool


def check_secret(headers: Mapping[str, str], secret: str) -> None:
    """Raise SignatureInvalid unless the secret-token header matches, compared in constant time."""
    sent = headers.get(SECRET_HEADER)
    if sent is None:
        raise SignatureInvalid(f"missing {SECRET_HEADER} header")
    if not hmac.compare_digest(sent.encode("utf-8"), secret.encode("utf-8")):
        raise SignatureInvalid(f"wrong {SECRET_HEADER}")


def read_update(body: bytes) -> Update | None:
    """Parse a webhook body; None for an update PTB cannot model (answered 200, then dropped).

    Raises:
        PayloadInvalid: the body is not strict JSON (``gateway.core.safe_json``), not an object with an
            integer ``update_id``, or a field has the wrong type or an impossible value.
    """
    data = safe_json.loads(body)
    if not isinstance(data, dict) or not _is_int(data.get("update_id")):
        raise PayloadInvalid("not a Telegram Update: needs an object with an integer update_id")
    for name, value in data.items():
        # Every field of an Update but update_id is an object (Bot API "Update").
        if name != "update_id" and value is not None and not isinstance(value, dict):
            raise PayloadInvalid(f"{name}: expected an object, got {_type_name(value)}")
        if name in _UPDATE_FIELDS and value is not None:
            _check_fields(value, _UPDATE_FIELDS[name], name)
    try:
        return Update.de_json(data, None)
    except _DE_JSON_ERRORS as exc:
        if isinstance(exc, TypeError) and "missing" in str(exc) and "required" in str(exc):
            # Legacy shapes (a "from" without is_bot, SOURCES.md) lack a field PTB requires.
            # Telegram must still get a 2xx, or it redelivers and holds the chat's queue
            # (docs/PLATFORMS.md §1.3); wrong types and impossible values are refused below instead.
            log.warning("telegram update %s has a shape PTB cannot read; ignored", data["update_id"])
            return None
        raise PayloadInvalid(f"{_failing_field(data)}: {type(exc).__name__}: {str(exc)[:160]}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_a(value: Any, expected: type) -> bool:
    if expected is int:
        return _is_int(value)
    if expected is float:  # a JSON number: integer or not
        return _is_int(value) or isinstance(value, float)
    return isinstance(value, expected)


def _type_name(value: Any) -> str:
    return _JSON_NAMES.get(type(value), type(value).__name__)


def _check_fields(data: Mapping[str, Any], fields: _Fields, where: str) -> None:
    """Raise PayloadInvalid naming the first field of ``data`` whose JSON type is not the Bot API's."""
    for name, expected in fields.items():
        value = data.get(name)
        if value is None:
            continue
        path = f"{where}.{name}"
        if isinstance(expected, Mapping):
            if not isinstance(value, dict):
                raise PayloadInvalid(f"{path}: expected an object, got {_type_name(value)}")
            _check_fields(value, expected, path)
        elif isinstance(expected, list):
            if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
                raise PayloadInvalid(f"{path}: expected an array of objects")
            for index, item in enumerate(value):
                _check_fields(item, expected[0], f"{path}.{index}")
        elif not _is_a(value, expected):
            raise PayloadInvalid(f"{path}: expected {_JSON_NAMES[expected]}, got {_type_name(value)}")


def _failing_field(data: Mapping[str, Any]) -> str:
    """The Update field PTB cannot read, found by reading each one alone."""
    for name, value in data.items():
        if name == "update_id":
            continue
        try:
            Update.de_json({"update_id": data["update_id"], name: value}, None)
        except _DE_JSON_ERRORS:
            return name
    return "update"


def _refusing_bad_shapes(read: Callable[_P, _R]) -> Callable[_P, _R]:
    """Our reading of PTB objects meets values PTB never type-checked (``text: 5``, an empty
    ``my_chat_member``): those errors mean a malformed update, a 400 naming the update field,
    never a 500. The traceback is logged so that a real bug here still shows."""

    @functools.wraps(read)
    def checked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return read(*args, **kwargs)
        except _SHAPE_ERRORS as exc:
            update = args[0] if args else kwargs.get("update")
            field = _update_field(update) if isinstance(update, Update) else "update"
            log.warning("telegram update of a shape %s cannot read", read.__name__, exc_info=True)
            raise PayloadInvalid(f"{field}: malformed ({type(exc).__name__})") from None

    return checked


def _update_field(update: Update) -> str:
    for name in ("message", "callback_query", "my_chat_member", "edited_message", "channel_post"):
        if getattr(update, name, None) is not None:
            return name
    return "update"


@_refusing_bad_shapes
def needs_identity(update: Update) -> bool:
    """Whether deciding on this update needs the bot's own id and username (groups, commands)."""
    message = update.message  # a button press is always for us: no identity needed
    if message is None:
        return False
    return message.chat.type in _GROUP_TYPES or (message.text or "").startswith("/")


def conversation_id(
    chat_id: int, *, thread_id: int | None = None, speaker_id: int | None = None
) -> str:
    """The ``ConversationKey.conversation`` of a chat, forum topic and (per_speaker) speaker."""
    parts = [f"chat:{chat_id}"]
    if thread_id is not None:
        parts.append(f"topic:{thread_id}")
    if speaker_id is not None:
        parts.append(f"user:{speaker_id}")
    return ":".join(parts)


@_refusing_bad_shapes
def membership_change(update: Update, channel: str, conversation_chat: int | None = None) -> MembershipChange | None:
    """The bot's own membership change: blocked/kicked/left → gone, let back in → not gone.

    Only the chat-level conversation is marked; topic and per-speaker conversations of a group
    learn it on their next send (403 → RecipientGone). ``conversation_chat`` as in ``to_inbound``.
    """
    member = update.my_chat_member
    if member is None:
        return None
    if member.chat is None or member.new_chat_member is None:
        raise PayloadInvalid("my_chat_member: needs chat and new_chat_member")
    status = member.new_chat_member.status
    key = ConversationKey(channel, conversation_id(conversation_chat if conversation_chat is not None else member.chat.id))
    if status in ("kicked", "left"):
        return MembershipChange(key, gone=True)
    if status in ("member", "administrator", "creator", "restricted"):
        return MembershipChange(key, gone=False)
    return None


@_refusing_bad_shapes
def to_inbound(
    update: Update,
    *,
    channel: str,
    config: TelegramChannelConfig,
    me: BotIdentity | None,
    received_at: float = 0.0,
    conversation_chat: int | None = None,
) -> Inbound | None:
    """The event for OCS in ``update``, or None when the update is not for the bot.

    ``conversation_chat``: the chat id to key the conversation by when it is not the update's
    own (a supergroup continuing its group's conversations, ``adapters.telegram.migration``).
    """
    if update.callback_query is not None:
        return _from_button(
            update, channel=channel, config=config, received_at=received_at, conversation_chat=conversation_chat
        )
    message = update.message  # edited_message, channel_post...: never for OCS
    if message is None or message.migrate_to_chat_id or message.migrate_from_chat_id:
        return None  # a migration notice: the adapter records it (adapters.telegram.migration)
    sender = message.from_user
    if sender is None or message.is_automatic_forward or message.chat.type not in _CHAT_TYPES:
        return None
    is_self = me is not None and sender.id == me.id
    if sender.is_bot and sender.id not in _HUMAN_PROXY_BOTS and (is_self or config.ignore_other_bots):
        return None

    group = message.chat.type in _GROUP_TYPES
    content = message_content(message)
    command = parse_command(message, me)
    if command is not None and command.for_other_bot:
        return None  # "/cmd@OtherBot": not ours, even when answering everything
    if group and config.group_answer == "mentions" and command is None and not addressed(message, me):
        return None
    if content.empty and command is None:
        return None  # service message: joins, pins, topic edits...

    speaker = message.sender_chat.id if message.sender_chat and sender.id in _HUMAN_PROXY_BOTS else sender.id
    thread = message.message_thread_id if message.is_topic_message else None
    key, route = _place(
        channel, config, message.chat, thread=thread, speaker=speaker, message_id=message.message_id,
        conversation_chat=conversation_chat,
    )

    kind, text, context = InboundKind.MESSAGE, content.text, {"telegram_chat_type": message.chat.type}
    if command is not None:
        if command.name == "reset":
            kind, text = InboundKind.RESET, ""
        elif command.name == "start":
            text = _start_text(command.args, config, context)
        else:
            text = command.text
    elif group:
        text = strip_leading_mention(text, me)
    return Inbound(
        key=key,
        event_id=str(update.update_id),
        kind=kind,
        sender_id=str(speaker),
        text=text,
        sender_name=_sender_name(message, sender),
        attachments=content.attachments,
        context=context,
        route=route,
        received_at=received_at,
    )


def _place(
    channel: str,
    config: TelegramChannelConfig,
    chat: Chat,
    *,
    thread: int | None,
    speaker: int,
    message_id: int,
    conversation_chat: int | None = None,
) -> tuple[ConversationKey, dict[str, str]]:
    """The conversation key and the reply route of a message in ``chat``.

    Groups get one conversation per forum topic, optionally per speaker, and answers that reply
    to the question (so they thread under it); a private chat is one conversation, no reply.
    The route's ``chat_type`` tells pacing a group from a private chat.
    """
    group = chat.type in _GROUP_TYPES
    conversation = conversation_id(
        conversation_chat if conversation_chat is not None else chat.id,
        thread_id=thread if group else None,
        speaker_id=speaker if group and config.group_conversation == "per_speaker" else None,
    )
    # The message's own id: an answer to a burst replies to its last message (``reply_route``).
    route = {"chat_id": str(chat.id), "chat_type": chat.type, "message_id": str(message_id)}
    if group and thread is not None:
        route["message_thread_id"] = str(thread)
    if group:
        route["reply_to"] = str(message_id)
    return ConversationKey(channel, conversation), route


def _sender_name(message: Message, sender: User) -> str:
    if sender.id in _HUMAN_PROXY_BOTS and message.sender_chat is not None:
        return message.author_signature or message.sender_chat.title or sender.full_name
    return sender.full_name


def _start_text(payload: str, config: TelegramChannelConfig, context: dict[str, Any]) -> str:
    """What OCS reads for ``/start <payload>`` (a deep link ``t.me/<bot>?start=<payload>``),
    per ``config.start_payload``: the payload as the text, in the context, or both."""
    if payload and config.start_payload in ("context", "both"):
        context["start_payload"] = payload
    if payload and config.start_payload in ("text", "both"):
        return payload
    return "/start"


def _from_button(
    update: Update,
    *,
    channel: str,
    config: TelegramChannelConfig,
    received_at: float,
    conversation_chat: int | None = None,
) -> Inbound | None:
    """An inline-button press, read as the user sending the button's data as text."""
    query = update.callback_query
    if query is None or not query.data or query.message is None:
        return None
    chat = query.message.chat
    if chat.type not in _CHAT_TYPES:
        return None
    message = query.message
    thread = message.message_thread_id if isinstance(message, Message) and message.is_topic_message else None
    key, route = _place(
        channel, config, chat, thread=thread, speaker=query.from_user.id, message_id=message.message_id,
        conversation_chat=conversation_chat,
    )
    return Inbound(
        key=key,
        event_id=str(update.update_id),
        kind=InboundKind.MESSAGE,
        sender_id=str(query.from_user.id),
        text=query.data,
        sender_name=query.from_user.full_name,
        context={"telegram_chat_type": chat.type, "telegram_callback_data": query.data},
        route=route,
        received_at=received_at,
    )
