"""Delivery outlives outages, and a reset always answers: a callback endpoint down for far
longer than the attempts the old engine allowed is still delivered; one down past the channel's
retry budget is parked with its answer; a reset whose session OCS will not end still forgets it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from gateway.core.keys import Keys
from tests.conftest import SimServer, Stack, wait_for


def _dead_letters(stack: Stack) -> list[dict[str, Any]]:
    keys = Keys()
    ids = stack.redis.zrange(keys.dlq, 0, -1)
    return [json.loads(stack.redis.get(keys.dead_letter(i.decode())) or "{}") for i in ids]


def test_a_callback_down_for_many_times_max_attempts_is_delivered_when_it_returns(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(worker={"max_attempts": 2, "backoff_max_s": 0.5})
    stack.receiver.fail_with.extend([503] * 10_000)
    stack.say("c1", "anyone home?")
    # Twice the attempts after which a turn used to be dead-lettered (each retry waits the
    # adapter's 5 s retry-after for a 503): still retrying, nothing parked.
    wait_for(lambda: stack.receiver.attempts >= 4, timeout=40, what="four refused deliveries")
    assert _dead_letters(stack) == []
    stack.receiver.fail_with.clear()
    wait_for(lambda: stack.receiver.texts("c1"), timeout=10, what="the delivery once the callback is back")
    assert stack.receiver.texts("c1") == ["Echo #1: anyone home?"]
    assert _dead_letters(stack) == []
    (session,) = stack.sim.state.list_sessions()
    assert stack.sim.state.user_messages(session.id) == ["anyone home?"]


def test_a_callback_down_past_the_retry_budget_is_parked_with_its_answer(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(channels={"hooks": {"delivery_retry_budget_s": 1.0}}, worker={"backoff_max_s": 0.3})
    stack.receiver.fail_with.extend([503] * 10_000)
    stack.say("c1", "hello?")
    wait_for(lambda: _dead_letters(stack), timeout=20, what="the parked delivery")
    (letter,) = _dead_letters(stack)
    assert letter["stage"] == "delivery"
    assert letter["reply"]["text"] == "Echo #1: hello?"
    assert [part["text"] for part in letter["parts"]] == ["Echo #1: hello?"]


def _demo_bot(sim: SimServer, **extra: Any) -> dict[str, Any]:
    return {"demo": extra}


def test_a_reset_without_the_right_to_end_sessions_still_forgets_the_session(make_stack: Callable[..., Stack], sim: SimServer) -> None:
    stack = make_stack(bots=_demo_bot(sim, scopes="chat:start sessions:read files:read"))
    stack.say("c1", "first")
    wait_for(lambda: stack.receiver.texts("c1"), what="the first answer")
    stack.say("c1", "", extra={"reset": True})
    wait_for(lambda: len(stack.receiver.texts("c1")) == 2, what="the reset notice")
    assert stack.receiver.texts("c1")[1] == stack.config.channels["hooks"].reset_notice
    stack.say("c1", "again")
    wait_for(lambda: len(stack.receiver.texts("c1")) == 3, what="the answer in a new session")
    assert stack.receiver.texts("c1")[2] == "Echo #1: again"
    assert _dead_letters(stack) == []


def test_a_reset_with_a_stale_token_refreshes_it_and_ends_the_session(stack: Stack) -> None:
    stack.say("c1", "first")
    wait_for(lambda: stack.receiver.texts("c1"), what="the first answer")
    (session,) = stack.sim.state.list_sessions()
    stack.sim.state.tokens.clear()  # OCS revoked every token the gateway has cached
    stack.say("c1", "", extra={"reset": True})
    wait_for(lambda: len(stack.receiver.texts("c1")) == 2, what="the reset notice")
    assert stack.sim.state.sessions[session.id].status == "pending-review"
    assert _dead_letters(stack) == []
