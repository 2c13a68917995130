"""Replies answered at once in one Slack channel or one Telegram group are all delivered (issue 8,
item 4: "Pacing drops replies").

The adapters hand a long pacing wait back as ``PacingWait`` (a ``RetryLater`` that is no failure)
and book nothing for it; the turn engine waits it out without counting an attempt. The end-to-end
tests run the whole gateway (tests/HARNESS.md) against the fake Slack and Telegram APIs with the
fast test tuning (``max_attempts`` 5), where counting each pacing wait as an attempt dead-letters
most of the burst.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from adapters.slack.keys import SlackKeys
from adapters.telegram.keys import TelegramKeys
from gateway.core.config import Secret
from gateway.core.errors import PacingWait, RetryLater
from gateway.core.keys import Keys
from gateway.core.models import Outgoing
from gateway.store.pacing import reserve_slot
from tests.adapters._slack import MakeEnv as MakeSlackEnv
from tests.adapters._slack import make_slack
from tests.adapters._telegram import SECRET, TOKEN, make_telegram  # noqa: F401 - fixture
from tests.adapters._telegram import MakeEnv as MakeTelegramEnv
from tests.conftest import Stack, wait_for
from tests.fakes.slack_api import FakeSlack, event_envelope, fake_slack, signed_headers
from tests.fakes.telegram_api import FakeTelegram, fake_telegram, message_update  # noqa: F401 - fixture

__all__ = ["fake_slack", "make_slack"]

MakeStack = Callable[..., Stack]
SLACK_SECRET = "pacing-signing-secret"
GROUP = -1005550001111
USER = 4242
#: A burst takes about one second per reply (both platforms pace ~1 message/s per channel/chat).
BURST_TIMEOUT_S = 60.0


def dead_letters(stack: Stack) -> int:
    return int(stack.redis.zcard(Keys().dlq))


# -- the adapters' side: a long wait is a PacingWait and books nothing ---------------------------


async def test_slack_long_pacing_wait_is_a_pacing_wait_that_books_nothing(
    make_slack: MakeSlackEnv, fake_slack: FakeSlack
) -> None:
    ws = fake_slack.add_workspace("T1")
    env = await make_slack(bot_token=Secret(ws.token))
    key = SlackKeys.of(env.keys).pace("sl", "T1", "C1")
    for _ in range(3):  # three other sends hold the next three seconds
        await reserve_slot(env.redis, key, 1.0)
    booked = await env.redis.get(key)
    route = {"team": "T1", "channel": "C1", "thread_ts": "1.1", "reply_to": "1.1"}
    with pytest.raises(PacingWait) as caught:
        await env.adapter.send(route, Outgoing(text="later"))
    assert isinstance(caught.value, RetryLater) and caught.value.pacing
    assert 1.5 < caught.value.retry_after_s <= 3.0
    assert await env.redis.get(key) == booked  # the refused send did not push the others out
    assert fake_slack.messages() == []


async def test_slack_platform_429_is_not_a_pacing_wait(make_slack: MakeSlackEnv, fake_slack: FakeSlack) -> None:
    ws = fake_slack.add_workspace("T1")
    env = await make_slack(bot_token=Secret(ws.token))
    fake_slack.rate_limit_next("chat.postMessage", retry_after=7)
    with pytest.raises(RetryLater) as caught:
        await env.adapter.send({"team": "T1", "channel": "C1"}, Outgoing(text="hi"))
    assert not caught.value.pacing and not isinstance(caught.value, PacingWait)
    assert caught.value.retry_after_s == 7


async def test_telegram_long_pacing_wait_books_neither_the_chat_nor_the_bot(make_telegram: MakeTelegramEnv) -> None:
    env = await make_telegram()
    chat_key = TelegramKeys.of(env.keys).chat_pace("tg", str(GROUP))
    bot_key = TelegramKeys.of(env.keys).bot_pace("tg")
    for _ in range(3):
        await reserve_slot(env.redis, chat_key, 1.0)
    booked = await env.redis.get(chat_key)
    route = {"chat_id": str(GROUP), "chat_type": "supergroup", "message_thread_id": "10"}
    with pytest.raises(PacingWait) as caught:
        await env.adapter.send(route, Outgoing(text="later", plain="later", hints={"parse_mode": "HTML"}))
    assert 1.5 < caught.value.retry_after_s <= 3.0
    assert await env.redis.get(chat_key) == booked and await env.redis.get(bot_key) is None
    assert not await env.redis.exists(TelegramKeys.of(env.keys).bot_sends("tg"))  # and no send was stamped
    assert env.fake.calls("sendMessage") == []


# -- end to end ---------------------------------------------------------------------------------


def test_ten_slack_threads_answered_at_once_in_one_channel_are_all_delivered(
    make_stack: MakeStack, fake_slack: FakeSlack
) -> None:
    ws = fake_slack.add_workspace("T100")
    stack = make_stack(channels={"sl": {"type": "slack", "bot": "demo", "signing_secret": Secret(SLACK_SECRET),
                                        "api_base_url": fake_slack.api_url, "bot_token": Secret(ws.token)}})
    roots = [f"17000001{n:02d}.000100" for n in range(10)]
    for n, root in enumerate(roots):
        event = {"type": "app_mention", "channel": "C100", "user": "UHUMAN", "text": f"<@{ws.user_id}> question {n}",
                 "ts": root}
        raw = json.dumps(event_envelope(event, team_id="T100", event_id=f"EvBurst{n}", bot_user_id=ws.user_id)).encode()
        response = stack.http.post(f"{stack.url}/slack/sl/events", content=raw, headers=signed_headers(SLACK_SECRET, raw))
        assert response.status_code == 200, response.text

    wait_for(lambda: len(fake_slack.messages(channel="C100")) >= 10 or dead_letters(stack), timeout=BURST_TIMEOUT_S,
             what="ten answers (or a dead letter)")
    assert dead_letters(stack) == 0
    answers = {m.thread_ts: m.text for m in fake_slack.messages(channel="C100")}
    assert answers == {root: f"Echo #1: question {n}" for n, root in enumerate(roots)}
    assert len(fake_slack.messages(channel="C100")) == 10  # one answer per thread, none twice


def test_six_telegram_forum_topics_answered_at_once_are_all_delivered(
    fake_telegram: FakeTelegram, make_stack: MakeStack
) -> None:
    fake_telegram.add_bot(TOKEN, username="clinic_bot")
    stack = make_stack(channels={"tg": {"type": "telegram", "bot": "demo", "token": Secret(TOKEN),
                                        "webhook_secret": Secret(SECRET), "api_base_url": fake_telegram.url}})
    topics = [10 + n for n in range(6)]
    for n, topic in enumerate(topics):
        update: dict[str, Any] = message_update(n + 1, chat_id=GROUP, user_id=USER, text=f"@clinic_bot topic {topic}",
                                                chat_type="supergroup", message_thread_id=topic, is_topic_message=True)
        response = stack.http.post(f"{stack.url}/telegram/tg", content=json.dumps(update),
                                   headers={"content-type": "application/json", "X-Telegram-Bot-Api-Secret-Token": SECRET})
        assert response.status_code == 200, response.text

    wait_for(lambda: len(fake_telegram.sent_messages(GROUP)) >= 6 or dead_letters(stack), timeout=BURST_TIMEOUT_S,
             what="six answers (or a dead letter)")
    assert dead_letters(stack) == 0
    by_topic = {c.params["message_thread_id"]: c.params["text"] for c in fake_telegram.sent_messages(GROUP)}
    assert by_topic == {topic: f"Echo #1: topic {topic}" for topic in topics}
    assert len(fake_telegram.sent_messages(GROUP)) == 6
