"""The Slack channel end to end: signed events into the running gateway (edge + worker + OCS
simulator, tests/HARNESS.md), replies out to the fake Slack Web API."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from adapters.slack.keys import SlackKeys
from gateway.core.config import Secret
from gateway.core.keys import Keys
from tests.conftest import Stack, settled, wait_for
from tests.fakes.slack_api import (
    FakeSlack,
    Workspace,
    event_envelope,
    fake_slack,
    signed_headers,
)

__all__ = ["fake_slack"]

SECRET = "e2e-signing-secret"
MakeStack = Callable[..., Stack]


def slack_channel(fake: FakeSlack, **settings: Any) -> dict[str, Any]:
    return {"type": "slack", "bot": "demo", "signing_secret": Secret(SECRET), "api_base_url": fake.api_url, **settings}


def deliver(stack: Stack, envelope: dict[str, Any], *, retry_num: int | None = None, timestamp: int | None = None,
            secret: str = SECRET) -> httpx.Response:
    """One Events API delivery, signed afresh like Slack signs each attempt (docs/PLATFORMS.md §2.1, §2.4)."""
    raw = json.dumps(envelope).encode()
    headers = signed_headers(secret, raw, timestamp=timestamp, retry_num=retry_num)
    return stack.http.post(f"{stack.url}/slack/sl/events", content=raw, headers=headers)


def dm(ws: Workspace, text: str, *, ts: str, event_id: str, channel: str = "D100", **extra: Any) -> dict[str, Any]:
    event = {"type": "message", "channel": channel, "channel_type": "im", "user": "UHUMAN", "text": text, "ts": ts, **extra}
    return event_envelope(event, team_id=ws.team_id, event_id=event_id, bot_user_id=ws.user_id)


def mention(ws: Workspace, text: str, *, ts: str, event_id: str, kind: str = "app_mention", **extra: Any) -> dict[str, Any]:
    event = {"type": kind, "channel": "C100", "user": "UHUMAN", "text": f"<@{ws.user_id}> {text}", "ts": ts, **extra}
    if kind == "message":
        event["channel_type"] = "channel"
    return event_envelope(event, team_id=ws.team_id, event_id=event_id, bot_user_id=ws.user_id)


def ocs_messages(stack: Stack) -> list[str]:
    return [text for session in stack.sim.state.list_sessions() for text in stack.sim.state.user_messages(session.id)]


@pytest.fixture
def single(make_stack: MakeStack, fake_slack: FakeSlack) -> tuple[Stack, Workspace]:
    ws = fake_slack.add_workspace("T100")
    return make_stack(channels={"sl": slack_channel(fake_slack, bot_token=Secret(ws.token))}), ws


def test_dm_round_trip_with_working_reaction(single: tuple[Stack, Workspace], fake_slack: FakeSlack) -> None:
    stack, ws = single
    assert deliver(stack, dm(ws, "hello", ts="1700000001.000100", event_id="Ev1")).status_code == 200
    assert wait_for(lambda: fake_slack.texts(channel="D100"), what="a reply") == ["Echo #1: hello"]
    (call,) = fake_slack.calls("chat.postMessage")
    assert call.token == ws.token and "thread_ts" not in call.params
    assert [c.params["timestamp"] for c in fake_slack.calls("reactions.add")] == ["1700000001.000100"]
    wait_for(lambda: fake_slack.calls("reactions.remove"), what="the working reaction removed")
    assert fake_slack.reactions[("D100", "1700000001.000100")] == []


def test_mention_answered_in_thread_and_follow_up_continues_the_session(
    single: tuple[Stack, Workspace], fake_slack: FakeSlack
) -> None:
    stack, ws = single
    root = "1700000002.000100"
    deliver(stack, mention(ws, "first", ts=root, event_id="Ev2"))
    wait_for(lambda: fake_slack.texts(channel="C100"), what="the answer")
    (answer,) = fake_slack.messages(channel="C100")
    assert (answer.text, answer.thread_ts) == ("Echo #1: first", root)
    # A plain reply in the thread (no mention) reaches the bot because it is part of the thread.
    follow = {"type": "message", "channel": "C100", "channel_type": "channel", "user": "UHUMAN",
              "text": "second", "ts": "1700000003.000100", "thread_ts": root}
    deliver(stack, event_envelope(follow, team_id="T100", event_id="Ev3"))
    wait_for(lambda: len(fake_slack.texts(channel="C100")) == 2, what="the follow-up answer")
    assert [(m.text, m.thread_ts) for m in fake_slack.messages(channel="C100")] == [
        ("Echo #1: first", root), ("Echo #2: second", root),  # "#2": the same OCS session
    ]


def test_own_message_is_ignored_so_there_is_no_loop(single: tuple[Stack, Workspace], fake_slack: FakeSlack) -> None:
    stack, ws = single
    deliver(stack, dm(ws, "hi", ts="1700000004.000100", event_id="Ev4"))
    (reply,) = wait_for(lambda: fake_slack.messages(channel="D100"), what="a reply")
    # Slack echoes the bot's own post back as a message.im event: bot_id + user, no subtype (docs/PLATFORMS.md §2.5).
    echo = dm(ws, reply.text, ts=reply.ts, event_id="Ev5", bot_id=ws.bot_id)
    echo["event"]["user"] = ws.user_id
    assert deliver(stack, echo).status_code == 200
    settled(stack.redis)
    assert fake_slack.texts(channel="D100") == ["Echo #1: hi"]
    assert ocs_messages(stack) == ["hi"]


def test_retried_event_is_answered_once(single: tuple[Stack, Workspace], fake_slack: FakeSlack) -> None:
    stack, ws = single
    envelope = dm(ws, "once", ts="1700000006.000100", event_id="Ev6")
    assert deliver(stack, envelope).status_code == 200
    assert deliver(stack, envelope, retry_num=1).status_code == 200
    wait_for(lambda: fake_slack.texts(channel="D100"), what="a reply")
    settled(stack.redis)
    assert fake_slack.texts(channel="D100") == ["Echo #1: once"]
    assert ocs_messages(stack) == ["once"]


def test_same_message_under_a_new_event_id_is_answered_once(single: tuple[Stack, Workspace], fake_slack: FakeSlack) -> None:
    stack, ws = single
    ts = "1700000007.000100"
    deliver(stack, mention(ws, "twice?", ts=ts, event_id="Ev7a"))
    deliver(stack, mention(ws, "twice?", ts=ts, event_id="Ev7b", kind="message"))
    wait_for(lambda: fake_slack.texts(channel="C100"), what="a reply")
    settled(stack.redis)
    assert fake_slack.texts(channel="C100") == ["Echo #1: twice?"]


def test_bad_signature_and_stale_timestamp_are_refused(single: tuple[Stack, Workspace], fake_slack: FakeSlack) -> None:
    stack, ws = single
    assert deliver(stack, dm(ws, "forged", ts="1.1", event_id="Ev8"), secret="wrong").status_code == 401
    stale = int(time.time()) - 360
    assert deliver(stack, dm(ws, "replayed", ts="1.2", event_id="Ev9"), timestamp=stale).status_code == 401
    settled(stack.redis)  # refused before anything was stored: nothing is even queued
    assert ocs_messages(stack) == [] and fake_slack.messages() == []


def test_url_verification_is_answered_by_the_edge(single: tuple[Stack, Workspace]) -> None:
    stack, _ = single
    response = deliver(stack, {"token": "x", "challenge": "c-123", "type": "url_verification"})
    assert response.status_code == 200 and response.json() == {"challenge": "c-123"}


def test_shared_file_is_uploaded_to_ocs(single: tuple[Stack, Workspace], fake_slack: FakeSlack) -> None:
    stack, ws = single
    item = fake_slack.add_file("T100", "notes.txt", b"some notes", mimetype="text/plain")
    deliver(stack, dm(ws, "see file", ts="1700000010.000100", event_id="Ev10", subtype="file_share", files=[item]))
    wait_for(lambda: fake_slack.texts(channel="D100"), what="a reply")
    (uploaded,) = stack.sim.state.uploaded_files()
    assert (uploaded.name, uploaded.data) == ("notes.txt", b"some notes")
    assert fake_slack.calls("download")[0].token == ws.token


def test_long_reply_is_split_in_order(single: tuple[Stack, Workspace], fake_slack: FakeSlack) -> None:
    stack, ws = single
    paragraphs = [f"Part {i} " + "lorem ipsum " * 60 for i in range(30)]  # ~22 KB: over one message's 12,000
    deliver(stack, dm(ws, "\n\n".join(paragraphs), ts="1700000011.000100", event_id="Ev11"))
    expected = "Echo #1: " + "\n\n".join(p.strip() for p in paragraphs)
    wait_for(lambda: "\n\n".join(fake_slack.texts(channel="D100")) == expected, timeout=20, what="all parts, in order")
    texts = fake_slack.texts(channel="D100")
    blocks = [m.params["blocks"] for m in fake_slack.messages(channel="D100")]
    assert len(texts) >= 2 and all(len(b[0]["text"]) <= 12_000 for b in blocks)
    sent_at = [c.at for c in fake_slack.calls("chat.postMessage")]
    assert all(b - a >= 0.9 for a, b in itertools.pairwise(sent_at))  # about one per second


def test_429_is_honoured(single: tuple[Stack, Workspace], fake_slack: FakeSlack) -> None:
    stack, ws = single
    fake_slack.rate_limit_next("chat.postMessage", retry_after=1)
    deliver(stack, dm(ws, "patience", ts="1700000012.000100", event_id="Ev12"))
    wait_for(lambda: fake_slack.texts(channel="D100"), what="the reply after the 429")
    limited, delivered = fake_slack.calls("chat.postMessage")
    assert (limited.status, delivered.status) == (429, 200)
    assert delivered.at - limited.at >= 0.9
    assert fake_slack.texts(channel="D100") == ["Echo #1: patience"]


def test_oauth_install_for_two_workspaces_then_uninstall(make_stack: MakeStack, fake_slack: FakeSlack) -> None:
    channel = slack_channel(fake_slack, client_id=fake_slack.client_id, client_secret=Secret(fake_slack.client_secret))
    stack = make_stack(channels={"sl": channel})
    with httpx.Client(follow_redirects=True, timeout=10) as browser:
        for team in ("TA", "TB"):
            fake_slack.next_install_team = team
            page = browser.get(f"{stack.url}/slack/sl/install")
            assert page.status_code == 200 and "installed" in page.text, page.text
    workspaces = {ws.team_id: ws for ws in fake_slack.workspaces.values()}
    for n, team in enumerate(("TA", "TB")):
        deliver(stack, dm(workspaces[team], f"hi from {team}", ts=f"17000000{n}.1", event_id=f"Ev{team}", channel=f"D{team}"))
    wait_for(lambda: fake_slack.texts(team_id="TA") and fake_slack.texts(team_id="TB"), what="both answers")
    posts = {c.params["channel"]: c.token for c in fake_slack.calls("chat.postMessage")}
    assert posts == {"DTA": workspaces["TA"].token, "DTB": workspaces["TB"].token}

    uninstalled = event_envelope({"type": "app_uninstalled"}, team_id="TA", event_id="EvUninstall")
    assert deliver(stack, uninstalled).status_code == 200
    assert stack.redis.exists(SlackKeys.of(Keys()).installation("sl", "TA")) == 0
    assert stack.redis.exists(SlackKeys.of(Keys()).installation("sl", "TB")) == 1
    deliver(stack, dm(workspaces["TA"], "still there?", ts="1700000020.1", event_id="EvTA2", channel="DTA"))
    deliver(stack, dm(workspaces["TB"], "still there?", ts="1700000021.1", event_id="EvTB2", channel="DTB"))
    wait_for(lambda: len(fake_slack.texts(team_id="TB")) == 2, what="TB's second answer")
    assert fake_slack.texts(team_id="TA") == ["Echo #1: hi from TA"]
    assert "still there?" not in [t for s in stack.sim.state.list_sessions() if "DTA" in s.remote_id
                                  for t in stack.sim.state.user_messages(s.id)]


def test_ocs_progress_shows_as_the_threads_status_and_the_answer_clears_it(
    single: tuple[Stack, Workspace], fake_slack: FakeSlack
) -> None:
    stack, ws = single
    lines = ("Reading your question…", "Looking it up…")
    stack.sim.state.knobs.progress_lines = lines
    # A new bot is polled no sooner than the widget (at 1, 2, 3 ... s): lines 1.5 s apart are
    # each seen by one of those polls.
    stack.sim.state.knobs.progress_every_s = 1.5
    stack.sim.state.knobs.reply_latency_s = 600
    assert deliver(stack, mention(ws, "opening hours?", ts="1700000001.000100", event_id="Ev1")).status_code == 200
    wait_for(lambda: stack.sim.state.tasks, what="the message at OCS")
    (task,) = stack.sim.state.tasks.values()
    wait_for(lambda: [s for _, _, s in fake_slack.status_history][-1:] == [lines[-1]], timeout=30,
             what="the thread's status following OCS's lines")
    stack.sim.state.finish_task_now(task.id)
    assert wait_for(lambda: fake_slack.texts(channel="C100"), what="the answer") == ["Echo #1: opening hours?"]
    settled(stack.redis)
    statuses = [s for _, _, s in fake_slack.status_history]
    assert lines[0] in statuses and lines[1] in statuses
    assert not any(fake_slack.statuses.values())  # the answer cleared it
