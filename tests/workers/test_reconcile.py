"""A send whose outcome is unknown (the worker died after OCS took it, or the answer never came
back) is settled by counting the user messages in the session's history, never by matching
text: identical texts, prefixes and messages OCS never got all come out right."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest
import redis.asyncio as aioredis

from gateway.core.keys import Keys
from gateway.core.models import ConversationKey, Inbound, InboundKind
from gateway.ocs.client import OCSClient
from gateway.services import worker_process
from gateway.store.conversations import parse_record
from tests.conftest import Stack, wait_for

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
