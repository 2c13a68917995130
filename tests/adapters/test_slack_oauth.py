"""Bolt's OAuth flow behind our install routes, on our Redis stores: two workspaces install and each
is answered with its own token, bot and user tokens and incoming-webhook data are stored as Bolt
expects, and a bad, replayed or expired ``state`` is refused."""

from __future__ import annotations

import httpx
import redis.asyncio as aioredis
from slack_sdk.oauth.installation_store import Installation
from starlette.applications import Starlette

from adapters.slack.installation_store import RedisInstallationStore, RedisOAuthStateStore
from adapters.slack.keys import SlackKeys
from gateway.core.config import Secret
from gateway.core.keys import Keys
from gateway.core.models import Outgoing
from tests.adapters._slack import MakeEnv, SlackEnv, make_slack
from tests.fakes.slack_api import FakeSlack, event_envelope, fake_slack

__all__ = ["fake_slack", "make_slack"]

GATEWAY = "https://gw.example.com"


async def oauth_env(make_slack: MakeEnv, fake: FakeSlack, **channel: object) -> tuple[SlackEnv, httpx.AsyncClient]:
    env = await make_slack(client_id=fake.client_id, client_secret=Secret(fake.client_secret), **channel)
    browser = httpx.AsyncClient(transport=httpx.ASGITransport(app=Starlette(routes=env.adapter.routes())), base_url=GATEWAY)
    return env, browser


async def install(fake: FakeSlack, browser: httpx.AsyncClient, team: str) -> httpx.Response:
    """An admin clicks the install link, picks ``team`` on Slack's page and comes back."""
    start = await browser.get("/slack/sl/install")
    assert start.status_code == 302, start.text
    fake.next_install_team = team
    async with httpx.AsyncClient() as slack_site:
        consent = await slack_site.get(start.headers["location"])
    assert consent.status_code == 302, consent.text
    return await browser.get(consent.headers["location"])


def dm(team: str, bot_user: str, text: str, *, event_id: str) -> dict[str, object]:
    event = {"type": "message", "channel": f"D{team}", "channel_type": "im", "user": "UHUMAN", "text": text, "ts": "1.1"}
    return event_envelope(event, team_id=team, event_id=event_id, bot_user_id=bot_user)


async def test_two_workspaces_install_and_an_event_from_each_is_answered_with_its_token(
    make_slack: MakeEnv, fake_slack: FakeSlack
) -> None:
    env, browser = await oauth_env(make_slack, fake_slack)
    async with browser:
        for team in ("TA", "TB"):
            done = await install(fake_slack, browser, team)
            assert done.status_code == 200 and f"Team {team}" in done.text
            assert "ocsgw_slack_state=deleted" in done.headers["set-cookie"]
    tokens = {ws.team_id: ws for ws in fake_slack.workspaces.values()}
    for team in ("TA", "TB"):
        parsed = await env.adapter.parse(env.request(dm(team, tokens[team].user_id, f"hi {team}", event_id=f"Ev{team}")))
        (inbound,) = parsed.inbounds
        await env.adapter.send(inbound.route, Outgoing(text=f"answer {team}"))
    posts = {c.params["text"]: c.token for c in fake_slack.calls("chat.postMessage")}
    assert posts == {"answer TA": tokens["TA"].token, "answer TB": tokens["TB"].token}


async def test_installation_keeps_bot_user_and_webhook_data_as_bolt_saves_it(redis_url: str) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    store = RedisInstallationStore(redis, Keys(), "sl")
    installation = Installation(
        app_id="A1", team_id="T1", team_name="One", user_id="U1", user_token="xoxp-1", user_scopes="search:read",
        bot_token="xoxb-1", bot_id="B1", bot_user_id="UB1", bot_scopes="chat:write",
        incoming_webhook_url="https://hooks.example/1", incoming_webhook_channel_id="C1",
    )  # fmt: skip
    await store.async_save(installation)
    # A second admin authorises later: the latest installation is theirs, the first one stays per user.
    await store.async_save(Installation(team_id="T1", user_id="U2", user_token="xoxp-2", bot_token="xoxb-2", bot_id="B1", bot_user_id="UB1"))
    latest = await store.async_find_installation(enterprise_id=None, team_id="T1")
    first = await store.async_find_installation(enterprise_id=None, team_id="T1", user_id="U1")
    assert latest is not None and (latest.user_id, latest.user_token, latest.bot_token) == ("U2", "xoxp-2", "xoxb-2")
    assert first is not None and first.incoming_webhook_url == "https://hooks.example/1"
    assert (first.user_token, first.bot_token) == ("xoxp-1", "xoxb-2")  # the latest bot token wins
    bot = await store.async_find_bot(enterprise_id=None, team_id="T1")
    assert bot is not None and bot.bot_token == "xoxb-2"
    assert await store.async_find_installation(enterprise_id=None, team_id="T9") is None
    await store.async_delete_installation(enterprise_id=None, team_id="T1", user_id="U1")
    assert await store.async_find_installation(enterprise_id=None, team_id="T1", user_id="U1") is None
    await store.async_delete_all(enterprise_id=None, team_id="T1")
    assert await store.async_find_bot(enterprise_id=None, team_id="T1") is None
    await redis.aclose()


async def test_a_replayed_or_unknown_state_is_refused(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, browser = await oauth_env(make_slack, fake_slack)
    async with browser:
        start = await browser.get("/slack/sl/install")
        fake_slack.next_install_team = "TA"
        async with httpx.AsyncClient() as slack_site:
            back = (await slack_site.get(start.headers["location"])).headers["location"]
        forged = httpx.URL(back).copy_set_param("state", "made-up")
        browser.cookies.set("ocsgw_slack_state", "made-up", domain="gw.example.com")
        refused = await browser.get(str(forged).removeprefix(GATEWAY))
    assert refused.status_code == 401 and "expired" in refused.text
    assert fake_slack.calls("oauth.v2.access") == []  # refused before the code was spent
    assert await env.adapter._workspaces.store.find_bot_for("TA") is None


async def test_a_state_is_good_for_one_use_within_its_lifetime(redis_url: str) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    states = RedisOAuthStateStore(redis, Keys(), "sl", expiration_seconds=600)
    other_channel = RedisOAuthStateStore(redis, Keys(), "other")
    state = await states.async_issue()
    assert 0 < await redis.ttl(SlackKeys.of(Keys()).oauth_state(state)) <= 600
    assert not await other_channel.async_consume(state)  # another channel's link
    state = await states.async_issue()
    assert await states.async_consume(state) and not await states.async_consume(state)
    await redis.delete(SlackKeys.of(Keys()).oauth_state(expired := await states.async_issue()))  # its TTL ran out
    assert not await states.async_consume(expired)
    await redis.aclose()


async def test_install_on_a_plain_http_gateway_uses_its_host_and_a_non_secure_cookie(
    make_slack: MakeEnv, fake_slack: FakeSlack
) -> None:
    env = await make_slack(client_id=fake_slack.client_id, client_secret=Secret(fake_slack.client_secret), public_url=None)
    app = Starlette(routes=env.adapter.routes())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost:8000") as browser:
        start = await browser.get("/slack/sl/install")
        assert httpx.URL(start.headers["location"]).params["redirect_uri"] == "http://localhost:8000/slack/sl/oauth_redirect"
        cookie = start.headers["set-cookie"]
        assert "Secure" not in cookie and "Path=/slack/sl/" in cookie
        fake_slack.next_install_team = "TA"
        async with httpx.AsyncClient() as slack_site:
            back = (await slack_site.get(start.headers["location"])).headers["location"]
        done = await browser.get(back.removeprefix("http://localhost:8000"))
    assert done.status_code == 200 and "Team TA" in done.text


async def test_an_installation_saved_before_bolt_is_still_served_and_deleted(redis_url: str) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    store = RedisInstallationStore(redis, Keys(), "sl")
    legacy = {"team_id": "TOLD", "bot_token": "xoxb-old", "bot_user_id": "UOLD", "bot_id": "BOLD", "enterprise_id": "",
              "team_name": "Old", "app_id": "A1", "scope": "chat:write", "installed_at": "1700000000.0"}  # fmt: skip
    await redis.hset(SlackKeys.of(Keys()).installation("sl", "TOLD"), mapping=legacy)  # type: ignore[arg-type]
    bot = await store.find_bot_for("TOLD")
    assert bot is not None and (bot.bot_token, bot.bot_user_id, bot.bot_id) == ("xoxb-old", "UOLD", "BOLD")
    await store.async_delete_bot(enterprise_id=None, team_id="TOLD")
    assert await store.find_bot_for("TOLD") is None
    await redis.aclose()


async def test_the_console_lists_installed_workspaces_without_calling_slack(
    make_slack: MakeEnv, fake_slack: FakeSlack
) -> None:
    env, browser = await oauth_env(make_slack, fake_slack)
    assert (await env.adapter.status())["warnings"] == ["no workspace has installed the app yet (share /install)"]
    async with browser:
        for team in ("TA", "TB"):
            assert (await install(fake_slack, browser, team)).status_code == 200
    calls = len(fake_slack.calls())
    status = await env.adapter.status()
    assert sorted(status["workspaces"]) == ["TA", "TB"] and status["installed"] == 2
    assert status["warnings"] == [] and status["more"] is False
    assert len(fake_slack.calls()) == calls  # read from Redis: a hanging Slack cannot slow the console


async def test_a_reinstall_over_an_installation_saved_before_bolt_is_the_one_used(
    make_slack: MakeEnv, fake_slack: FakeSlack
) -> None:
    env, browser = await oauth_env(make_slack, fake_slack)
    key = SlackKeys.of(env.keys).installation("sl", "TA")
    legacy = {"team_id": "TA", "bot_token": "xoxb-old", "bot_user_id": "UOLD", "bot_id": "BOLD", "scope": "chat:write"}
    await env.redis.hset(key, mapping=legacy)  # type: ignore[arg-type]
    async with browser:
        assert (await install(fake_slack, browser, "TA")).status_code == 200
    (new,) = [ws for ws in fake_slack.workspaces.values() if ws.team_id == "TA"]
    await env.adapter.send({"team": "TA", "channel": "C1"}, Outgoing(text="after the reinstall"))
    assert fake_slack.calls("chat.postMessage")[-1].token == new.token
    assert not [name for name in ("bot_token", "bot_id", "scope") if await env.redis.hexists(key, name)]
    # Revoking the new bot deletes it, not the flat fields back into view.
    await env.adapter._workspaces.store.async_delete_bot(enterprise_id=None, team_id="TA")
    assert await env.adapter._workspaces.store.find_bot_for("TA") is None
