"""Slack's assistant threads (issue 16): ``assistant_thread_started`` offers the configured prompts
and stores nothing, each assistant thread is a conversation of its own, its first message names
it, the manifest declares the assistant view with its scope and events. DMs and mentions keep
working as before. Real slack_sdk against the fake Web API, real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import yaml

from adapters.slack.assistant import MAX_TITLE_CHARS, title_for
from adapters.slack.config import SlackChannelConfig
from adapters.slack.manifest import ASSISTANT_EVENTS, BOT_EVENTS, BOT_SCOPES, bot_scopes, manifest
from gateway.config_loading import GatewayConfig
from gateway.core.config import Secret
from gateway.core.errors import PayloadInvalid
from gateway.core.models import ConversationKey, InboundKind
from tests.adapters._slack import MakeEnv, SlackEnv, gateway_config, make_slack
from tests.fakes.slack_api import FakeSlack, Workspace, event_envelope, fake_slack

__all__ = ["fake_slack", "make_slack"]

T = TypeVar("T")
DM = "D0ASSIST"
THREAD_TS = "1729999327.187299"
PROMPTS = [
    {"title": "Opening hours", "message": "When is the clinic open?"},
    {"title": "Book", "message": "I would like to book an appointment."},
]
ASSISTANT_ON = {"enabled": True, "suggested_prompts": PROMPTS, "prompts_title": "Try asking"}


async def eventually(predicate: Callable[[], T], what: str, timeout: float = 15.0) -> T:
    """Wait for the adapter's own task to do its call: a positive signal within a generous bound."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
    return value


async def env_for(make_slack: MakeEnv, fake: FakeSlack, **channel: Any) -> tuple[SlackEnv, Workspace]:
    ws = fake.add_workspace("T1")
    return await make_slack(bot_token=Secret(ws.token), **channel), ws


def thread_event(kind: str, ws: Workspace, *, event_id: str, thread_ts: str = THREAD_TS) -> dict[str, Any]:
    """``assistant_thread_started`` / ``_context_changed`` as Slack documents them."""
    event = {
        "type": kind,
        "assistant_thread": {
            "user_id": "UHUMAN",
            "context": {"channel_id": "C0VIEWED", "team_id": ws.team_id, "enterprise_id": None},
            "channel_id": DM,
            "thread_ts": thread_ts,
        },
        "event_ts": "1715873754.429808",
    }
    return event_envelope(event, team_id=ws.team_id, event_id=event_id, bot_user_id=ws.user_id)


def user_message(ws: Workspace, text: str, *, ts: str, event_id: str, thread_ts: str | None = THREAD_TS) -> dict[str, Any]:
    """A user's message in the app's DM (``message.im``), in an assistant thread unless ``thread_ts`` is None."""
    event: dict[str, Any] = {"type": "message", "channel": DM, "channel_type": "im", "user": "UHUMAN", "text": text, "ts": ts}
    if thread_ts:
        event["thread_ts"] = thread_ts
    return event_envelope(event, team_id=ws.team_id, event_id=event_id, bot_user_id=ws.user_id)


# -- assistant_thread_started ----------------------------------------------------------------------


async def test_a_new_assistant_thread_gets_the_prompts_and_nothing_is_stored(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, ws = await env_for(make_slack, fake_slack, assistant=ASSISTANT_ON)
    parsed = await env.adapter.parse(env.request(thread_event("assistant_thread_started", ws, event_id="Ev1")))
    assert parsed.inbounds == () and parsed.response is None
    offered = await eventually(lambda: fake_slack.suggested_prompts.get((DM, THREAD_TS)), "the suggested prompts")
    assert offered == {"prompts": PROMPTS, "title": "Try asking"}
    (call,) = fake_slack.calls("assistant.threads.setSuggestedPrompts")
    assert call.token == ws.token


async def test_without_prompts_or_without_the_assistant_a_new_thread_calls_nothing(
    make_slack: MakeEnv, fake_slack: FakeSlack
) -> None:
    env, ws = await env_for(make_slack, fake_slack, assistant={"enabled": True})
    off, _ = await env_for(make_slack, fake_slack, name="off", assistant={"enabled": False, "suggested_prompts": PROMPTS})
    for adapter_env in (env, off):
        parsed = await adapter_env.adapter.parse(adapter_env.request(thread_event("assistant_thread_started", ws, event_id="Ev1")))
        assert parsed.inbounds == ()
        await adapter_env.adapter.aclose()  # lets any call it started finish
    assert fake_slack.calls("assistant.threads.setSuggestedPrompts") == []


async def test_a_context_change_is_acknowledged_and_ignored(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, ws = await env_for(make_slack, fake_slack, assistant=ASSISTANT_ON)
    parsed = await env.adapter.parse(env.request(thread_event("assistant_thread_context_changed", ws, event_id="Ev2")))
    assert parsed.inbounds == ()
    await env.adapter.aclose()
    assert fake_slack.calls() == [c for c in fake_slack.calls() if c.method == "auth.test"]


async def test_a_thread_event_without_its_thread_is_refused(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, ws = await env_for(make_slack, fake_slack, assistant=ASSISTANT_ON)
    envelope = thread_event("assistant_thread_started", ws, event_id="Ev3")
    envelope["event"]["assistant_thread"]["thread_ts"] = 17.5
    with pytest.raises(PayloadInvalid):
        await env.adapter.parse(env.request(envelope))


async def test_prompts_slack_refuses_cost_only_the_prompts(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, ws = await env_for(make_slack, fake_slack, assistant=ASSISTANT_ON)
    fake_slack.fail_next("assistant.threads.setSuggestedPrompts", "missing_scope")
    parsed = await env.adapter.parse(env.request(thread_event("assistant_thread_started", ws, event_id="Ev4")))
    assert parsed.inbounds == ()
    await eventually(lambda: fake_slack.calls("assistant.threads.setSuggestedPrompts"), "the refused call")
    await env.adapter.aclose()
    assert fake_slack.suggested_prompts == {}


# -- messages in assistant threads -----------------------------------------------------------------


async def test_each_assistant_thread_is_a_conversation_of_its_own(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, ws = await env_for(make_slack, fake_slack, assistant=ASSISTANT_ON)
    (first,) = (await env.adapter.parse(env.request(user_message(ws, "hours?", ts="1.1", event_id="Ev5")))).inbounds
    other = user_message(ws, "book", ts="2.1", event_id="Ev6", thread_ts="1729999999.000001")
    (second,) = (await env.adapter.parse(env.request(other))).inbounds
    (top,) = (await env.adapter.parse(env.request(user_message(ws, "hi", ts="3.1", event_id="Ev7", thread_ts=None)))).inbounds
    assert first.key == ConversationKey("sl", f"T:T1:D:{DM}:{THREAD_TS}")
    assert second.key == ConversationKey("sl", f"T:T1:D:{DM}:1729999999.000001")
    assert top.key == ConversationKey("sl", f"T:T1:D:{DM}")  # the Messages tab: one conversation per DM, as before
    assert first.route["thread_ts"] == THREAD_TS and first.route["reply_to"] == "1.1"  # answered in the thread
    assert "thread_ts" not in top.route


async def test_the_first_message_names_the_thread_once(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, ws = await env_for(make_slack, fake_slack, assistant=ASSISTANT_ON)
    first = user_message(ws, "When is the clinic open on Saturday?", ts="1.1", event_id="Ev8")
    await env.adapter.parse(env.request(first))
    title = await eventually(lambda: fake_slack.titles.get((DM, THREAD_TS)), "the thread's title")
    assert title == "When is the clinic open on Saturday?"
    await env.adapter.parse(env.request(first))  # Slack redelivers it
    await env.adapter.parse(env.request(user_message(ws, "And on Sunday?", ts="1.2", event_id="Ev9")))
    await env.adapter.aclose()
    assert len(fake_slack.calls("assistant.threads.setTitle")) == 1
    assert fake_slack.titles[(DM, THREAD_TS)] == "When is the clinic open on Saturday?"


async def test_a_reset_or_a_file_alone_does_not_name_the_thread(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, ws = await env_for(make_slack, fake_slack, assistant=ASSISTANT_ON)
    (reset,) = (await env.adapter.parse(env.request(user_message(ws, "reset", ts="1.1", event_id="Ev10")))).inbounds
    assert reset.kind is InboundKind.RESET
    await env.adapter.parse(env.request(user_message(ws, "Opening hours please", ts="1.2", event_id="Ev11")))
    assert await eventually(lambda: fake_slack.titles.get((DM, THREAD_TS)), "the title") == "Opening hours please"


async def test_titles_from_messages_can_be_turned_off(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, ws = await env_for(make_slack, fake_slack, assistant={**ASSISTANT_ON, "title_from_first_message": False})
    (inbound,) = (await env.adapter.parse(env.request(user_message(ws, "hours?", ts="1.1", event_id="Ev12")))).inbounds
    assert inbound.key.conversation.endswith(THREAD_TS)  # still its own conversation
    await env.adapter.aclose()
    assert fake_slack.calls("assistant.threads.setTitle") == []


async def test_without_the_assistant_dm_threads_stay_one_conversation_and_get_no_title(
    make_slack: MakeEnv, fake_slack: FakeSlack
) -> None:
    env, ws = await env_for(make_slack, fake_slack)
    (inbound,) = (await env.adapter.parse(env.request(user_message(ws, "hours?", ts="1.1", event_id="Ev13")))).inbounds
    assert inbound.key == ConversationKey("sl", f"T:T1:D:{DM}")
    await env.adapter.aclose()
    assert fake_slack.calls("assistant.threads.setTitle") == []


async def test_a_hanging_slack_never_holds_the_event_nor_the_shutdown(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, ws = await env_for(make_slack, fake_slack, assistant=ASSISTANT_ON)
    fake_slack.hang("assistant.threads.setTitle")
    fake_slack.hang("assistant.threads.setSuggestedPrompts")
    await asyncio.wait_for(env.adapter.parse(env.request(thread_event("assistant_thread_started", ws, event_id="Ev14"))), 5)
    parsed = await asyncio.wait_for(env.adapter.parse(env.request(user_message(ws, "hours?", ts="1.1", event_id="Ev15"))), 5)
    assert len(parsed.inbounds) == 1
    await asyncio.wait_for(env.adapter.aclose(), 10)  # the calls in flight are given up


def test_titles_are_the_first_line_cut_at_a_word() -> None:
    assert title_for("\n  Opening   hours?\nand more") == "Opening hours?"
    long = title_for("word " * 40)
    assert len(long) <= MAX_TITLE_CHARS and long.endswith("word…")
    assert title_for("x" * 200) == "x" * (MAX_TITLE_CHARS - 1) + "…"
    assert title_for("  ") == ""


# -- the manifest and the install scopes -----------------------------------------------------------


def slack_config(fake: FakeSlack, **channel: Any) -> tuple[GatewayConfig, SlackChannelConfig]:
    config = gateway_config(fake, "support", bot_token=Secret("xoxb-1"), **channel)
    slack = config.channels["support"]
    assert isinstance(slack, SlackChannelConfig)
    return config, slack


def test_the_manifest_declares_the_assistant_view_its_scope_and_events(fake_slack: FakeSlack) -> None:
    config, slack = slack_config(fake_slack, assistant={**ASSISTANT_ON, "description": "The clinic's helper"})
    document = yaml.safe_load(manifest(config, "support"))
    assert document["features"]["assistant_view"] == {"assistant_description": "The clinic's helper", "suggested_prompts": PROMPTS}
    assert document["oauth_config"]["scopes"]["bot"] == [*BOT_SCOPES, "assistant:write"]
    assert document["settings"]["event_subscriptions"]["bot_events"] == [*BOT_EVENTS, *ASSISTANT_EVENTS]
    assert set(ASSISTANT_EVENTS) == {"assistant_thread_started", "assistant_thread_context_changed"}
    assert "message.im" in BOT_EVENTS  # an assistant thread's messages
    assert bot_scopes(slack) == (*BOT_SCOPES, "assistant:write")  # what the OAuth install asks for


def test_without_the_assistant_the_manifest_is_as_before(fake_slack: FakeSlack) -> None:
    config, slack = slack_config(fake_slack)
    document = yaml.safe_load(manifest(config, "support"))
    assert "assistant_view" not in document["features"]
    assert document["oauth_config"]["scopes"]["bot"] == list(BOT_SCOPES)
    assert document["settings"]["event_subscriptions"]["bot_events"] == list(BOT_EVENTS)
    assert bot_scopes(slack) == BOT_SCOPES


def test_more_than_four_prompts_are_refused_at_load() -> None:
    with pytest.raises(ValueError, match="suggested_prompts"):
        SlackChannelConfig.model_validate(
            {"type": "slack", "bot": "demo", "signing_secret": Secret("s"), "bot_token": Secret("xoxb-1"),
             "assistant": {"enabled": True, "suggested_prompts": PROMPTS * 3}}
        )
