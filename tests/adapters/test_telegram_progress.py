"""Telegram progress (issue 16): OCS's progress lines as a message draft in private chats,
through the real python-telegram-bot against the fake Bot API. Where a draft cannot be shown
(groups, a refusal, flood control, a busy bot) the adapter answers False, so the engine keeps
"typing…"; the answer always arrives as a message of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from telegram import Bot
from telegram.request import HTTPXRequest

from adapters.telegram.drafts import DRAFT_REFRESH_S, REFUSAL_TTL_S, Drafts, draft_id, private_chat
from adapters.telegram.keys import TelegramKeys
from gateway.core.keys import Keys
from gateway.core.models import Outgoing
from gateway.store.pacing import reserve_slot
from tests.adapters._telegram import TOKEN, MakeEnv, make_telegram
from tests.fakes.telegram_api import DRAFT_PEER_INVALID, FakeTelegram, fake_telegram

__all__ = ["fake_telegram", "make_telegram"]

PRIVATE = {"chat_id": "42", "chat_type": "private", "reply_to": "7"}
GROUP = {"chat_id": "-100500", "chat_type": "supergroup", "reply_to": "7"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def drafts_env(fake_telegram: FakeTelegram, redis_url: str) -> AsyncIterator[tuple[Drafts, Bot, Clock]]:
    """``Drafts`` on a clock the test moves, with a PTB Bot pointed at the fake."""
    fake_telegram.add_bot(TOKEN, username="clinic_bot")
    redis = aioredis.Redis.from_url(redis_url)
    request = HTTPXRequest()
    bot = Bot(TOKEN, base_url=f"{fake_telegram.url}/bot", request=request)
    clock = Clock()
    yield Drafts(channel="tg", redis=redis, keys=Keys(), bot_interval_s=1 / 25, clock=clock), bot, clock
    await request.shutdown()
    await redis.aclose()


async def test_progress_lines_update_one_draft_and_the_answer_is_a_message(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    assert await env.adapter.show_progress(PRIVATE, "Looking at your booking", "turn-1") is True
    assert await env.adapter.show_progress(PRIVATE, "Checking Saturday's hours", "turn-1") is True
    one = draft_id("turn-1")
    assert env.fake.drafts(42) == [(one, "Looking at your booking"), (one, "Checking Saturday's hours")]
    await env.adapter.send(PRIVATE, Outgoing(text="Open 9 to 1.", plain="Open 9 to 1."))
    assert env.fake.sent_texts(42) == ["Open 9 to 1."]  # the draft never holds the answer
    await env.adapter.show_progress(PRIVATE, "Reading", "turn-2")
    assert env.fake.drafts(42)[-1][0] not in (0, one)  # the next turn has a draft of its own


async def test_a_repeated_line_is_not_sent_again(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    for _ in range(3):
        assert await env.adapter.show_progress(PRIVATE, "Looking at your booking", "turn-1") is True
    assert len(env.fake.calls("sendMessageDraft")) == 1


async def test_a_draft_goes_into_the_chats_topic(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    await env.adapter.show_progress({**PRIVATE, "message_thread_id": "12"}, "Reading", "turn-1")
    (call,) = env.fake.calls("sendMessageDraft")
    assert (call.params["chat_id"], call.params["message_thread_id"]) == (42, 12)
    assert "parse_mode" not in call.params  # a progress line is plain text


async def test_groups_keep_typing_and_telegram_is_not_asked(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    assert await env.adapter.show_progress(GROUP, "Reading", "turn-1") is False
    assert await env.adapter.show_progress({"chat_id": "-5"}, "Reading", "turn-2") is False  # an old route: a group's id
    assert env.fake.calls("sendMessageDraft") == []


async def test_a_draft_telegram_refuses_in_a_group_is_reported_and_not_asked_again(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    mislabelled = {"chat_id": "-100500", "chat_type": "private"}  # the fake answers for a group's id
    assert await env.adapter.show_progress(mislabelled, "Reading", "turn-1") is False
    assert await env.adapter.show_progress(mislabelled, "Still reading", "turn-1") is False
    (call,) = env.fake.calls("sendMessageDraft")
    assert call.status == 400
    assert DRAFT_PEER_INVALID.startswith("Bad Request")


async def test_a_bot_api_without_drafts_falls_back_to_typing_once_per_chat(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    env.fake.refuse_drafts = True
    assert await env.adapter.show_progress(PRIVATE, "Reading", "turn-1") is False
    assert await env.adapter.show_progress(PRIVATE, "Reading more", "turn-1") is False
    assert await env.adapter.show_progress(PRIVATE, "Reading", "turn-2") is False
    assert [c.status for c in env.fake.calls("sendMessageDraft")] == [400]
    await env.adapter.show_working(PRIVATE)  # what the engine then keeps doing
    assert env.fake.calls("sendChatAction")[0].params["action"] == "typing"


async def test_flood_control_on_a_draft_is_not_raised_nor_remembered(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    env.fake.rate_limit_next("sendMessageDraft", retry_after=3)
    assert await env.adapter.show_progress(PRIVATE, "Reading", "turn-1") is False
    assert await env.adapter.show_progress(PRIVATE, "Reading", "turn-1") is True  # the next poll tries again
    assert [c.status for c in env.fake.calls("sendMessageDraft")] == [429, 200]


async def test_a_blocked_user_gets_no_draft_and_no_error(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    env.fake.block_chat(42)
    assert await env.adapter.show_progress(PRIVATE, "Reading", "turn-1") is False


async def test_show_progress_off_sends_no_draft(make_telegram: MakeEnv) -> None:
    env = await make_telegram(show_progress=False)
    assert await env.adapter.show_progress(PRIVATE, "Reading", "turn-1") is False
    assert env.fake.calls("sendMessageDraft") == []


async def test_a_busy_bot_skips_the_draft_rather_than_delay_its_messages(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    await reserve_slot(env.redis, TelegramKeys.of(env.keys).bot_pace("tg"), 30.0)  # the bot's next slot is far off
    await reserve_slot(env.redis, TelegramKeys.of(env.keys).bot_pace("tg"), 30.0)
    assert await env.adapter.show_progress(PRIVATE, "Reading", "turn-1") is False
    assert env.fake.calls("sendMessageDraft") == []


async def test_a_blank_line_shows_nothing(make_telegram: MakeEnv) -> None:
    env = await make_telegram()
    assert await env.adapter.show_progress(PRIVATE, "  \n", "turn-1") is False
    assert env.fake.calls("sendMessageDraft") == []


async def test_the_same_line_is_sent_again_before_the_draft_fades(
    drafts_env: tuple[Drafts, Bot, Clock], fake_telegram: FakeTelegram
) -> None:
    drafts, bot, clock = drafts_env
    assert await drafts.show(bot, PRIVATE, "Reading", "turn-1")
    clock.now += DRAFT_REFRESH_S - 1
    assert await drafts.show(bot, PRIVATE, "Reading", "turn-1")
    assert len(fake_telegram.drafts(42)) == 1
    clock.now += 2
    assert await drafts.show(bot, PRIVATE, "Reading", "turn-1")
    assert len(fake_telegram.drafts(42)) == 2


async def test_a_refused_chat_is_asked_again_after_an_hour(
    drafts_env: tuple[Drafts, Bot, Clock], fake_telegram: FakeTelegram
) -> None:
    drafts, bot, clock = drafts_env
    fake_telegram.refuse_drafts = True
    assert not await drafts.show(bot, PRIVATE, "Reading", "turn-1")
    fake_telegram.refuse_drafts = False  # e.g. the Bot API server was upgraded
    clock.now += REFUSAL_TTL_S - 1
    assert not await drafts.show(bot, PRIVATE, "Reading", "turn-1")
    clock.now += 2
    assert await drafts.show(bot, PRIVATE, "Reading", "turn-1")
    assert [c.status for c in fake_telegram.calls("sendMessageDraft")] == [400, 200]


def test_draft_ids_are_stable_non_zero_and_differ_between_turns() -> None:
    ids = {draft_id(f"turn-{n}") for n in range(1000)}
    assert len(ids) == 1000 and 0 not in ids
    assert all(0 < value < 2**31 for value in ids)
    assert draft_id("turn-1") == draft_id("turn-1")


def test_only_private_chats_take_drafts() -> None:
    assert private_chat({"chat_id": "42", "chat_type": "private"})
    assert not private_chat({"chat_id": "42", "chat_type": "group"})
    assert private_chat({"chat_id": "42"})  # a route stored before chat_type: a user's id
    assert not private_chat({"chat_id": "-42"})
