"""The Telegram channel end to end: the fake Bot API → the gateway edge → Redis → the worker →
the OCS simulator → the worker → the fake Bot API (tests/HARNESS.md).

The simulator answers ``Echo #n: <text>`` with n counting the user messages of its session, so
"Echo #1" twice means two sessions, and a reply's text says which message it answers.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from adapters.telegram.adapter import TelegramAdapter
from adapters.telegram.format import TEXT_LIMIT_UTF16, utf16_len
from gateway.core.config import Secret
from gateway.core.keys import Keys
from gateway.core.models import ConversationKey
from gateway.store.ledger import Turn
from tests.adapters._telegram import SECRET, TOKEN
from tests.conftest import Stack, settled, wait_for
from tests.fakes.telegram_api import FakeTelegram, fake_telegram, message_update  # noqa: F401 - fixture
from workers.delivery import Deliverer
from workers.hold import Hold

USER = 4242
GROUP = -1001122334455
OTHER_TOKEN = "888000222:BBHsecond-bot_token"


def telegram_channel(fake: FakeTelegram, token: str = TOKEN, **settings: Any) -> dict[str, Any]:
    return {"type": "telegram", "bot": "demo", "token": Secret(token), "webhook_secret": Secret(SECRET),
            "api_base_url": fake.url, **settings}


@pytest.fixture
def tg_stack(fake_telegram: FakeTelegram, make_stack: Callable[..., Stack]) -> Stack:
    # fake_telegram first, so it is stopped after the gateway (fixtures tear down in reverse).
    fake_telegram.add_bot(TOKEN, username="clinic_bot")
    return make_stack(channels={"tg": telegram_channel(fake_telegram)})


def post(stack: Stack, update: dict[str, Any], *, channel: str = "tg", secret: str | None = SECRET) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if secret is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    return stack.http.post(f"{stack.url}/telegram/{channel}", content=json.dumps(update), headers=headers)


def say(stack: Stack, update_id: int, text: str | None, *, chat_id: int = USER, **fields: Any) -> None:
    response = post(stack, message_update(update_id, chat_id=chat_id, user_id=USER, text=text, **fields))
    assert response.status_code == 200, response.text


def say_in_group(stack: Stack, update_id: int, text: str, **fields: Any) -> None:
    update = message_update(update_id, chat_id=GROUP, user_id=USER, text=text, chat_type="supergroup", **fields)
    response = post(stack, update)
    assert response.status_code == 200, response.text


def replies(fake: FakeTelegram, count: int, chat_id: int = USER, token: str = TOKEN) -> list[str]:
    texts: list[str] = wait_for(lambda: (t := fake.sent_texts(chat_id, token=token)) and len(t) >= count and t,
                                what=f"{count} replies in chat {chat_id}")
    return texts


def session_for(stack: Stack, conversation: str) -> str:
    [session] = [s for s in stack.sim.state.list_sessions() if s.remote_id.split("#")[0] == f"telegram:{conversation}"]
    return session.id


def test_private_text_round_trip(tg_stack: Stack, fake_telegram: FakeTelegram) -> None:
    say(tg_stack, 1, "hello")
    assert replies(fake_telegram, 1) == ["Echo #1: hello"]
    [sent] = fake_telegram.sent_messages(USER)
    assert sent.params["parse_mode"] == "HTML" and "reply_parameters" not in sent.params
    assert fake_telegram.calls("sendChatAction")[0].params["action"] == "typing"


def test_group_answers_only_when_mentioned(tg_stack: Stack, fake_telegram: FakeTelegram) -> None:
    say_in_group(tg_stack, 1, "people talking among themselves")
    say_in_group(tg_stack, 2, "@clinic_bot when do you open?")
    assert replies(fake_telegram, 1, GROUP) == ["Echo #1: when do you open?"]
    [sent] = fake_telegram.sent_messages(GROUP)
    assert sent.params["reply_parameters"]["message_id"] == 2  # threaded under the question


def test_forum_topics_are_separate_conversations(tg_stack: Stack, fake_telegram: FakeTelegram) -> None:
    say_in_group(tg_stack, 1, "@clinic_bot in topic ten", message_thread_id=10, is_topic_message=True)
    say_in_group(tg_stack, 2, "@clinic_bot in topic eleven", message_thread_id=11, is_topic_message=True)
    replies(fake_telegram, 2, GROUP)
    by_topic = {c.params["message_thread_id"]: c.params["text"] for c in fake_telegram.sent_messages(GROUP)}
    assert by_topic == {10: "Echo #1: in topic ten", 11: "Echo #1: in topic eleven"}


def test_start_payload_reaches_ocs_as_context(tg_stack: Stack, fake_telegram: FakeTelegram) -> None:
    say(tg_stack, 1, "/start campaign-42")
    assert replies(fake_telegram, 1) == ["Echo #1: /start"]
    session = tg_stack.sim.state.sessions[session_for(tg_stack, f"chat:{USER}")]
    assert session.state["remote_context"]["start_payload"] == "campaign-42"


def test_reset_starts_a_new_session(tg_stack: Stack, fake_telegram: FakeTelegram) -> None:
    say(tg_stack, 1, "first")
    replies(fake_telegram, 1)
    say(tg_stack, 2, "/reset")
    replies(fake_telegram, 2)
    say(tg_stack, 3, "again")
    notice = tg_stack.config.channels["tg"].reset_notice
    assert replies(fake_telegram, 3) == ["Echo #1: first", notice, "Echo #1: again"]


def test_photo_reaches_ocs_as_an_upload(tg_stack: Stack, fake_telegram: FakeTelegram) -> None:
    jpeg = b"\xff\xd8\xff\xe0fake-jpeg"
    fake_telegram.add_file("PHOTO-BIG", jpeg, file_path="photos/file_7.jpg")
    sizes = [{"file_id": "PHOTO-SMALL", "file_unique_id": "s", "width": 90, "height": 90, "file_size": 3},
             {"file_id": "PHOTO-BIG", "file_unique_id": "b", "width": 800, "height": 800, "file_size": len(jpeg)}]
    say(tg_stack, 1, None, photo=sizes, caption="what is this?")
    assert replies(fake_telegram, 1) == ["Echo #1: what is this?\nAttachments: photo_b.jpg"]
    [upload] = tg_stack.sim.state.uploaded_files()
    assert (upload.data, upload.content_type) == (jpeg, "image/jpeg")


def test_long_reply_is_split_and_delivered_in_order(tg_stack: Stack, fake_telegram: FakeTelegram) -> None:
    # Five ~2,400-character paragraphs: two never fit one message, so each goes alone.
    paragraphs = [f"Part {n}: " + "lorem ipsum " * 200 for n in range(5)]
    say(tg_stack, 1, "\n\n".join(paragraphs))
    sent = wait_for(lambda: len(fake_telegram.sent_texts(USER)) >= 5 and fake_telegram.sent_texts(USER), what="5 parts")
    assert [re.findall(r"Part \d", text) for text in sent] == [[f"Part {n}"] for n in range(5)]
    assert sent[0].startswith("Echo #1: Part 0:")
    assert all(utf16_len(text) <= TEXT_LIMIT_UTF16 for text in sent)
    gaps = [b.at - a.at for a, b in zip(fake_telegram.sent_messages(USER), fake_telegram.sent_messages(USER)[1:])]
    assert min(gaps) >= 0.9  # paced at one message a second in one chat (docs/PLATFORMS.md §1.5)


def test_markdown_is_formatted_and_refused_html_falls_back_to_plain(
    tg_stack: Stack, fake_telegram: FakeTelegram
) -> None:
    say(tg_stack, 1, "**bold** & <tag>")
    assert replies(fake_telegram, 1) == ["Echo #1: <b>bold</b> &amp; &lt;tag&gt;"]
    fake_telegram.reject_html_next()
    say(tg_stack, 2, "**again**")
    replies(fake_telegram, 2)
    last = fake_telegram.sent_messages(USER)[-1]
    assert last.params["text"] == "Echo #2: again" and "parse_mode" not in last.params


def test_flood_control_retry_after_is_honoured_and_order_kept(tg_stack: Stack, fake_telegram: FakeTelegram) -> None:
    fake_telegram.rate_limit_next("sendMessage", retry_after=1)
    say(tg_stack, 1, "\n\n".join(f"Part {n}: " + "lorem ipsum " * 300 for n in range(3)))
    sent = wait_for(lambda: len(fake_telegram.sent_texts(USER)) >= 3 and fake_telegram.sent_texts(USER), what="3 parts")
    assert sent[0].startswith("Echo #1: Part 0:")
    calls = fake_telegram.calls("sendMessage")
    assert calls[0].status == 429 and calls[1].status == 200
    assert calls[1].at - calls[0].at >= 0.95  # waited the retry_after Telegram asked for
    assert calls[1].params["text"] == calls[0].params["text"]  # the same part, not the next


def test_blocked_user_is_marked_gone_and_unblock_lets_answers_through(
    tg_stack: Stack, fake_telegram: FakeTelegram
) -> None:
    fake_telegram.block_chat(USER)
    say(tg_stack, 1, "hello?")
    conv_key = Keys().conversation(ConversationKey("tg", f"chat:{USER}"))
    wait_for(lambda: tg_stack.redis.hget(conv_key, "gone") == b"1", what="conversation marked gone")
    assert fake_telegram.sent_texts(USER) == []

    del fake_telegram.blocked[USER]
    unblock = message_update(2, chat_id=USER, user_id=USER)["message"]
    member = {"user": {"id": 777000111, "is_bot": True, "first_name": "Clinic"}}
    response = post(tg_stack, {"update_id": 2, "my_chat_member": {
        "chat": unblock["chat"], "from": unblock["from"], "date": int(time.time()),
        "old_chat_member": {**member, "status": "kicked", "until_date": 0}, "new_chat_member": {**member, "status": "member"}}})
    assert response.status_code == 200
    assert tg_stack.redis.hget(conv_key, "gone") is None
    say(tg_stack, 3, "back again")
    assert replies(fake_telegram, 1)[-1].endswith("back again")


def test_redelivered_update_is_answered_once(tg_stack: Stack, fake_telegram: FakeTelegram) -> None:
    update = message_update(77, chat_id=USER, user_id=USER, text="only once")
    assert post(tg_stack, update).status_code == 200
    assert post(tg_stack, update).status_code == 200  # Telegram retried: our 200 was lost
    assert replies(fake_telegram, 1) == ["Echo #1: only once"]
    assert post(tg_stack, update).status_code == 200
    say(tg_stack, 78, "next")
    assert replies(fake_telegram, 2) == ["Echo #1: only once", "Echo #2: next"]


@pytest.mark.parametrize("secret", [None, "wrong-secret"])
def test_bad_secret_is_refused_and_nothing_is_stored(tg_stack: Stack, fake_telegram: FakeTelegram, secret: str | None) -> None:
    response = post(tg_stack, message_update(1, chat_id=USER, user_id=USER, text="sneaky"), secret=secret)
    assert response.status_code in (401, 403)
    assert tg_stack.redis.keys("ocsgw:inbox:*") == []
    assert tg_stack.sim.state.list_sessions() == []


def test_two_bots_side_by_side(fake_telegram: FakeTelegram, make_stack: Callable[..., Stack]) -> None:
    fake_telegram.add_bot(TOKEN, username="clinic_bot")
    fake_telegram.add_bot(OTHER_TOKEN, username="pharmacy_bot")
    stack = make_stack(channels={"tg": telegram_channel(fake_telegram),
                                 "tg2": telegram_channel(fake_telegram, OTHER_TOKEN)})
    fake_telegram.rate_limit_next("sendMessage", retry_after=2, token=TOKEN)  # bot one is throttled
    say(stack, 1, "to the clinic")
    response = post(stack, message_update(1, chat_id=USER, user_id=USER, text="to the pharmacy"), channel="tg2")
    assert response.status_code == 200  # the same update_id on another bot is another event
    assert replies(fake_telegram, 1, token=OTHER_TOKEN) == ["Echo #1: to the pharmacy"]
    assert replies(fake_telegram, 1, token=TOKEN) == ["Echo #1: to the clinic"]
    first_ok = {c.token: c.at for c in reversed(fake_telegram.calls("sendMessage")) if c.status == 200}
    assert first_ok[OTHER_TOKEN] < first_ok[TOKEN]  # the throttled bot did not hold the other back


def test_typing_stays_alive_while_ocs_works_and_stops_with_the_reply(
    fake_telegram: FakeTelegram, make_stack: Callable[..., Stack], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The engine's own record of each indicator it showed (its clock, the one its refresh rule reads).
    shown: list[float] = []
    show_working = Deliverer.show_working

    async def recording(self: Deliverer, hold: Hold, turn: Turn) -> Turn:
        after = await show_working(self, hold, turn)
        if after.working_at != turn.working_at:
            shown.append(after.working_at)
        return after

    monkeypatch.setattr(Deliverer, "show_working", recording)
    fake_telegram.add_bot(TOKEN, username="clinic_bot")
    stack = make_stack(channels={"tg": telegram_channel(fake_telegram)}, bots={"demo": {"task_timeout_s": 120}})
    stack.sim.state.knobs.reply_latency_s = 600  # OCS works until the test releases the task
    say(stack, 1, "take your time")
    wait_for(lambda: len(fake_telegram.calls("sendChatAction")) >= 3, timeout=60, what="the indicator shown thrice")
    (task,) = stack.sim.state.tasks.values()
    assert not task.finished  # all three while OCS was still working
    stack.sim.state.finish_task_now(task.id)
    replies(fake_telegram, 1)
    settled(stack.redis)  # the turn is over: nothing could show the indicator again
    typing = fake_telegram.calls("sendChatAction")
    [answer] = fake_telegram.sent_messages(USER)
    assert all(call.params["action"] == "typing" and call.at < answer.at for call in typing)
    # One call per indicator the engine showed, each refreshed only once the last was nearly spent.
    assert len(typing) == len(shown)
    refresh = TelegramAdapter.working_refresh_s
    assert refresh is not None and refresh < 5  # Telegram's "typing…" lasts about 5 s
    assert all(later - earlier >= refresh - 0.05 for earlier, later in itertools.pairwise(shown))

def test_a_burst_in_a_private_chat_is_answered_once_replying_to_its_last_message(
    tg_stack: Stack, fake_telegram: FakeTelegram
) -> None:
    tg_stack.sim.state.knobs.reply_latency_s = 600  # the first message stays with OCS meanwhile
    say(tg_stack, 1, "first")
    wait_for(lambda: tg_stack.sim.state.tasks, what="the first message at OCS")
    (task,) = tg_stack.sim.state.tasks.values()
    tg_stack.sim.state.knobs.reply_latency_s = 0.05
    say(tg_stack, 2, "are you open")
    say(tg_stack, 3, "on saturday?")
    wait_for(lambda: tg_stack.redis.llen(f"ocsgw:inbox:tg/chat:{USER}") == 3, what="two messages queued")
    tg_stack.sim.state.finish_task_now(task.id)
    assert replies(fake_telegram, 2) == ["Echo #1: first", "Echo #2: are you open\n\non saturday?"]
    single, burst = fake_telegram.sent_messages(USER)
    assert "reply_parameters" not in single.params  # a private chat's lone message: no quote
    assert burst.params["reply_parameters"]["message_id"] == 3  # the burst's last message


LINES = ("Reading your question…", "Looking it up…", "Writing the answer…")


def _show_lines(stack: Stack) -> str:
    """OCS's progress lines change while the test holds the task; returns its id."""
    stack.sim.state.knobs.progress_lines = LINES
    # A new bot is polled no sooner than the widget (at 1, 2, 3 ... s): lines 1.5 s apart are
    # each seen by one of those polls.
    stack.sim.state.knobs.progress_every_s = 1.5
    stack.sim.state.knobs.reply_latency_s = 600
    wait_for(lambda: stack.sim.state.tasks, what="the message at OCS")
    (task,) = stack.sim.state.tasks.values()
    return task.id


def test_ocs_progress_shows_as_a_draft_in_a_private_chat_and_the_answer_replaces_it(
    tg_stack: Stack, fake_telegram: FakeTelegram
) -> None:
    say(tg_stack, 1, "what are the opening hours?")
    task = _show_lines(tg_stack)
    wait_for(lambda: [t for _, t in fake_telegram.drafts(USER)][-1:] == [LINES[-1]], timeout=30,
             what="the draft following OCS's lines to the last")
    tg_stack.sim.state.finish_task_now(task)
    assert replies(fake_telegram, 1) == ["Echo #1: what are the opening hours?"]
    drafts = fake_telegram.drafts(USER)
    assert [t for _, t in drafts if t in LINES] == [line for line in LINES if line in {t for _, t in drafts}]
    assert len({draft_id for draft_id, _ in drafts}) == 1  # one draft per turn, updated in place
    # The draft was never the answer: the answer is a message of its own, after every draft.
    (answer,) = fake_telegram.sent_messages(USER)
    assert all(c.at <= answer.at for c in fake_telegram.calls("sendMessageDraft"))


def test_where_drafts_are_refused_the_typing_action_goes_on(tg_stack: Stack, fake_telegram: FakeTelegram) -> None:
    fake_telegram.refuse_drafts = True
    say(tg_stack, 1, "hello?")
    task = _show_lines(tg_stack)
    before = len(fake_telegram.calls("sendChatAction"))
    wait_for(lambda: len(fake_telegram.calls("sendChatAction")) > before, timeout=30, what="typing while OCS works")
    tg_stack.sim.state.finish_task_now(task)
    assert replies(fake_telegram, 1) == ["Echo #1: hello?"]
    assert fake_telegram.drafts(USER) == []
