"""Token rotation end to end against the fake's ``oauth.v2.access`` refresh grants: a token due for
refresh is refreshed once while two workers (two adapters on one Redis, as two processes) send
with it, the saved pair is the new one, Slack's refusal of a refresh token ends the workspace, a
refresh that outlives or loses its lock still saves Slack's pair, an uninstall during a refresh
stays one, a refusal after an unanswered refresh is a retry, and the manifest turns rotation on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import httpx
import pytest
import yaml
from starlette.applications import Starlette

from adapters.slack import tokens
from adapters.slack.api import SlackApi, slack_errors
from adapters.slack.keys import SlackKeys
from adapters.slack.manifest import manifest
from gateway.config_loading import GatewayConfig
from gateway.core.config import Secret
from gateway.core.errors import ConfigError, RecipientGone, RetryLater
from gateway.core.models import Outgoing
from tests.adapters._slack import MakeEnv, SlackEnv, gateway_config, make_slack
from tests.adapters.test_slack_oauth import GATEWAY, install
from tests.fakes.slack_api import FakeSlack, fake_slack

__all__ = ["fake_slack", "make_slack"]


async def rotating_install(make_slack: MakeEnv, fake: FakeSlack, team: str = "TA") -> SlackEnv:
    """An OAuth channel with rotation on, installed in ``team`` with a token 10 minutes from its
    expiry: inside the 120-minute refresh window, so the first send refreshes it."""
    env = await make_slack(client_id=fake.client_id, client_secret=Secret(fake.client_secret), token_rotation=True)
    fake.token_expires_in = 600
    browser = httpx.AsyncClient(transport=httpx.ASGITransport(app=Starlette(routes=env.adapter.routes())), base_url=GATEWAY)
    async with browser:
        assert (await install(fake, browser, team)).status_code == 200
    return env


async def test_a_due_token_is_refreshed_once_while_two_workers_send_with_it(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    first = await rotating_install(make_slack, fake_slack)
    second = await make_slack(client_id=fake_slack.client_id, client_secret=Secret(fake_slack.client_secret), token_rotation=True)
    installed = await first.adapter._workspaces.store.find_bot_for("TA")
    assert installed is not None and installed.bot_refresh_token and installed.bot_token.startswith("xoxe.xoxb-")
    fake_slack.slow("oauth.v2.access", 0.3)  # both workers reach the refresh while it runs
    route = {"team": "TA", "thread_ts": "1.1", "reply_to": "1.1"}
    await asyncio.gather(
        first.adapter.send({**route, "channel": "C1"}, Outgoing(text="from one")),
        second.adapter.send({**route, "channel": "C2"}, Outgoing(text="from two")),
    )
    (grant,) = fake_slack.refresh_grants()
    assert grant.params["refresh_token"] == installed.bot_refresh_token
    saved = await first.adapter._workspaces.store.find_bot_for("TA")
    assert saved is not None and saved.bot_token != installed.bot_token
    assert saved.bot_refresh_token != installed.bot_refresh_token  # Slack rotated the refresh token too
    assert saved.bot_token_expires_at is not None and saved.bot_token_expires_at > time.time() + 3 * 3600
    latest = await first.adapter._workspaces.store.async_find_installation(enterprise_id=None, team_id="TA")
    assert latest is not None and latest.bot_token == saved.bot_token
    posts = {c.params["text"]: c.token for c in fake_slack.calls("chat.postMessage")}
    assert posts == {"from one": saved.bot_token, "from two": saved.bot_token}
    await second.adapter.send({**route, "channel": "C3"}, Outgoing(text="later"))
    assert len(fake_slack.refresh_grants()) == 1  # fresh now: no second refresh


async def test_an_expired_token_is_a_retry_and_the_next_send_refreshes_it(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await rotating_install(make_slack, fake_slack)
    installed = await env.adapter._workspaces.store.find_bot_for("TA")
    assert installed is not None
    fake_slack.expire(installed.bot_token)
    api = SlackApi(fake_slack.api_url)
    with pytest.raises(RetryLater, match="token_expired"), slack_errors("chat.postMessage"):
        await api.client().chat_postMessage(token=installed.bot_token, channel="C1", text="late")
    await env.adapter.send({"team": "TA", "channel": "C1"}, Outgoing(text="on time"))
    (post,) = fake_slack.messages(channel="C1")
    assert post.text == "on time" and fake_slack.calls("chat.postMessage")[-1].token != installed.bot_token


async def test_a_refused_refresh_token_makes_the_workspace_gone(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await rotating_install(make_slack, fake_slack)
    fake_slack.fail_next("oauth.v2.access", "invalid_refresh_token")
    with pytest.raises(RecipientGone, match="invalid_refresh_token"):
        await env.adapter.send({"team": "TA", "channel": "C1"}, Outgoing(text="hello"))
    assert await env.redis.exists(SlackKeys.of(env.keys).rotation_lock("sl", "TA")) == 0  # the lock was released


async def rotating_pair(make_slack: MakeEnv, fake: FakeSlack, **services: Any) -> tuple[SlackEnv, SlackEnv]:
    """Two workers (two adapters on one Redis, as two processes) of a channel installed in TA
    with a rotating token due for refresh."""
    first = await rotating_install(make_slack, fake)
    second = await make_slack(
        client_id=fake.client_id, client_secret=Secret(fake.client_secret), token_rotation=True, **services
    )
    return first, second


async def until(condition: Callable[[], Awaitable[bool]], *, deadline_s: float = 10.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not await condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_a_refresh_outliving_its_lock_ttl_presents_each_refresh_token_once(
    make_slack: MakeEnv, fake_slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = await rotating_pair(make_slack, fake_slack)
    monkeypatch.setattr(tokens, "LOCK_TTL_S", 0.2)
    fake_slack.slow("oauth.v2.access", 0.7)  # the refresh outlives the lock's TTL three times over
    lock = SlackKeys.of(first.keys).rotation_lock("sl", "TA")
    one = asyncio.create_task(first.adapter.send({"team": "TA", "channel": "C1"}, Outgoing(text="one")))
    await until(lambda: _exists(first, lock))
    await second.adapter.send({"team": "TA", "channel": "C2"}, Outgoing(text="two"))
    await one
    grants = [g.params["refresh_token"] for g in fake_slack.refresh_grants()]
    assert len(grants) == len(set(grants)) == 1
    saved = await first.adapter._workspaces.store.find_bot_for("TA")
    assert saved is not None and saved.bot_refresh_token not in grants
    posts = {c.params["text"]: c.token for c in fake_slack.calls("chat.postMessage")}
    assert posts == {"one": saved.bot_token, "two": saved.bot_token}


async def test_a_refresh_whose_lock_was_lost_still_saves_the_pair_and_the_workspace_keeps_working(
    make_slack: MakeEnv, fake_slack: FakeSlack
) -> None:
    first, second = await rotating_pair(make_slack, fake_slack)
    fake_slack.slow("oauth.v2.access", 0.6)
    lock = SlackKeys.of(first.keys).rotation_lock("sl", "TA")
    one = asyncio.create_task(first.adapter.send({"team": "TA", "channel": "C1"}, Outgoing(text="one")))
    await until(lambda: _exists(first, lock))
    await first.redis.delete(lock)  # lost mid-refresh (a failover, a stalled loop): the second worker refreshes too
    route = {"team": "TA", "channel": "C2"}
    try:
        await second.adapter.send(route, Outgoing(text="two"))
    except RetryLater:  # refused while the first one's answer was still being saved: a retry, never gone
        await second.adapter.send(route, Outgoing(text="two"))
    await one
    saved = await first.adapter._workspaces.store.find_bot_for("TA")
    assert saved is not None
    first_grant = fake_slack.refresh_grants()[0]
    assert saved.bot_refresh_token != first_grant.params["refresh_token"]
    assert sorted(fake_slack.texts()) == ["one", "two"]
    assert {c.token for c in fake_slack.calls("chat.postMessage")} == {saved.bot_token}
    # The stored refresh token is the unspent one: Slack refreshes with it.
    fake_slack.slow("oauth.v2.access", 0.0)
    refresh = SlackApi(fake_slack.api_url).client().oauth_v2_access(
        client_id=fake_slack.client_id, client_secret=fake_slack.client_secret,
        grant_type="refresh_token", refresh_token=saved.bot_refresh_token,
    )  # fmt: skip
    assert (await refresh)["ok"] is True


async def test_an_uninstall_during_a_refresh_stays_uninstalled(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await rotating_install(make_slack, fake_slack)
    key = SlackKeys.of(env.keys).installation("sl", "TA")
    fake_slack.slow("oauth.v2.access", 0.5)
    send = asyncio.create_task(env.adapter.send({"team": "TA", "channel": "C1"}, Outgoing(text="hello")))
    await until(lambda: _attempted(env, key))  # the refresh is on its way to Slack
    await env.adapter._installer.forget("TA", "", False, {"type": "app_uninstalled"})
    with pytest.raises(RecipientGone, match="not installed"):
        await send
    assert len(fake_slack.refresh_grants()) == 1 and fake_slack.refresh_grants()[0].error is None
    assert await env.redis.exists(key) == 0
    assert await env.adapter._workspaces.store.find_bot_for("TA") is None


async def test_a_refusal_after_an_unanswered_refresh_is_a_retry_not_gone(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    impatient = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3))
    try:
        _, env = await rotating_pair(make_slack, fake_slack, aiohttp_session=impatient)
        fake_slack.slow("oauth.v2.access", 0.8)  # Slack spends the refresh token after we gave up
        route = {"team": "TA", "channel": "C1"}
        with pytest.raises(RetryLater, match=r"oauth\.v2\.access"):
            await env.adapter.send(route, Outgoing(text="hello"))
        await until(lambda: _granted(fake_slack))
        fake_slack.slow("oauth.v2.access", 0.0)
        with pytest.raises(RetryLater, match="invalid_refresh_token"):
            await env.adapter.send(route, Outgoing(text="hello"))
        assert [g.error for g in fake_slack.refresh_grants()] == [None, "invalid_refresh_token"]  # each sent once
        assert await env.adapter._workspaces.store.find_bot_for("TA") is not None
    finally:
        await impatient.close()


async def _exists(env: SlackEnv, key: str) -> bool:
    return bool(await env.redis.exists(key))


async def _attempted(env: SlackEnv, key: str) -> bool:
    names = [name.decode() if isinstance(name, bytes) else name for name in await env.redis.hkeys(key)]
    return any(name.startswith("rotation:attempts:") for name in names)


async def _granted(fake: FakeSlack) -> bool:
    return bool(fake.refresh_grants())


def test_manifest_turns_token_rotation_on_when_configured(fake_slack: FakeSlack) -> None:
    config = gateway_config(fake_slack, "sl", client_id="cid", client_secret=Secret("s"), token_rotation=True)
    assert yaml.safe_load(manifest(config, "sl"))["settings"]["token_rotation_enabled"] is True
    plain = gateway_config(fake_slack, "sl", client_id="cid", client_secret=Secret("s"))
    assert yaml.safe_load(manifest(plain, "sl"))["settings"]["token_rotation_enabled"] is False


def test_token_rotation_without_oauth_credentials_is_a_config_error(fake_slack: FakeSlack) -> None:
    with pytest.raises(ConfigError, match="token_rotation"):
        GatewayConfig.from_mapping(
            {
                "bots": {"demo": {"chatbot_id": "6f1c2a9e-3b7d-4c1e-9a52-0d4e8b7f1a23", "auth": "keyless"}},
                "channels": {
                    "sl": {"type": "slack", "bot": "demo", "signing_secret": Secret("s"), "bot_token": Secret("xoxb-1"),
                           "token_rotation": True},
                },
            }
        )  # fmt: skip
