"""Bursts: messages that arrive while a conversation's turn is with OCS go to OCS as one next
turn, in order, and are answered once; commands close a batch; limits split one; a failed batch
is parked whole and replayed whole. (The kill storm attacks batches under SIGKILL:
tests/workers/test_kill_storm.py.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from gateway import cli
from gateway.core.keys import Keys
from gateway.store import dead_letters
from tests.conftest import Stack, settled, wait_for

KEYS = Keys()
TURN = "ocsgw:turn:hooks/c1"


def _hold_first_turn(stack: Stack, text: str = "first") -> str:
    """Send ``text`` and keep its task at OCS until the test releases it; returns the task id."""
    stack.sim.state.knobs.reply_latency_s = 600
    stack.say("c1", text, msg_id=f"msg_{text}")
    wait_for(lambda: stack.redis.hget(TURN, "state") == b"sent", what="the first message at OCS")
    (task,) = stack.sim.state.tasks.values()
    stack.sim.state.knobs.reply_latency_s = 0.05
    return task.id


def _queue(stack: Stack, *texts: str, **kwargs: object) -> None:
    """Send ``texts`` (each acknowledged, so stored in order)."""
    for text in texts:
        assert stack.say("c1", text, msg_id=f"msg_{text}", **kwargs).status_code == 200


def _inbox_length(stack: Stack) -> int:
    return int(stack.redis.llen("ocsgw:inbox:hooks/c1"))


def _session_messages(stack: Stack) -> list[list[str]]:
    return [stack.sim.state.user_messages(s.id) for s in stack.sim.state.list_sessions()]


def test_messages_that_arrive_while_a_turn_is_with_ocs_go_to_ocs_as_its_next_turn(stack: Stack) -> None:
    task = _hold_first_turn(stack)
    _queue(stack, "second", "third")
    wait_for(lambda: _inbox_length(stack) == 3, what="two messages queued behind the first")
    stack.sim.state.finish_task_now(task)
    wait_for(lambda: len(stack.receiver.texts("c1")) == 2, what="two answers")
    settled(stack.redis)
    assert _session_messages(stack) == [["first", "second\n\nthird"]]
    assert stack.receiver.texts("c1") == ["Echo #1: first", "Echo #2: second\n\nthird"]
    single, burst = stack.receiver.received
    assert single["in_reply_to"] == "msg_first" and single["in_reply_to_all"] == ["msg_first"]
    # The burst's answer threads to its last message and names every message it answers.
    assert burst["in_reply_to"] == "msg_third" and burst["in_reply_to_all"] == ["msg_second", "msg_third"]
    assert stack.sim.state.request_counts()["message"] == 2


def test_with_coalescing_off_every_message_is_its_own_turn(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(channels={"hooks": {"coalesce": {"mode": "off"}}})
    task = _hold_first_turn(stack)
    _queue(stack, "second", "third")
    wait_for(lambda: _inbox_length(stack) == 3, what="two messages queued behind the first")
    stack.sim.state.finish_task_now(task)
    wait_for(lambda: len(stack.receiver.texts("c1")) == 3, what="three answers")
    assert _session_messages(stack) == [["first", "second", "third"]]
    assert stack.receiver.texts("c1") == ["Echo #1: first", "Echo #2: second", "Echo #3: third"]


def test_a_reset_closes_the_batch_before_it_and_is_never_merged(stack: Stack) -> None:
    task = _hold_first_turn(stack)
    _queue(stack, "before")
    assert stack.say("c1", "", msg_id="msg_reset", extra={"reset": True}).status_code == 200
    _queue(stack, "after", "later")
    wait_for(lambda: _inbox_length(stack) == 5, what="four items queued behind the first")
    stack.sim.state.finish_task_now(task)
    wait_for(lambda: len(stack.receiver.texts("c1")) == 4, what="four answers")
    settled(stack.redis)
    old, new = sorted(stack.sim.state.list_sessions(), key=lambda s: s.created_at)
    assert stack.sim.state.user_messages(old.id) == ["first", "before"]
    assert stack.sim.state.user_messages(new.id) == ["after\n\nlater"]  # the reset began a new session
    texts = stack.receiver.texts("c1")
    assert texts[:2] == ["Echo #1: first", "Echo #2: before"] and texts[3] == "Echo #1: after\n\nlater"
    assert texts[2] == stack.config.channels["hooks"].reset_notice


def test_a_burst_over_the_batch_limits_goes_as_several_turns_in_order(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(channels={"hooks": {"coalesce": {"max_messages": 2, "max_chars": 12}}})
    task = _hold_first_turn(stack)
    _queue(stack, "a1", "a2", "b1", "long-message", "c1")
    wait_for(lambda: _inbox_length(stack) == 6, what="five messages queued behind the first")
    stack.sim.state.finish_task_now(task)
    wait_for(lambda: len(stack.receiver.texts("c1")) == 5, what="five answers")
    settled(stack.redis)
    # Two messages at most; "b1" + "long-message" would pass 12 characters, so each goes alone,
    # and a message longer than the limit still goes (alone) rather than never.
    assert _session_messages(stack) == [["first", "a1\n\na2", "b1", "long-message", "c1"]]


def test_a_group_burst_names_each_sender(stack: Stack) -> None:
    task = _hold_first_turn(stack)
    stack.say("c1", "hi all", msg_id="msg_ada", extra={"sender": {"id": "ada", "name": "Ada"}})
    stack.say("c1", "hello", msg_id="msg_bob", extra={"sender": {"id": "bob", "name": "Bob"}})
    wait_for(lambda: _inbox_length(stack) == 3, what="two messages queued behind the first")
    stack.sim.state.finish_task_now(task)
    wait_for(lambda: len(stack.receiver.texts("c1")) == 2, what="two answers")
    assert _session_messages(stack) == [["first", "Ada: hi all\n\nBob: hello"]]


def test_the_quiet_window_gathers_a_burst_before_the_first_send(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(channels={"hooks": {"coalesce": {"quiet_ms": 3000}}})
    for text in ("one", "two", "three"):
        stack.say("c1", text, msg_id=f"msg_{text}")
    wait_for(lambda: stack.receiver.texts("c1"), timeout=30, what="the answer")
    settled(stack.redis)
    assert _session_messages(stack) == [["one\n\ntwo\n\nthree"]]
    assert stack.receiver.texts("c1") == ["Echo #1: one\n\ntwo\n\nthree"]


def test_a_failed_burst_is_parked_whole_and_replayed_whole(
    stack: Stack, tmp_path: Path
) -> None:
    task = _hold_first_turn(stack)
    _queue(stack, "second", "third")
    wait_for(lambda: _inbox_length(stack) == 3, what="two messages queued behind the first")
    stack.sim.state.fail_next("message", status=400)  # OCS refuses the burst's message: no retry
    stack.sim.state.finish_task_now(task)
    wait_for(lambda: stack.redis.zcard(KEYS.dlq), what="the burst in the dead-letter store")
    (letter_id,) = [m.decode() for m in stack.redis.zrange(KEYS.dlq, 0, -1)]
    letter = dead_letters.DeadLetter.from_json(stack.redis.get(KEYS.dead_letter(letter_id)) or b"")
    assert json.loads(letter.inbound)["text"] == "second"
    assert [json.loads(item)["text"] for item in letter.batch] == ["third"]
    wait_for(lambda: len(stack.receiver.texts("c1")) == 2, what="the first answer and the failure notice")
    settled(stack.redis)

    config = tmp_path / "gateway.yaml"
    config.write_text(f"redis_url: {stack.redis_url}\n", encoding="utf-8")
    assert cli.main(["--config", str(config), "dlq", "replay", letter_id]) == 0
    wait_for(lambda: len(stack.receiver.texts("c1")) == 3, what="the replayed burst's answer")
    settled(stack.redis)
    assert _session_messages(stack) == [["first", "second\n\nthird"]]
    assert stack.receiver.texts("c1")[-1] == "Echo #2: second\n\nthird"
