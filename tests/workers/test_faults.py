"""The turn runner under the faults the turn-runner issue measured: a send whose answer is cut
off, a step slower than the lease with a second worker waiting, a bug in a step, the hosted
WAF refusing requests, an exhausted request budget, and OCS forgetting every session."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from adapters.webhook.adapter import WebhookAdapter
from gateway.core.keys import Keys
from gateway.core.models import Reply
from gateway.ocs.budget import Priority, RequestBudget
from gateway.services import worker_process
from tests.conftest import SimServer, Stack, wait_for
from tests.support.scrape import scrape


def _demo_bot(sim: SimServer, **extra: Any) -> dict[str, Any]:
    return {"demo": extra}


def _dead_letters(stack: Stack) -> int:
    return int(stack.redis.zcard(Keys().dlq))


def _sessions_user_messages(stack: Stack) -> list[list[str]]:
    return [stack.sim.state.user_messages(s.id) for s in stack.sim.state.list_sessions()]


def test_a_send_whose_answer_is_cut_off_reaches_ocs_once_and_is_answered_once(stack: Stack) -> None:
    stack.sim.state.drop_after_accept("message", count=1)
    stack.say("c1", "are you there?")
    wait_for(lambda: stack.receiver.texts("c1"), what="the answer")
    assert _sessions_user_messages(stack) == [["are you there?"]]
    assert stack.receiver.texts("c1") == ["Echo #1: are you there?"]
    stack.say("c1", "and now?")
    wait_for(lambda: len(stack.receiver.texts("c1")) == 2, what="the next answer")
    assert stack.receiver.texts("c1")[1] == "Echo #2: and now?"


def test_a_step_slower_than_the_lease_is_not_repeated_by_a_competing_worker(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(worker={"lease_ttl_s": 1.0, "stall_grace_s": 0.3, "sweep_interval_s": 0.1})
    second = worker_process(stack.config, stack.redis_url)
    second.start()
    try:
        stack.sim.state.knobs.rtt_s = 1.5  # every OCS call outlasts the lease's TTL
        for n in range(3):
            stack.say(f"c{n}", f"slow {n}")
        for n in range(3):
            wait_for(lambda n=n: stack.receiver.texts(f"c{n}"), timeout=30, what=f"the answer in c{n}")
    finally:
        stack.sim.state.knobs.rtt_s = 0.0
        second.stop()
    assert sorted(_sessions_user_messages(stack)) == [["slow 0"], ["slow 1"], ["slow 2"]]
    for n in range(3):
        assert stack.receiver.texts(f"c{n}") == [f"Echo #1: slow {n}"]


def test_a_step_that_keeps_raising_is_dead_lettered_and_the_conversation_moves_on(
    make_stack: Callable[..., Stack], monkeypatch: pytest.MonkeyPatch
) -> None:
    render = WebhookAdapter.render

    def broken_render(self: WebhookAdapter, reply: Reply) -> Any:
        if "boom" in reply.text:
            raise RuntimeError("a bug in rendering")
        return render(self, reply)

    monkeypatch.setattr(WebhookAdapter, "render", broken_render)
    stack = make_stack(worker={"max_attempts": 3})
    stack.say("c1", "boom")
    wait_for(lambda: _dead_letters(stack) == 1, what="the turn in the dead-letter store")
    stack.say("c1", "still there?")
    wait_for(lambda: "Echo #2: still there?" in stack.receiver.texts("c1"), what="the next message answered")
    (letter_id,) = stack.redis.zrange(Keys().dlq, 0, -1)
    letter = stack.redis.get(Keys().dead_letter(letter_id.decode())) or b""
    assert b"a bug in rendering" in letter


def test_a_waf_storm_is_waited_out_and_nothing_is_dead_lettered(make_stack: Callable[..., Stack], sim: SimServer) -> None:
    stack = make_stack(bots=_demo_bot(sim, waf_backoff_s=0.5))
    stack.sim.state.knobs.waf_limit = 6
    stack.sim.state.knobs.waf_window_s = 1.0
    for n in range(6):
        stack.say(f"c{n}", f"hi {n}")
    for n in range(6):
        wait_for(lambda n=n: stack.receiver.texts(f"c{n}"), timeout=40, what=f"the answer in c{n}")
    assert stack.sim.state.waf_blocked() > 0
    assert _dead_letters(stack) == 0
    for n in range(6):
        assert stack.receiver.texts(f"c{n}") == [f"Echo #1: hi {n}"]


def _fill_the_origin_budget(stack: Stack, limit: int, window_s: int, *, room_s: float) -> float:
    """Book every request of the demo bot's origin bucket in the current window, once that has
    ``room_s`` left by Redis TIME, as another gateway process would; returns the window's end."""

    async def fill() -> float:
        client = aioredis.Redis.from_url(stack.redis_url)
        try:
            budget = RequestBudget(client, Keys(), lambda bot: stack.config.bots[bot].budget)
            while True:
                seconds, micros = await client.time()
                now = seconds + micros / 1_000_000
                end = now - now % window_s + window_s
                if end - now >= room_s:
                    break
                await asyncio.sleep(0.02)
            base_url = stack.config.bots["demo"].base_url
            for _ in range(limit):
                assert (await budget.acquire(bot="demo", base_url=base_url, priority=Priority.WAITING)).granted
            assert not (await budget.acquire(bot="demo", base_url=base_url, priority=Priority.WAITING)).granted
            return end
        finally:
            await client.aclose()

    return asyncio.run(fill())


def test_an_exhausted_request_budget_delays_turns_but_loses_none(make_stack: Callable[..., Stack], sim: SimServer) -> None:
    limit, window_s = 30, 3
    stack = make_stack(
        bots=_demo_bot(sim, budget={"requests_per_window": limit, "window_s": window_s}),
        worker={"metrics_port": 0, "metrics_host": "127.0.0.1"},
    )
    worker_http: Any = getattr(stack.worker, "http", None)
    assert worker_http is not None, "the worker's HTTP listener is not running"
    end = _fill_the_origin_budget(stack, limit, window_s, room_s=2.0)
    for n in range(8):
        stack.say(f"c{n}", f"budget {n}")
    wait_for(
        lambda: scrape(str(worker_http.url)).value("ocsgw_ocs_budget_refusals_total", bot="demo", scope="origin"),
        what="the worker's first request refused by the budget",
    )
    for n in range(8):
        wait_for(lambda n=n: stack.receiver.texts(f"c{n}"), timeout=40, what=f"the answer in c{n}")
    # Refused, not lost: every turn began at OCS only once the window the budget was full in ended.
    assert min(session.created_at.timestamp() for session in stack.sim.state.list_sessions()) >= end
    assert _dead_letters(stack) == 0
    assert sorted(_sessions_user_messages(stack)) == sorted([[f"budget {n}"] for n in range(8)])


def test_bot_initiated_polls_yield_to_waiting_turns_when_the_budget_is_short(
    make_stack: Callable[..., Stack], sim: SimServer
) -> None:
    budget = {"requests_per_window": 30, "window_s": 2, "background_share": 0.3, "send_share": 0.9}
    stack = make_stack(
        bots=_demo_bot(sim, budget=budget),
        worker={"watch_interval_s": 0.2, "watch_recent_s": 600, "sweep_interval_s": 0.1},
    )
    for n in range(10):
        stack.say(f"c{n}", "hello")
    for n in range(10):
        wait_for(lambda n=n: stack.receiver.texts(f"c{n}"), timeout=40, what=f"the first answer in c{n}")
    # Ten sessions now want a watch every 0.2 s: far more than the budget allows.
    started = stack.redis.time()[0]
    polls_before = sim.state.request_counts()["session_poll"]
    for n in range(10):
        stack.say(f"c{n}", "second")
    for n in range(10):
        wait_for(lambda n=n: len(stack.receiver.texts(f"c{n}")) == 2, timeout=60, what=f"the second answer in c{n}")
    ended = stack.redis.time()[0]
    windows = ended // 2 - started // 2 + 1
    background_cap = int(30 * 0.3)
    assert sim.state.request_counts()["session_poll"] - polls_before <= windows * background_cap
    assert _dead_letters(stack) == 0
    for n in range(10):
        assert stack.receiver.texts(f"c{n}") == ["Echo #1: hello", "Echo #2: second"]


def test_after_ocs_forgets_every_session_the_next_messages_are_answered_in_new_ones(stack: Stack) -> None:
    for n in range(3):
        stack.say(f"c{n}", "before")
    for n in range(3):
        wait_for(lambda n=n: stack.receiver.texts(f"c{n}"), what="the first answers")
    old = {s.id for s in stack.sim.state.list_sessions()}
    stack.sim.state.forget_sessions()
    for n in range(3):
        stack.say(f"c{n}", "after")
    for n in range(3):
        wait_for(lambda n=n: len(stack.receiver.texts(f"c{n}")) == 2, what="the answers after the restart")
        assert stack.receiver.texts(f"c{n}")[1] == "Echo #1: after"
    assert not old & {s.id for s in stack.sim.state.list_sessions()}
    assert _dead_letters(stack) == 0
