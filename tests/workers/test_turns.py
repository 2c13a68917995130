"""The turn engine's guarantees, on the real Redis broker with a real worker and the OCS
simulator: one turn per message, order, healing, retries, dead letters, bot-initiated
messages."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway import cli
from gateway.core.keys import Keys
from gateway.store.dead_letters import DeadLetterStore
from tests.conftest import WEBHOOK_SECRET, SimServer, Stack, settled, wait_for


def _session_ids(stack: Stack) -> list[str]:
    return [s.id for s in stack.sim.state.list_sessions()]


def _only_session(stack: Stack) -> str:
    sessions = _session_ids(stack)
    assert len(sessions) == 1, sessions
    return sessions[0]


def test_message_goes_through_ocs_and_back_to_the_callback(stack: Stack) -> None:
    stack.say("c1", "hello")
    wait_for(lambda: stack.receiver.texts("c1"), what="a reply")
    reply = stack.receiver.received[0]
    assert reply["text"] == "Echo #1: hello"
    assert reply["conversation_id"] == "c1"
    assert reply["kind"] == "answer"
    assert reply["in_reply_to"].startswith("msg_")
    assert stack.sim.state.user_messages(_only_session(stack)) == ["hello"]


def test_redelivered_webhook_gives_one_ocs_turn_and_one_reply(stack: Stack) -> None:
    for _ in range(3):
        assert stack.say("c1", "once", msg_id="msg_dup").status_code == 200
    wait_for(lambda: stack.receiver.texts("c1"), what="a reply")
    wait_for(lambda: not stack.redis.exists("ocsgw:turn:hooks/c1"), what="the turn to end")
    assert stack.receiver.texts("c1") == ["Echo #1: once"]
    assert stack.sim.state.user_messages(_only_session(stack)) == ["once"]


def test_quick_messages_in_one_conversation_reach_ocs_once_in_order_and_are_answered_in_order(stack: Stack) -> None:
    stack.sim.state.knobs.reply_latency_s = 0.3
    for text in ("first", "second", "third"):
        stack.say("c1", text)
    # However they were batched (those that queued behind a turn go as one), each message
    # reaches OCS once and in order, and each OCS message is answered once, in order.
    wait_for(lambda: sum(len(t.split("\n\n")) for t in stack.receiver.texts("c1")) == 3, what="answers to all three")
    settled(stack.redis)
    sent = stack.sim.state.user_messages(_only_session(stack))
    assert [m for text in sent for m in text.split("\n\n")] == ["first", "second", "third"]
    assert stack.receiver.texts("c1") == [f"Echo #{n + 1}: {text}" for n, text in enumerate(sent)]


def test_conversations_do_not_wait_for_each_other(stack: Stack) -> None:
    # The slow conversation's bot answers only when the test releases it, so the quick ones can
    # only be answered first by a gateway that works on several conversations at once.
    stack.sim.state.knobs.reply_latency_s = 600
    stack.say("slow", "take your time")
    wait_for(lambda: stack.redis.hget("ocsgw:turn:hooks/slow", "state") == b"sent", what="the slow message at OCS")
    (slow_task,) = stack.sim.state.tasks.values()
    stack.sim.state.knobs.reply_latency_s = 0.05
    for n in range(4):
        stack.say(f"quick{n}", f"hi {n}")
    wait_for(lambda: len(stack.receiver.texts()) == 4, what="four quick replies")
    # Every quick turn ended while the slow one was still waiting on OCS for its answer.
    assert sorted(stack.receiver.texts()) == [f"Echo #1: hi {n}" for n in range(4)]
    assert not slow_task.finished
    assert stack.redis.hget("ocsgw:turn:hooks/slow", "state") == b"sent"
    stack.sim.state.finish_task_now(slow_task.id)
    wait_for(lambda: stack.receiver.texts("slow"), what="the slow reply once released")
    assert stack.receiver.received[-1]["text"] == "Echo #1: take your time"
    assert len(_session_ids(stack)) == 5
    assert stack.sim.state.token_requests == 1  # one cached OAuth token for everyone


def test_expired_session_is_replaced_and_the_message_resent_once(stack: Stack) -> None:
    stack.say("c1", "one")
    wait_for(lambda: stack.receiver.texts("c1"), what="first reply")
    stack.sim.state.expire_session(_only_session(stack))
    stack.say("c1", "two")
    wait_for(lambda: len(stack.receiver.texts("c1")) == 2, what="second reply")
    assert stack.receiver.texts("c1") == ["Echo #1: one", "Echo #1: two"]  # a fresh session
    assert len(_session_ids(stack)) == 2


def test_ocs_5xx_is_retried_until_it_recovers(stack: Stack) -> None:
    stack.sim.state.fail_next("message", 503, count=2)
    stack.say("c1", "patience")
    wait_for(lambda: stack.receiver.texts("c1"), what="a reply after the outage")
    assert stack.receiver.texts("c1") == ["Echo #1: patience"]
    assert stack.sim.state.user_messages(_only_session(stack)) == ["patience"]


def test_ocs_429_waits_retry_after_then_succeeds(stack: Stack) -> None:
    stack.sim.state.fail_next("start", 429, count=1, retry_after=1)
    stack.say("c1", "slowly")
    wait_for(lambda: stack.receiver.texts("c1"), what="a reply after the 429")
    assert stack.receiver.texts("c1") == ["Echo #1: slowly"]


def test_task_error_meant_for_the_user_is_delivered_as_the_answer(stack: Stack) -> None:
    stack.sim.state.fail_next_tasks("user_error", 1)
    stack.say("c1", "tricky")
    wait_for(lambda: stack.receiver.texts("c1"), what="the error text")
    assert stack.receiver.received[0]["text"] == stack.sim.state.knobs.user_error_text
    assert stack.receiver.received[0]["kind"] == "notice"


def test_callback_failures_are_retried_with_the_same_webhook_id(stack: Stack) -> None:
    stack.receiver.fail_with = [503, 502]
    stack.say("c1", "deliver me")
    wait_for(lambda: stack.receiver.texts("c1"), what="the reply after callback failures")
    assert stack.receiver.attempts == 3
    first, *retries = stack.receiver.attempt_ids
    assert retries == [first, first]  # the receiver can tell a retry from a new message
    assert stack.receiver.texts("c1") == ["Echo #1: deliver me"]


def test_reset_ends_the_session_and_the_next_message_starts_fresh(stack: Stack) -> None:
    stack.say("c1", "before")
    wait_for(lambda: stack.receiver.texts("c1"), what="first reply")
    first = _only_session(stack)
    stack.post_webhook({"conversation_id": "c1", "sender": {"id": "u"}, "reset": True})
    stack.say("c1", "after")
    wait_for(lambda: len(stack.receiver.texts("c1")) == 3, what="reset notice and reply")
    texts = stack.receiver.texts("c1")
    assert texts[1] == stack.config.channels["hooks"].reset_notice
    assert texts[2] == "Echo #1: after"
    assert stack.sim.state.sessions[first].status == "pending-review"  # ended through the API


def test_bot_initiated_message_is_delivered_once_without_repeating_answers(stack: Stack) -> None:
    stack.say("c1", "remind me")
    wait_for(lambda: stack.receiver.texts("c1"), what="the answer")
    stack.sim.state.push_bot_message(_only_session(stack), "Reminder: appointment at 10:30")
    wait_for(lambda: len(stack.receiver.texts("c1")) == 2, timeout=10, what="the bot-initiated message")
    pushed = stack.receiver.received[1]
    assert pushed["text"] == "Reminder: appointment at 10:30"
    assert pushed["kind"] == "push"
    assert pushed["in_reply_to"] is None
    # Three more watches of the session (counted at OCS): nothing is delivered twice.
    looked = stack.sim.state.request_counts()["session_poll"]
    wait_for(lambda: stack.sim.state.request_counts()["session_poll"] >= looked + 3, timeout=15, what="three more watches")
    settled(stack.redis)
    assert stack.receiver.texts("c1") == ["Echo #1: remind me", "Reminder: appointment at 10:30"]


def test_slow_ocs_gets_a_notice_then_the_answer_when_it_lands(make_stack: Callable[..., Stack], sim: SimServer) -> None:
    stack = make_stack(bots={"demo": {**_demo_bot(), "base_url": sim.url, "task_timeout_s": 0.4}})
    stack.sim.state.knobs.reply_latency_s = 1.5
    stack.say("c1", "think hard")
    wait_for(lambda: len(stack.receiver.texts("c1")) == 2, timeout=15, what="notice then answer")
    assert stack.receiver.texts("c1") == [stack.config.channels["hooks"].slow_notice, "Echo #1: think hard"]


def _demo_bot() -> dict:
    from gateway.core.config import Secret
    from gateway.ocs.simulator import DEMO_CHATBOT_ID

    return {"chatbot_id": DEMO_CHATBOT_ID, "auth": "oauth", "client_id": "demo-client", "client_secret": Secret("demo-secret")}


def test_exhausted_turn_is_dead_lettered_with_a_note_then_replayed(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stack.sim.state.fail_next("message", 503, count=stack.config.worker.max_attempts)
    stack.say("c1", "doomed")
    wait_for(lambda: stack.receiver.texts("c1"), what="the failure notice")
    assert stack.receiver.texts("c1") == [stack.config.channels["hooks"].failure_notice]

    letters = asyncio.run(_letters(stack.redis_url))
    assert len(letters) == 1
    letter = letters[0]
    assert json.loads(letter.inbound)["text"] == "doomed"
    assert "OCSUnavailable" in letter.error
    assert letter.ocs["session_id"]

    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"redis_url: {stack.redis_url}\n"
        f"bots:\n  demo:\n    base_url: {stack.sim.url}\n    chatbot_id: {_demo_bot()['chatbot_id']}\n"
        "    client_id: demo-client\n    client_secret: ${DEMO_SECRET}\n"
        "channels:\n  hooks:\n    type: webhook\n    bot: demo\n    secret: ${HOOK_SECRET}\n"
        f"    callback_url: {stack.config.channels['hooks'].callback_url}\n"
    )
    monkeypatch.setenv("DEMO_SECRET", "demo-secret")
    monkeypatch.setenv("HOOK_SECRET", WEBHOOK_SECRET)
    assert cli.main(["--config", str(config), "dlq", "list"]) == 0
    assert letter.id in capsys.readouterr().out
    assert cli.main(["--config", str(config), "dlq", "show", letter.id]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert json.loads(shown["inbound"])["text"] == "doomed" and shown["ocs"]["session_id"]
    assert cli.main(["--config", str(config), "dlq", "show", "no-such-id"]) == 1
    assert cli.main(["--config", str(config), "dlq", "replay", letter.id]) == 0
    wait_for(lambda: len(stack.receiver.texts("c1")) == 2, what="the replayed answer")
    assert stack.receiver.texts("c1")[1] == "Echo #1: doomed"
    assert asyncio.run(_letters(stack.redis_url)) == []


async def _letters(url: str) -> list:
    client = aioredis.Redis.from_url(url)
    try:
        return await DeadLetterStore(client, Keys()).list()
    finally:
        await client.aclose()


def test_dropped_dead_letter_is_gone(stack: Stack) -> None:
    stack.sim.state.fail_next("message", 503, count=stack.config.worker.max_attempts)
    stack.say("c1", "drop me")
    wait_for(lambda: stack.receiver.texts("c1"), what="the failure notice")
    (letter,) = asyncio.run(_letters(stack.redis_url))
    assert asyncio.run(_drop(stack.redis_url, letter.id)) is True
    assert asyncio.run(_letters(stack.redis_url)) == []


async def _drop(url: str, letter_id: str) -> bool:
    client = aioredis.Redis.from_url(url)
    try:
        return await DeadLetterStore(client, Keys()).drop(letter_id)
    finally:
        await client.aclose()


def test_callback_410_stops_pushes_until_the_user_writes_again(stack: Stack) -> None:
    stack.say("c1", "first")
    wait_for(lambda: stack.receiver.texts("c1"), what="the first answer")
    stack.receiver.fail_with = [410]
    (session,) = stack.sim.state.list_sessions()
    stack.sim.state.push_bot_message(session.id, "nobody home")
    wait_for(lambda: stack.redis.hget("ocsgw:conv:hooks/c1", "gone") == b"1", timeout=10, what="gone after 410")
    stack.say("c1", "I'm back")
    wait_for(lambda: len(stack.receiver.texts("c1")) == 2, what="the answer after returning")
    assert stack.receiver.texts("c1") == ["Echo #1: first", "Echo #2: I'm back"]
    assert stack.redis.hget("ocsgw:conv:hooks/c1", "gone") is None
