"""A session OCS finished (its review form sets ``complete``; ``message/`` then answers 400
``{"error": "Session has ended"}`` and the session poll says ``session_status: "ended"``,
docs/OCS.md §6.1) heals: the message goes into a new session, once, and the user gets the bot's
answer, not a failure notice; the old session is forgotten, so later messages go to the new one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.core.keys import Keys
from gateway.core.models import ConversationKey
from gateway.store.conversations import parse_record
from tests.conftest import Stack, wait_for
from tests.workers.test_reconcile import _interrupted_send, _start_worker

CONV = ConversationKey("hooks", "c1")
#: No watch between the turns unless a test wants one: each test says which path finds the end.
NO_WATCH = {"watch_interval_s": 600.0}


def _answer(stack: Stack, text: str) -> None:
    before = len(stack.receiver.texts("c1"))
    stack.say("c1", text)
    wait_for(lambda: len(stack.receiver.texts("c1")) > before, what=f"the answer to {text!r}")


def _record_session_id(stack: Stack) -> str | None:
    record = parse_record(stack.redis.hgetall(Keys().conversation(CONV)))
    return record.session.session_id if record.session else None


def test_a_message_to_a_session_ocs_finished_is_answered_in_a_new_session(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(worker=NO_WATCH)
    _answer(stack, "first")
    (old,) = stack.sim.state.list_sessions()
    stack.sim.state.complete_session(old.id)
    _answer(stack, "after the end")
    assert stack.receiver.texts("c1") == ["Echo #1: first", "Echo #1: after the end"]  # no failure notice
    new = next(s for s in stack.sim.state.list_sessions() if s.id != old.id)
    assert len(stack.sim.state.list_sessions()) == 2
    assert stack.sim.state.user_messages(old.id) == ["first"]
    assert stack.sim.state.user_messages(new.id) == ["after the end"]  # exactly one OCS message there
    assert stack.redis.zcard(Keys().dlq) == 0
    assert _record_session_id(stack) == new.id  # the old session id is forgotten
    _answer(stack, "and again")
    assert stack.receiver.texts("c1")[-1] == "Echo #2: and again"
    assert stack.sim.state.user_messages(new.id) == ["after the end", "and again"]
    assert len(stack.sim.state.list_sessions()) == 2


def test_a_watch_that_sees_the_session_ended_forgets_it_before_the_next_message(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()  # the watch looks into the idle session every second
    _answer(stack, "first")
    (old,) = stack.sim.state.list_sessions()
    stack.sim.state.complete_session(old.id)
    wait_for(lambda: _record_session_id(stack) is None, what="the watch to forget the finished session")
    _answer(stack, "after the end")
    assert stack.receiver.texts("c1") == ["Echo #1: first", "Echo #1: after the end"]
    assert stack.sim.state.request_counts()["message"] == 2  # never refused: the new session took it first
    new = next(s for s in stack.sim.state.list_sessions() if s.id != old.id)
    assert stack.sim.state.user_messages(new.id) == ["after the end"]
    assert _record_session_id(stack) == new.id


def test_an_uncertain_send_into_a_session_that_ended_is_resent_in_a_new_one(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(start_worker=False, worker={"reconcile_grace_s": 1.0, **NO_WATCH})
    asyncio.run(_interrupted_send(stack, "did you get this?", ocs_got_it=False))
    (old,) = stack.sim.state.list_sessions()
    stack.sim.state.complete_session(old.id)
    _start_worker(stack)
    wait_for(lambda: stack.receiver.texts("c1"), what="the answer from a new session")
    assert stack.receiver.texts("c1") == ["Echo #1: did you get this?"]
    assert stack.sim.state.request_counts()["message"] == 1  # the ended session was not even tried
    new = next(s for s in stack.sim.state.list_sessions() if s.id != old.id)
    assert stack.sim.state.user_messages(new.id) == ["did you get this?"]
    assert _record_session_id(stack) == new.id
    assert stack.redis.zcard(Keys().dlq) == 0
