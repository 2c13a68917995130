"""OCS's progress lines while a webhook user waits: opt-in signed ``progress`` callbacks, one per
new line, never the answer; polls made only to show progress yield first to the OCS budget."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import Stack, settled, wait_for
from workers import turns

LINES = ("Reading your question…", "Looking it up…", "Writing the answer…")


def _hold_with_lines(stack: Stack, text: str = "hello") -> str:
    stack.sim.state.knobs.progress_lines = LINES
    # A new bot is polled no sooner than the widget (at 1, 2, 3 ... s): lines 1.5 s apart are
    # each seen by one of those polls with half a second to spare.
    stack.sim.state.knobs.progress_every_s = 1.5
    stack.sim.state.knobs.reply_latency_s = 600
    stack.say("c1", text, msg_id="msg_1")
    wait_for(lambda: stack.sim.state.tasks, what="the message at OCS")
    (task,) = stack.sim.state.tasks.values()
    return task.id


def test_opted_in_webhooks_get_one_signed_progress_callback_per_new_line(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(channels={"hooks": {"show_progress": True}})
    task = _hold_with_lines(stack)
    wait_for(lambda: stack.receiver.progress("c1")[-1:] == [LINES[-1]], timeout=30, what="the last progress line")
    stack.sim.state.finish_task_now(task)
    wait_for(lambda: stack.receiver.texts("c1"), what="the answer")
    settled(stack.redis)
    assert stack.receiver.progress("c1") == list(LINES)  # each line once, in order
    assert stack.receiver.texts("c1") == ["Echo #1: hello"]  # progress is never the answer
    answer = [m for m in stack.receiver.received if m.get("kind") != "progress"]
    assert len(answer) == 1 and answer[0]["kind"] == "answer"


def test_without_the_opt_in_a_webhook_gets_no_progress(stack: Stack) -> None:
    task = _hold_with_lines(stack)
    wait_for(lambda: stack.sim.state.request_counts()["task_poll"] >= 6, timeout=30, what="polls past every line")
    stack.sim.state.finish_task_now(task)
    wait_for(lambda: stack.receiver.texts("c1"), what="the answer")
    assert stack.receiver.progress("c1") == []


def _polls_for_one_answer(make_stack: Callable[..., Stack], run: str, *, show_progress: bool, background_share: float) -> int:
    budget = {"requests_per_window": 10_000, "window_s": 60, "background_share": background_share, "send_share": 0.9}
    stack = make_stack(
        channels={"hooks": {"show_progress": show_progress}},
        bots={"demo": {"budget": budget}},
        worker={"poll_max_s": 2.0, "watch_interval_s": 600},
    )
    stack.sim.state.knobs.progress_lines = LINES
    stack.sim.state.knobs.progress_every_s = 0.2
    stack.sim.state.knobs.reply_latency_s = 4.0
    before = int(stack.sim.state.request_counts()["task_poll"])
    stack.say(run, "hello", msg_id=f"msg_{run}")
    wait_for(lambda: stack.receiver.texts(run), timeout=30, what="the answer")
    settled(stack.redis)
    assert stack.receiver.texts(run) == ["Echo #1: hello"]
    polls = int(stack.sim.state.request_counts()["task_poll"]) - before
    stack.stop_worker()
    return polls


def test_progress_polls_are_the_first_to_yield_when_the_budget_is_short(
    make_stack: Callable[..., Stack], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Progress alone would poll every 0.2 s; the learned schedule's gaps reach 2 s. With the
    # budget's background share at one request a window, every progress-only poll but one is
    # refused, and the answer still comes on the schedule's polls: about as many as without
    # progress, far fewer than with progress and room in the budget.
    monkeypatch.setattr(turns, "PROGRESS_POLL_S", 0.2)
    plain = _polls_for_one_answer(make_stack, "plain", show_progress=False, background_share=0.6)
    short = _polls_for_one_answer(make_stack, "short", show_progress=True, background_share=0.0001)
    roomy = _polls_for_one_answer(make_stack, "roomy", show_progress=True, background_share=0.6)
    assert short <= plain + 2, (short, plain)
    assert roomy > short + 3, (roomy, short)
