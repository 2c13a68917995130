"""The TelegramAdapter's edge side and helpers against the fake Bot API on real Redis: verify,
parse (identity, membership, buttons), typing, and downloading a user's files."""

from __future__ import annotations

import logging

import pytest

from adapters.telegram.files import DOWNLOAD_LIMIT_BYTES
from gateway.core.errors import AttachmentUnavailable, RetryLater, SignatureInvalid
from gateway.core.models import Attachment, ConversationKey, InboundKind
from tests.adapters._telegram import SECRET, MakeEnv, make_telegram  # noqa: F401 - fixture
from tests.fakes.telegram_api import fake_telegram, message_update  # noqa: F401 - fixture
from tests.support.samples import load_sample

GROUP = -1009876543210


async def test_startup_learns_who_the_bot_is_once(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    assert env.adapter.describe()["username"] == "@clinic_bot"
    await env.adapter.parse(env.request(message_update(1, chat_id=GROUP, user_id=5, text="@clinic_bot hi",
                                                       chat_type="supergroup")))
    assert len(env.fake.calls("getMe")) == 1


async def test_verify_accepts_the_secret_and_refuses_others(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    update = message_update(1, chat_id=5, user_id=5, text="hi")
    await env.adapter.verify(env.request(update))
    for secret in (None, "wrong", SECRET.upper()):
        with pytest.raises(SignatureInvalid):
            await env.adapter.verify(env.request(update, secret=secret))


async def test_parse_private_text_makes_one_inbound(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    parsed = await env.adapter.parse(env.request(load_sample("telegram_private_text.json")))
    assert len(parsed.inbounds) == 1
    assert parsed.inbounds[0].text == "hello there"
    assert parsed.inbounds[0].key == ConversationKey("tg", "chat:218485655")


async def test_getme_failure_at_startup_is_retried_when_a_group_message_needs_it(make_telegram: MakeEnv) -> None:
    env = await make_telegram(startup=False)
    env.fake.fail_next("getMe", 500, "Internal Server Error")
    await env.adapter.startup()  # logs and carries on
    update = message_update(1, chat_id=GROUP, user_id=5, text="@clinic_bot hi", chat_type="supergroup")
    parsed = await env.adapter.parse(env.request(update))
    assert [i.text for i in parsed.inbounds] == ["hi"]
    assert [c.status for c in env.fake.calls("getMe")] == [500, 200]


async def test_private_text_needs_no_getme(make_telegram: MakeEnv) -> None:
    env = await make_telegram(startup=False)
    parsed = await env.adapter.parse(env.request(message_update(1, chat_id=5, user_id=5, text="hi")))
    assert len(parsed.inbounds) == 1
    assert env.fake.calls("getMe") == []


async def test_ignored_update_yields_nothing_but_is_not_an_error(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    for sample in ("telegram_legacy_doc_edited_message.json", "telegram_group_migrated_to_supergroup.json"):
        parsed = await env.adapter.parse(env.request(load_sample(sample)))
        assert parsed.inbounds == ()


async def test_block_marks_the_conversation_gone_and_unblock_clears_it(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    blocked = load_sample("telegram_my_chat_member_blocked.json")
    chat_id = 5342492667
    blocked["my_chat_member"]["chat"]["id"] = chat_id  # the same user as the unblock sample
    conv_key = env.keys.conversation(ConversationKey("tg", f"chat:{chat_id}"))

    assert (await env.adapter.parse(env.request(blocked))).inbounds == ()
    assert await env.redis.hget(conv_key, "gone") == b"1"

    assert (await env.adapter.parse(env.request(load_sample("telegram_my_chat_member_unblocked.json")))).inbounds == ()
    assert await env.redis.hget(conv_key, "gone") is None


async def test_button_press_is_answered_and_becomes_a_message(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    parsed = await env.adapter.parse(env.request(load_sample("telegram_callback_query.json")))
    assert [(i.kind, i.text) for i in parsed.inbounds] == [(InboundKind.MESSAGE, "button2_bijoy")]
    answered = env.fake.calls("answerCallbackQuery")
    assert [c.params["callback_query_id"] for c in answered] == ["4278655576057498272"]


async def test_start_payload_reaches_the_context(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    parsed = await env.adapter.parse(env.request(load_sample("telegram_private_start_deeplink.json")))
    assert parsed.inbounds[0].context["start_payload"] == "YnZiMTIzbWlzY0BnbWFpbC5jb20="


def test_bot_token_is_redacted_from_httpx_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    import adapters.telegram  # noqa: F401 - installs the filter

    with caplog.at_level(logging.INFO, logger="httpx"):
        logging.getLogger("httpx").info("HTTP Request: %s %s", "POST", "https://api.telegram.org/bot123:AAH-x_y/getMe")
        logging.getLogger("httpx").info("GET https://api.telegram.org/file/bot123:AAH-x_y/voice/f.oga")
    assert [r.getMessage() for r in caplog.records] == [
        "HTTP Request: POST https://api.telegram.org/bot<token>/getMe",
        "GET https://api.telegram.org/file/bot<token>/voice/f.oga",
    ]


# -- typing --------------------------------------------------------------------------------------


async def test_working_shows_typing_in_the_topic(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    await env.adapter.show_working({"chat_id": str(GROUP), "message_thread_id": "10", "reply_to": "3"})
    [call] = env.fake.calls("sendChatAction")
    assert call.params == {"chat_id": GROUP, "action": "typing", "message_thread_id": 10}


async def test_typing_failure_is_swallowed(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    env.fake.block_chat(5)
    await env.adapter.show_working({"chat_id": "5"})
    assert env.fake.calls("sendChatAction")[0].status == 403


# -- downloads -----------------------------------------------------------------------------------


async def test_download_fetches_the_file_bytes(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    env.fake.add_file("VOICE1", b"OggS...", file_path="voice/file_0.oga")
    got = await env.adapter.download(Attachment("VOICE1", "voice.ogg", "audio/ogg", 7), {"chat_id": "5"})
    assert (got.name, got.content_type, got.data) == ("voice.ogg", "audio/ogg", b"OggS...")


async def test_file_known_to_be_over_20_mib_is_refused_without_asking(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    with pytest.raises(AttachmentUnavailable, match="20 MiB"):
        await env.adapter.download(Attachment("BIG", "big.zip", size=DOWNLOAD_LIMIT_BYTES + 1), {"chat_id": "5"})
    assert env.fake.calls("getFile") == []


async def test_file_reported_over_20_mib_by_getfile_is_refused(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    env.fake.add_file("BIG", b"x", size=DOWNLOAD_LIMIT_BYTES + 1)
    with pytest.raises(AttachmentUnavailable, match=r"(?i)file is too big"):
        await env.adapter.download(Attachment("BIG", "big.zip"), {"chat_id": "5"})


async def test_file_of_exactly_20_mib_is_within_the_limit(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    env.fake.add_file("EDGE", b"x", size=DOWNLOAD_LIMIT_BYTES)
    got = await env.adapter.download(Attachment("EDGE", "edge.bin", size=DOWNLOAD_LIMIT_BYTES), {"chat_id": "5"})
    assert got.data == b"x"


async def test_unknown_file_is_unavailable(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    with pytest.raises(AttachmentUnavailable):
        await env.adapter.download(Attachment("NOPE", "x.bin"), {"chat_id": "5"})


async def test_rate_limited_download_is_retried_later(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    env.fake.add_file("F", b"data")
    env.fake.rate_limit_next("getFile", retry_after=4)
    with pytest.raises(RetryLater) as caught:
        await env.adapter.download(Attachment("F", "f.bin"), {"chat_id": "5"})
    assert caught.value.retry_after_s == 4
