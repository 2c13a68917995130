"""A send whose outcome is unknown (the worker died after OCS took it, or the answer never came
back) is settled by counting the user messages in the session's history, never by matching
text: identical texts, prefixes and messages OCS never got all come out right."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.core.keys import Keys
from gateway.core.models import ConversationKey, Inbound, InboundKind
from gateway.ocs.budget import BudgetScope, RequestBudget
from gateway.ocs.client import OCSClient
from gateway.services import worker_process
from gateway.store.conversations import parse_record
from tests.conftest import Stack, wait_for
from workers.turns import next_history_read

CONV = ConversationKey("hooks", "c1")
FAST_GRACE = {"reconcile_grace_s": 1.0}


def _start_worker(stack: Stack) -> None:
    stack.worker = worker_process(stack.config, stack.redis_url)
    stack.worker.start()


def _answered(stack: Stack, text: str) -> None:
    before = len(stack.receiver.texts("c1"))
    stack.say("c1", text)
    wait_for(lambda: len(stack.receiver.texts("c1")) > before, what=f"the answer to {text!r}")


async def _interrupted_send(stack: Stack, text: str, *, ocs_got_it: bool) -> None:
    """Leave the conversation as a worker killed mid-send leaves it: the message at the head of
    the inbox, the ledger in ``sending`` expecting one more user message than the count."""
    redis = aioredis.Redis.from_url(stack.redis_url)
    keys = Keys()
    async with httpx.AsyncClient() as http:
        ocs = OCSClient(name="demo", bot=stack.config.bots["demo"], http=http, redis=redis, keys=keys)
        record = parse_record(await redis.hgetall(keys.conversation(CONV)))
        session = record.session
        if session is None:
            session = await ocs.start_session(remote_id="webhook:c1", name=None)
            await redis.hset(keys.conversation(CONV), mapping={
                "session_id": session.session_id, "session_token": session.session_token,
                "chatbot_id": session.chatbot_id, "started_at": repr(session.started_at), "user_messages": "0",
            })
        count = record.user_messages or 0
        if ocs_got_it:
            await ocs.send_message(session, text)
    inbound = Inbound(
        key=CONV, event_id=f"msg_{time.time_ns()}", kind=InboundKind.MESSAGE, sender_id="u1", text=text,
        route={"conversation_id": "c1"},
    )
    await redis.rpush(keys.inbox(CONV), inbound.to_json())
    await redis.hset(keys.turn(CONV), mapping={
        "id": "t-interrupted", "inbound_raw": inbound.to_json(), "state": "sending",
        "session_id": session.session_id, "sending_at": repr(time.time()), "expect_count": str(count + 1),
    })
    await redis.zadd(keys.active, {str(CONV): time.time() - 60})  # overdue: the sweeper adopts it
    await redis.aclose()


def _user_messages(stack: Stack) -> list[str]:
    (session,) = stack.sim.state.list_sessions()
    return stack.sim.state.user_messages(session.id)


def test_a_message_ocs_already_has_is_answered_from_the_history_not_sent_again(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(start_worker=False, worker=FAST_GRACE)
    asyncio.run(_interrupted_send(stack, "did you get this?", ocs_got_it=True))
    _start_worker(stack)
    wait_for(lambda: stack.receiver.texts("c1"), what="the reply found in the history")
    assert _user_messages(stack) == ["did you get this?"]
    assert stack.receiver.texts("c1") == ["Echo #1: did you get this?"]


def test_a_message_ocs_never_got_is_sent_after_the_grace_period(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(start_worker=False, worker=FAST_GRACE)
    asyncio.run(_interrupted_send(stack, "did you get this?", ocs_got_it=False))
    _start_worker(stack)
    wait_for(lambda: stack.receiver.texts("c1"), what="the resent message's reply")
    assert _user_messages(stack) == ["did you get this?"]
    assert stack.receiver.texts("c1") == ["Echo #1: did you get this?"]


@pytest.mark.parametrize(
    ("first", "second", "ocs_got_it"),
    [
        ("hello", "hello", True),  # the same text twice: the second gets its own answer
        ("hello", "hello", False),  # ... and is sent again when OCS never got it
        ("yes", "yes please", False),  # a longer message is not mistaken for its prefix
        ("yes please", "yes", True),  # nor a shorter one for the message it begins
    ],
    ids=["same-text-ocs-has-it", "same-text-never-arrived", "prefix-never-arrived", "shorter-ocs-has-it"],
)
def test_an_interrupted_send_after_a_similar_message_gets_its_own_answer(
    make_stack: Callable[..., Stack], first: str, second: str, ocs_got_it: bool
) -> None:
    stack = make_stack(worker=FAST_GRACE)
    _answered(stack, first)
    stack.stop_worker()
    asyncio.run(_interrupted_send(stack, second, ocs_got_it=ocs_got_it))
    _start_worker(stack)
    wait_for(lambda: len(stack.receiver.texts("c1")) == 2, what="the second answer")
    assert _user_messages(stack) == [first, second]
    assert stack.receiver.texts("c1") == [f"Echo #1: {first}", f"Echo #2: {second}"]


def test_an_empty_text_is_settled_by_count_too(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(worker=FAST_GRACE)
    _answered(stack, "first")
    stack.stop_worker()
    asyncio.run(_interrupted_send(stack, "(empty message)", ocs_got_it=True))
    _start_worker(stack)
    wait_for(lambda: len(stack.receiver.texts("c1")) == 2, what="the second answer")
    assert _user_messages(stack) == ["first", "(empty message)"]
    assert stack.receiver.texts("c1")[1] == "Echo #2: (empty message)"
    record = parse_record(stack.redis.hgetall(Keys().conversation(CONV)))
    assert record.user_messages == 2


#: One window longer than any test, so every booking of a test lands in the same window.
WHOLE_DAY_BUDGET = {"budget": {"window_s": 86_400}}


def _session_bucket(stack: Stack, session_id: str) -> int:
    async def read() -> int:
        redis = aioredis.Redis.from_url(stack.redis_url)
        bot = stack.config.bots["demo"]
        try:
            rows = await RequestBudget(redis, Keys(), lambda _: bot.budget).usage()
        finally:
            await redis.aclose()
        return next(row.used for row in rows if row.scope is BudgetScope.SESSION and row.name == session_id)

    return asyncio.run(read())


def test_a_send_that_never_reached_ocs_is_settled_with_few_history_reads_each_booked_then_sent_once(
    make_stack: Callable[..., Stack],
) -> None:
    grace = 8.0
    stack = make_stack(worker={"reconcile_grace_s": grace, "watch_interval_s": 600.0}, bots={"demo": WHOLE_DAY_BUDGET})
    stack.sim.state.drop_before_accept("message")  # the request leaves whole; OCS never sees it
    stack.say("c1", "anyone?")
    wait_for(lambda: stack.receiver.texts("c1"), timeout=30, what="the answer to the resent message")
    counts = stack.sim.state.request_counts()
    reads = counts["session_poll"]  # every read came before the resend: no watch ran
    print(f"\nsend cut before OCS, reconcile_grace_s={grace:g}: {reads} history reads, then one resend")
    assert counts["message"] == 2  # the cut send and the one resend
    assert 1 <= reads <= math.log2(grace / 0.5) + 2, f"{reads} history reads"
    assert _user_messages(stack) == ["anyone?"]
    assert stack.receiver.texts("c1") == ["Echo #1: anyone?"]
    (session,) = stack.sim.state.list_sessions()
    # Every request of the session was booked in its budget bucket, the history reads too.
    assert _session_bucket(stack, session.id) == counts["message"] + reads + counts["task_poll"]


def test_a_send_ocs_took_but_answers_slowly_waits_for_its_answer_with_reads_that_back_off(
    make_stack: Callable[..., Stack],
) -> None:
    latency = 10.0
    stack = make_stack(worker={"reconcile_grace_s": 6.0, "watch_interval_s": 600.0, "poll_max_s": 2.0})
    stack.sim.state.knobs.reply_latency_s = latency  # the user message lands after 5 s, the answer after 10
    stack.sim.state.drop_after_accept("message")
    stack.say("c1", "slowly now")
    wait_for(lambda: stack.receiver.texts("c1"), timeout=40, what="the answer found in the history")
    reads = stack.sim.state.request_counts()["session_poll"]
    print(f"\nsend OCS took, answer after {latency:g} s: {reads} history reads to find it")
    assert stack.sim.state.request_counts()["message"] == 1  # confirmed from the history: never resent
    assert stack.receiver.texts("c1") == ["Echo #1: slowly now"]
    # Reads at 0.5, 1.5, 3.5 s and at the grace's end (6 s) find the message, then at 7.5, 9.5,
    # 11.5 s (gaps double up to poll_max_s) its answer: one a second would have been a dozen.
    assert reads <= 8, f"{reads} history reads"


def _reads(deadline_s: float, max_gap_s: float, start: float = 0.0) -> list[float]:
    """The read times ``next_history_read`` gives a turn that steps exactly when told."""
    at, out = start, []
    while True:
        at = next_history_read(100.0, 100.0 + at, deadline_s=deadline_s, max_gap_s=max_gap_s) - 100.0
        out.append(at)
        if at >= deadline_s:
            return out


def test_history_reads_double_from_half_a_second_and_the_last_lands_on_the_deadline() -> None:
    assert _reads(30.0, math.inf) == [0.5, 1.5, 3.5, 7.5, 15.5, 30.0]
    assert _reads(8.0, math.inf) == [0.5, 1.5, 3.5, 7.5, 8.0]
    assert _reads(12.0, 2.0) == [0.5, 1.5, 3.5, 5.5, 7.5, 9.5, 11.5, 12.0]  # gaps capped
    for grace in (1.0, 2.0, 30.0, 300.0, 3600.0):
        assert len(_reads(grace, math.inf)) <= math.log2(grace / 0.5) + 2
    # An owner that adopts the turn late goes on with the same schedule, from where it is.
    assert _reads(30.0, math.inf, start=9.0) == [15.5, 30.0]
    assert next_history_read(100.0, 140.0, deadline_s=30.0, max_gap_s=math.inf) == 130.0  # overdue: now
