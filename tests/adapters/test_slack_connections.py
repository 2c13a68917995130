"""What the Slack channel asks of Slack, and over what: the events edge never waits on the Web API
(the bot's identity is learnt at start-up and in the background, else read from the envelope), and
every channel's Web API calls in a process share one aiohttp session, so one TCP connection."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from adapters.slack.api import new_session
from gateway.core.config import Secret
from gateway.core.models import Outgoing
from tests.adapters._slack import MakeEnv, make_slack
from tests.conftest import Stack
from tests.fakes.slack_api import FakeSlack, event_envelope, fake_slack, signed_headers

__all__ = ["fake_slack", "make_slack"]

SECRET = "connections-signing-secret"
MakeStack = Callable[..., Stack]


def deliver(stack: Stack, envelope: dict[str, Any]) -> int:
    raw = json.dumps(envelope).encode()
    return stack.http.post(f"{stack.url}/slack/sl/events", content=raw, headers=signed_headers(SECRET, raw)).status_code


def stored_texts(stack: Stack) -> list[str]:
    """The texts of every inbound event waiting in a conversation inbox in Redis."""
    texts = []
    for key in stack.redis.scan_iter(match="ocsgw:inbox:*"):
        for item in stack.redis.lrange(key, 0, -1):
            texts.append(json.loads(item)["text"])
    return texts


def test_a_hanging_slack_api_does_not_hold_the_events_edge(make_stack: MakeStack, fake_slack: FakeSlack) -> None:
    ws = fake_slack.add_workspace("T100")
    fake_slack.hang("auth.test")  # Slack's Web API never answers from start-up on
    channel = {"type": "slack", "bot": "demo", "signing_secret": Secret(SECRET), "api_base_url": fake_slack.api_url,
               "bot_token": Secret(ws.token)}  # fmt: skip
    stack = make_stack(channels={"sl": channel}, start_worker=False)
    user = {"type": "message", "channel": "D1", "channel_type": "im", "user": "UHUMAN", "text": "hello", "ts": "1.1"}
    assert deliver(stack, event_envelope(user, team_id="T100", event_id="Ev1", bot_user_id=ws.user_id)) == 200
    assert stored_texts(stack) == ["hello"]
    # Without auth.test the envelope's authorization names the bot user, so its own post is dropped.
    own = {**user, "user": ws.user_id, "bot_id": ws.bot_id, "text": "Echo: hello", "ts": "1.2"}
    assert deliver(stack, event_envelope(own, team_id="T100", event_id="Ev2", bot_user_id=ws.user_id)) == 200
    assert stored_texts(stack) == ["hello"]
    assert [c.method for c in fake_slack.calls()] == []  # the hung auth.test never answered


async def test_identity_learnt_in_the_background_once_slack_answers(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    ws = fake_slack.add_workspace("T1", user_id="W1", bot_id="B1")
    fake_slack.fail_next("auth.test", "fatal_error")
    env = await make_slack(bot_token=Secret(ws.token))
    assert await env.adapter._workspaces.identity_for("T1") is None  # start-up did not wait for the retry
    identity = await wait_for_async(lambda: env.adapter._workspaces.identity_for("T1"))
    assert (identity.user_id, identity.bot_id) == ("W1", "B1")
    assert [c.error for c in fake_slack.calls("auth.test")] == ["fatal_error", None]


async def wait_for_async(probe: Callable[[], Any], *, timeout: float = 10.0) -> Any:
    """Poll the coroutine function ``probe`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def test_every_channel_of_a_process_shares_one_connection(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    session = new_session()
    try:
        one, two = fake_slack.add_workspace("T1"), fake_slack.add_workspace("T2")
        first = await make_slack(name="sl", bot_token=Secret(one.token), aiohttp_session=session)
        second = await make_slack(name="sl2", bot_token=Secret(two.token), aiohttp_session=session)
        await first.adapter.send({"team": "T1", "channel": "C1"}, Outgoing(text="one"))
        await second.adapter.send({"team": "T2", "channel": "C2"}, Outgoing(text="two"))
        await first.adapter.send({"team": "T1", "channel": "C3"}, Outgoing(text="three"))
        peers = {c.peer for c in fake_slack.calls()}
        assert len(peers) == 1 and fake_slack.texts() == ["one", "two", "three"]
        await first.adapter.aclose()
        assert not session.closed  # lent by the process: the adapter does not close it
    finally:
        await session.close()


async def test_a_lone_adapter_opens_its_own_session_and_closes_it(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    ws = fake_slack.add_workspace("T1")
    env = await make_slack(bot_token=Secret(ws.token))
    session = env.adapter._api.client().session
    assert isinstance(session, aiohttp.ClientSession) and not session.closed
    await env.adapter.aclose()
    assert session.closed
