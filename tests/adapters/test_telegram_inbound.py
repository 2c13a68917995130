"""Telegram updates → Inbound: the secret check, every sample payload, gating, keys, commands."""

from __future__ import annotations

import json
from typing import Any

import pytest

from adapters.telegram.config import TelegramChannelConfig
from adapters.telegram.inbound import (
    BotIdentity,
    check_secret,
    membership_change,
    needs_identity,
    read_update,
    to_inbound,
)
from gateway.core.config import Secret
from gateway.core.errors import PayloadInvalid, SignatureInvalid
from gateway.core.models import Attachment, ConversationKey, Inbound, InboundKind
from tests.fakes.telegram_api import message_update
from tests.support.samples import load_sample

ME = BotIdentity(id=777000111, username="clinic_bot")
GROUP = -1001234567890


def settings(**overrides: Any) -> TelegramChannelConfig:
    return TelegramChannelConfig.model_validate(
        {"type": "telegram", "bot": "demo", "token": Secret("777000111:AAA"), "webhook_secret": Secret("s3cret"), **overrides}
    )


def inbound(update: dict[str, Any], me: BotIdentity | None = ME, **overrides: Any) -> Inbound | None:
    parsed = read_update(json.dumps(update).encode())
    assert parsed is not None
    return to_inbound(parsed, channel="tg", config=settings(**overrides), me=me, received_at=12.5)


def group_update(text: str | None, *, user_id: int = 42, **fields: Any) -> dict[str, Any]:
    return message_update(9001, chat_id=GROUP, user_id=user_id, text=text, chat_type="supergroup", **fields)


# -- verify ------------------------------------------------------------------------------------


def test_matching_secret_header_is_accepted() -> None:
    check_secret({"x-telegram-bot-api-secret-token": "s3cret"}, "s3cret")


@pytest.mark.parametrize(
    "headers", [{}, {"x-telegram-bot-api-secret-token": "wrong"}, {"x-telegram-bot-api-secret-token": ""}]
)
def test_missing_or_wrong_secret_header_is_refused(headers: dict[str, str]) -> None:
    with pytest.raises(SignatureInvalid):
        check_secret(headers, "s3cret")


# -- parse: shapes -----------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"message": {}}', b'{"update_id": "7"}', b"\xff\xfe"])
def test_body_that_is_not_an_update_is_payload_invalid(body: bytes) -> None:
    with pytest.raises(PayloadInvalid):
        read_update(body)


def test_legacy_shaped_update_is_ignored_not_refused() -> None:
    # The official guide's edited_message has no "from.is_bot": PTB cannot model it, but a 4xx
    # would make Telegram redeliver it for a day and hold the chat's queue (docs/PLATFORMS.md §1.3).
    body = json.dumps(load_sample("telegram_legacy_doc_edited_message.json")).encode()
    assert read_update(body) is None


SAMPLE_EXPECTATIONS: dict[str, dict[str, Any] | None] = {
    "telegram_private_text.json": {
        "text": "hello there", "conversation": "chat:218485655", "event_id": "892252934",
        "sender_id": "218485655", "sender_name": "Waffle",
        "route": {"chat_id": "218485655", "chat_type": "private", "message_id": "6557"},
    },
    "telegram_private_start_deeplink.json": {
        "text": "/start", "conversation": "chat:996202131",
        "context": {"telegram_chat_type": "private", "start_payload": "YnZiMTIzbWlzY0BnbWFpbC5jb20="},
    },
    "telegram_private_text_unicode_emoji.json": {"text": "Лол кек 😂", "sender_name": "Андрей Власов"},
    "telegram_photo_with_caption.json": {
        "text": "www.example.com",
        "attachments": (Attachment(
            "AgACAgQAAxkBAAINhGKvijUVSn2i3980bQIIc1fqWGNCAAJpvDEbEmaBUfuA43fR-BnlAQADAgADeQADJAQ",
            "photo_AQADabwxGxJmgVF-.jpg", "image/jpeg", 162061),),
    },
    "telegram_document.json": {
        "text": "Q3 report, see page 2",
        "attachments": (Attachment("AwADBAADbXXXXXXXXXXXGBdhD2l6_XX", "Testfile.pdf", "application/pdf", 536392),),
    },
    "telegram_voice.json": {
        # Speech: its words become the text once heard (docs/VOICE.md); the sample's duration 0 says nothing.
        "text": "",
        "attachments": (Attachment("AwcccccccDH1JaB7w_gyFjYQxVAg", "voice_AgADbAEAAn8VSFY.ogg", "audio/ogg", 10481,
                                   voice=True),),
    },
    "telegram_sticker.json": {"text": "[sticker 😡]", "attachments": ()},
    "telegram_supergroup_command_reply_in_thread.json": {
        # A reply thread in a supergroup that is not a forum: one conversation for the chat.
        "text": "/report", "conversation": "chat:-1001293752024",
        "route": {"chat_id": "-1001293752024", "chat_type": "supergroup", "message_id": "134546", "reply_to": "134546"},
    },
    "telegram_callback_query.json": {
        "text": "button2_bijoy", "conversation": "chat:996202131", "sender_id": "996202131",
        "context": {"telegram_chat_type": "private", "telegram_callback_data": "button2_bijoy"},
    },
    "telegram_message_from_anonymous_admin_bot.json": None,  # in a group, not addressed to us
    "telegram_group_migrated_to_supergroup.json": None,
    "telegram_my_chat_member_blocked.json": None,
    "telegram_my_chat_member_unblocked.json": None,
}


@pytest.mark.parametrize("sample", sorted(SAMPLE_EXPECTATIONS))
def test_every_sample_update_parses_as_documented(sample: str) -> None:
    data = load_sample(sample)
    result = inbound(data)
    expected = SAMPLE_EXPECTATIONS[sample]
    if expected is None:
        assert result is None
        return
    assert result is not None
    assert result.kind is InboundKind.MESSAGE
    assert result.event_id == str(data["update_id"])
    assert result.key.channel == "tg"
    assert result.received_at == 12.5
    for name, value in expected.items():
        actual = result.key.conversation if name == "conversation" else getattr(result, name)
        assert actual == value, name


def test_anonymous_group_admin_is_a_person_not_a_bot() -> None:
    result = inbound(load_sample("telegram_message_from_anonymous_admin_bot.json"), group_answer="all")
    assert result is not None
    assert result.text == "text"
    assert result.sender_id == "-1001160242915"  # the group it speaks for, not GroupAnonymousBot
    assert result.sender_name == "TITLE2"


@pytest.mark.parametrize(
    ("sample", "gone"), [("telegram_my_chat_member_blocked.json", True), ("telegram_my_chat_member_unblocked.json", False)]
)
def test_block_and_unblock_are_membership_changes(sample: str, gone: bool) -> None:
    update = read_update(json.dumps(load_sample(sample)).encode())
    assert update is not None
    change = membership_change(update, "tg")
    assert change is not None
    assert change.gone is gone
    chat_id = load_sample(sample)["my_chat_member"]["chat"]["id"]
    assert change.key == ConversationKey("tg", f"chat:{chat_id}")


# -- parse: what is ignored --------------------------------------------------------------------


def test_edited_messages_and_channel_posts_are_ignored() -> None:
    message = message_update(5, chat_id=1, user_id=1, text="hi")["message"]
    assert inbound({"update_id": 5, "edited_message": {**message, "edit_date": 1}}) is None
    post = {**message, "chat": {"id": -100777, "type": "channel", "title": "news"}}
    del post["from"]
    assert inbound({"update_id": 6, "channel_post": post}) is None


def test_messages_from_other_bots_are_ignored_unless_allowed() -> None:
    update = message_update(5, chat_id=1, user_id=555, text="beep")
    update["message"]["from"]["is_bot"] = True
    assert inbound(update) is None
    assert inbound(update, ignore_other_bots=False) is not None


def test_own_messages_are_ignored_even_when_other_bots_are_allowed() -> None:
    update = group_update("echo", user_id=ME.id)
    update["message"]["from"]["is_bot"] = True
    assert inbound(update, ignore_other_bots=False, group_answer="all") is None


def test_service_messages_and_automatic_forwards_are_ignored() -> None:
    joined = group_update(None, new_chat_members=[{"id": 9, "is_bot": False, "first_name": "N"}])
    assert inbound(joined, group_answer="all") is None
    forwarded = group_update("from the channel", is_automatic_forward=True)
    assert inbound(forwarded, group_answer="all") is None


# -- group gating ------------------------------------------------------------------------------


def test_group_message_not_addressed_to_the_bot_is_ignored() -> None:
    assert inbound(group_update("just chatting")) is None
    assert inbound(group_update("hey @someone_else look")) is None


def test_group_mention_is_answered_without_the_mention() -> None:
    result = inbound(group_update("@clinic_bot what are your hours?"))
    assert result is not None
    assert result.text == "what are your hours?"
    assert result.route == {"chat_id": str(GROUP), "chat_type": "supergroup", "message_id": "9001", "reply_to": "9001"}


def test_group_text_mention_of_the_bot_is_answered() -> None:
    entity = {"type": "text_mention", "offset": 0, "length": 6, "user": {"id": ME.id, "is_bot": True, "first_name": "Clinic"}}
    assert inbound(group_update("Clinic, help", entities=[entity])) is not None


def test_group_reply_to_the_bot_is_answered() -> None:
    replied = {"message_id": 1, "date": 1, "chat": {"id": GROUP, "type": "supergroup"},
               "from": {"id": ME.id, "is_bot": True, "first_name": "Clinic", "username": "clinic_bot"}, "text": "earlier"}
    assert inbound(group_update("and then?", reply_to_message=replied)) is not None


def test_forum_topic_starter_is_not_a_reply_to_the_bot() -> None:
    # In a forum every message "replies" to the topic's creation message, even one the bot made.
    starter = {"message_id": 10, "date": 1, "chat": {"id": GROUP, "type": "supergroup"},
               "from": {"id": ME.id, "is_bot": True, "first_name": "Clinic"},
               "forum_topic_created": {"name": "Help", "icon_color": 1}}
    update = group_update("chatting", message_thread_id=10, is_topic_message=True, reply_to_message=starter)
    assert inbound(update) is None


def test_group_command_addressed_to_the_bot_is_answered_with_suffix_stripped() -> None:
    result = inbound(group_update("/help@clinic_bot with forms"))
    assert result is not None
    assert result.text == "/help with forms"


def test_command_for_another_bot_is_ignored_even_when_answering_everything() -> None:
    assert inbound(group_update("/help@other_bot"), group_answer="all") is None


def test_group_answer_all_takes_every_message() -> None:
    result = inbound(group_update("just chatting"), group_answer="all")
    assert result is not None and result.text == "just chatting"


def test_group_without_bot_identity_answers_nothing_addressed() -> None:
    assert inbound(group_update("@clinic_bot hi"), me=None) is None


# -- conversation keys and routes --------------------------------------------------------------


def test_private_chat_is_one_conversation_and_replies_are_not_threaded() -> None:
    result = inbound(message_update(3, chat_id=55, user_id=55, text="hi"))
    assert result is not None
    assert result.key == ConversationKey("tg", "chat:55")
    assert "reply_to" not in result.route


@pytest.mark.parametrize(
    ("mode", "topic", "conversation"),
    [
        ("per_chat", False, f"chat:{GROUP}"),
        ("per_chat", True, f"chat:{GROUP}:topic:10"),
        ("per_speaker", False, f"chat:{GROUP}:user:42"),
        ("per_speaker", True, f"chat:{GROUP}:topic:10:user:42"),
    ],
)
def test_group_conversation_keys_follow_topics_and_speakers(mode: str, topic: bool, conversation: str) -> None:
    extra: dict[str, Any] = {"message_thread_id": 10, "is_topic_message": True} if topic else {}
    result = inbound(group_update("@clinic_bot hi", **extra), group_conversation=mode)
    assert result is not None
    assert result.key.conversation == conversation
    assert result.route.get("message_thread_id") == ("10" if topic else None)


def test_two_topics_of_one_forum_are_separate_conversations() -> None:
    first = inbound(group_update("@clinic_bot a", message_thread_id=10, is_topic_message=True))
    second = inbound(group_update("@clinic_bot b", message_thread_id=11, is_topic_message=True))
    assert first is not None and second is not None
    assert first.key != second.key


# -- commands and content ----------------------------------------------------------------------


def test_reset_command_is_a_reset_event() -> None:
    result = inbound(message_update(3, chat_id=55, user_id=55, text="/reset"))
    assert result is not None and result.kind is InboundKind.RESET and result.text == ""
    group = inbound(group_update("/reset@clinic_bot"))
    assert group is not None and group.kind is InboundKind.RESET


def test_start_without_payload_has_no_start_payload() -> None:
    result = inbound(message_update(3, chat_id=55, user_id=55, text="/start"))
    assert result is not None
    assert result.text == "/start" and "start_payload" not in result.context


def test_other_commands_pass_through_as_text() -> None:
    result = inbound(message_update(3, chat_id=55, user_id=55, text="/help me please"))
    assert result is not None and result.kind is InboundKind.MESSAGE and result.text == "/help me please"


@pytest.mark.parametrize(
    ("fields", "text"),
    [
        ({"location": {"latitude": 51.5, "longitude": -0.12}}, "[location: 51.500000, -0.120000]"),
        ({"contact": {"phone_number": "+4412345", "first_name": "Ada", "last_name": "L"}}, "[contact: Ada L, +4412345]"),
    ],
)
def test_content_without_a_file_becomes_a_readable_placeholder(fields: dict[str, Any], text: str) -> None:
    result = inbound(message_update(3, chat_id=55, user_id=55, **fields))
    assert result is not None and result.text == text and result.attachments == ()


def test_identity_is_needed_only_for_groups_and_commands() -> None:
    def needs(update: dict[str, Any]) -> bool:
        parsed = read_update(json.dumps(update).encode())
        assert parsed is not None
        return needs_identity(parsed)

    assert not needs(message_update(3, chat_id=55, user_id=55, text="hi"))
    assert needs(message_update(3, chat_id=55, user_id=55, text="/start"))
    assert needs(group_update("hi"))
