"""Slack progress (issue 16): the thread's status (``assistant.threads.setStatus``) says "is
thinking…" and then OCS's progress lines, the answer clears it, and where Slack refuses the
status the ⏳ reaction stands in, the refusal remembered so it is not asked again at every poll.
Real slack_sdk against the fake Web API."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from adapters.slack.api import SlackApi
from adapters.slack.outbound import WORKING_REACTION
from adapters.slack.status import MAX_STATUS_CHARS, REFUSAL_TTL_S, STATUS_REFRESH_S, WORKING_STATUS, ThreadStatus
from gateway.core.config import Secret
from gateway.core.models import Outgoing
from tests.adapters._slack import MakeEnv, SlackEnv, make_slack
from tests.fakes.slack_api import FakeSlack, Workspace, fake_slack

__all__ = ["fake_slack", "make_slack"]

TS = "1700000000.000100"
THREAD = {"team": "T1", "channel": "C1", "thread_ts": TS, "reply_to": TS}
ASSISTANT = {"team": "T1", "channel": "D1", "thread_ts": "1700000000.000900", "reply_to": "1700000001.000100"}
DM = {"team": "T1", "channel": "D1", "reply_to": "1700000002.000100"}


async def single(make_slack: MakeEnv, fake: FakeSlack, **channel: object) -> tuple[SlackEnv, Workspace]:
    ws = fake.add_workspace("T1")
    return await make_slack(bot_token=Secret(ws.token), **channel), ws


def set_statuses(fake: FakeSlack) -> list[str]:
    return [status for _, _, status in fake.status_history]


async def test_working_then_progress_lines_then_the_answer_clears_the_status(
    make_slack: MakeEnv, fake_slack: FakeSlack
) -> None:
    env, ws = await single(make_slack, fake_slack)
    await env.adapter.show_working(THREAD)
    assert fake_slack.statuses[("C1", TS)] == WORKING_STATUS
    assert await env.adapter.show_progress(THREAD, "is searching the knowledge base", "turn-1") is True
    assert await env.adapter.show_progress(THREAD, "is searching the knowledge base", "turn-1") is True  # a repeat
    assert await env.adapter.show_progress(THREAD, "is writing the answer", "turn-1") is True
    (call,) = [c for c in fake_slack.calls("assistant.threads.setStatus") if c.params["status"] == "is writing the answer"]
    assert call.token == ws.token and (call.params["channel_id"], call.params["thread_ts"]) == ("C1", TS)
    await env.adapter.send(THREAD, Outgoing(text="Open 9 to 1."))
    assert fake_slack.statuses[("C1", TS)] == ""  # Slack clears it when the app posts in the thread
    await env.adapter.clear_working(THREAD)
    assert set_statuses(fake_slack) == [WORKING_STATUS, "is searching the knowledge base", "is writing the answer"]
    assert fake_slack.calls("reactions.add") == [] and fake_slack.calls("reactions.remove") == []


async def test_refreshing_the_working_state_keeps_the_progress_line(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, _ = await single(make_slack, fake_slack)
    assert env.adapter.working_refresh_s is not None and env.adapter.working_refresh_s < 120  # Slack drops it at 2 min
    await env.adapter.show_working(THREAD)
    await env.adapter.show_progress(THREAD, "is reading", "turn-1")
    await env.adapter.show_working(THREAD)  # the engine's refresh
    assert fake_slack.statuses[("C1", TS)] == "is reading"
    assert set_statuses(fake_slack) == [WORKING_STATUS, "is reading"]


async def test_refreshing_the_working_state_does_not_react_again(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, _ = await single(make_slack, fake_slack)
    await env.adapter.show_working(DM)
    await env.adapter.show_working(DM)
    assert len(fake_slack.calls("reactions.add")) == 1


async def test_a_turn_that_posts_nothing_clears_its_status(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, _ = await single(make_slack, fake_slack)
    await env.adapter.show_working(ASSISTANT)
    await env.adapter.show_progress(ASSISTANT, "is reading", "turn-1")
    await env.adapter.clear_working(ASSISTANT)  # e.g. the user blocked the bot, nothing was posted
    assert fake_slack.statuses[("D1", ASSISTANT["thread_ts"])] == ""
    assert set_statuses(fake_slack)[-1] == ""


async def test_a_new_line_after_a_posted_notice_is_shown_again(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, _ = await single(make_slack, fake_slack)
    await env.adapter.show_progress(THREAD, "is reading", "turn-1")
    await env.adapter.send(THREAD, Outgoing(text="This is taking longer than usual."))  # the slow notice
    assert await env.adapter.show_progress(THREAD, "is reading", "turn-1") is True
    assert fake_slack.statuses[("C1", TS)] == "is reading"


@pytest.mark.parametrize("code", ["missing_scope", "not_allowed_token_type"])
async def test_a_refused_status_falls_back_to_the_reaction_and_is_not_asked_again(
    make_slack: MakeEnv, fake_slack: FakeSlack, code: str
) -> None:
    env, _ = await single(make_slack, fake_slack)
    fake_slack.status_refusal = code
    await env.adapter.show_working(THREAD)
    assert fake_slack.reactions[("C1", TS)] == [WORKING_REACTION]
    for line in ("is reading", "is reading", "is writing"):
        assert await env.adapter.show_progress(THREAD, line, "turn-1") is False
    other = {**THREAD, "thread_ts": "1700000009.000100", "reply_to": "1700000009.000100"}
    await env.adapter.show_working(other)  # the whole workspace: another thread is not tried either
    assert len(fake_slack.calls("assistant.threads.setStatus")) == 1
    await env.adapter.clear_working(THREAD)
    assert fake_slack.reactions[("C1", TS)] == []


async def test_a_refusal_for_one_thread_leaves_the_others_their_status(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, _ = await single(make_slack, fake_slack)
    fake_slack.fail_next("assistant.threads.setStatus", "invalid_thread_ts")
    assert await env.adapter.show_progress(THREAD, "is reading", "turn-1") is False
    assert await env.adapter.show_progress(THREAD, "is reading", "turn-1") is False  # remembered
    assert await env.adapter.show_progress(ASSISTANT, "is reading", "turn-2") is True
    assert len(fake_slack.calls("assistant.threads.setStatus")) == 2


async def test_a_rate_limited_status_is_not_raised_nor_remembered(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, _ = await single(make_slack, fake_slack)
    fake_slack.rate_limit_next("assistant.threads.setStatus", retry_after=2)
    assert await env.adapter.show_progress(THREAD, "is reading", "turn-1") is False
    assert await env.adapter.show_progress(THREAD, "is reading", "turn-1") is True
    assert [c.status for c in fake_slack.calls("assistant.threads.setStatus")] == [429, 200]


async def test_a_transient_failure_shows_the_reaction_for_the_working_state(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, _ = await single(make_slack, fake_slack)
    fake_slack.fail_next("assistant.threads.setStatus", "internal_error")
    await env.adapter.show_working(THREAD)
    assert fake_slack.reactions[("C1", TS)] == [WORKING_REACTION]
    assert await env.adapter.show_progress(THREAD, "is reading", "turn-1") is True  # not remembered
    await env.adapter.send(THREAD, Outgoing(text="done"))
    await env.adapter.clear_working(THREAD)
    assert fake_slack.reactions[("C1", TS)] == []  # the reaction this process added is removed


async def test_a_dm_outside_a_thread_keeps_the_reaction(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, _ = await single(make_slack, fake_slack)
    await env.adapter.show_working(DM)
    assert await env.adapter.show_progress(DM, "is reading", "turn-1") is False
    assert fake_slack.calls("assistant.threads.setStatus") == []
    assert fake_slack.reactions[("D1", DM["reply_to"])] == [WORKING_REACTION]


async def test_show_progress_off_keeps_the_reaction_as_before(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, _ = await single(make_slack, fake_slack, show_progress=False)
    await env.adapter.show_working(THREAD)
    assert await env.adapter.show_progress(THREAD, "is reading", "turn-1") is False
    await env.adapter.clear_working(THREAD)
    assert fake_slack.calls("assistant.threads.setStatus") == []
    assert [c.status for c in fake_slack.calls("reactions.add")] == [200]
    assert fake_slack.reactions[("C1", TS)] == []


async def test_an_uninstalled_workspace_shows_nothing_and_raises_nothing(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, ws = await single(make_slack, fake_slack)
    fake_slack.revoke(ws.token)
    assert await env.adapter.show_progress(THREAD, "is reading", "turn-1") is False
    await env.adapter.show_working(THREAD)
    await env.adapter.clear_working(THREAD)


async def test_a_long_progress_report_becomes_one_short_line(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, _ = await single(make_slack, fake_slack)
    assert await env.adapter.show_progress(THREAD, "is reading\n\n" + "page " * 100, "turn-1") is True
    status = fake_slack.statuses[("C1", TS)]
    assert "\n" not in status and len(status) == MAX_STATUS_CHARS and status.startswith("is reading page")


# -- timing, on a clock the test moves ------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def status_env(fake_slack: FakeSlack) -> AsyncIterator[tuple[ThreadStatus, str, Clock]]:
    ws = fake_slack.add_workspace("T1")
    api = SlackApi(fake_slack.api_url)
    api.open(None)
    clock = Clock()
    yield ThreadStatus(name="sl", api=api, clock=clock), ws.token, clock
    await api.aclose()


async def test_the_same_line_is_set_again_before_slack_drops_it(
    status_env: tuple[ThreadStatus, str, Clock], fake_slack: FakeSlack
) -> None:
    status, token, clock = status_env
    assert await status.set(token, THREAD, "is reading")
    clock.now += STATUS_REFRESH_S - 1
    assert await status.set(token, THREAD, "is reading")
    assert len(fake_slack.calls("assistant.threads.setStatus")) == 1
    clock.now += 2
    assert await status.set(token, THREAD, "is reading")
    assert len(fake_slack.calls("assistant.threads.setStatus")) == 2


async def test_a_refused_workspace_is_asked_again_after_an_hour(
    status_env: tuple[ThreadStatus, str, Clock], fake_slack: FakeSlack
) -> None:
    status, token, clock = status_env
    fake_slack.status_refusal = "missing_scope"
    assert not await status.set(token, THREAD, "is reading")
    fake_slack.status_refusal = None  # the app was reinstalled with the scope
    clock.now += REFUSAL_TTL_S - 1
    assert not status.usable(THREAD)
    clock.now += 2
    assert await status.set(token, THREAD, "is reading")
