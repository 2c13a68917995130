"""Multi-workspace OAuth install through the real routes (our app, then the fake Slack's authorize
page, then our redirect; Bolt's AsyncOAuthFlow behind them), uninstall clean-up, and the app
manifest."""

from __future__ import annotations

import html
import logging

import httpx
import pytest
import yaml
from starlette.applications import Starlette

from adapters.slack.keys import SlackKeys
from adapters.slack.manifest import BOT_EVENTS, BOT_SCOPES, manifest
from gateway.config_loading import GatewayConfig
from gateway.core.config import Secret
from gateway.core.errors import ConfigError, RecipientGone
from gateway.core.models import Outgoing
from tests.adapters._slack import MakeEnv, SlackEnv, gateway_config, make_slack
from tests.fakes.slack_api import FakeSlack, fake_slack

__all__ = ["fake_slack", "make_slack"]

GATEWAY = "https://gw.example.com"


async def oauth_env(make_slack: MakeEnv, fake: FakeSlack) -> tuple[SlackEnv, httpx.AsyncClient]:
    env = await make_slack(client_id=fake.client_id, client_secret=Secret(fake.client_secret))
    app = Starlette(routes=env.adapter.routes())
    browser = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=GATEWAY)
    return env, browser


async def install(fake: FakeSlack, browser: httpx.AsyncClient, team: str) -> httpx.Response:
    """An admin clicks the install link, picks ``team`` on Slack's page and comes back."""
    start = await browser.get("/slack/sl/install")
    assert start.status_code == 302
    fake.next_install_team = team
    async with httpx.AsyncClient() as slack_site:
        consent = await slack_site.get(start.headers["location"])
    assert consent.status_code == 302, consent.text
    back = consent.headers["location"]
    assert back.startswith(f"{GATEWAY}/slack/sl/oauth_redirect?")
    return await browser.get(back)


async def test_install_link_redirects_to_slack_with_state_and_scopes(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, browser = await oauth_env(make_slack, fake_slack)
    async with browser:
        response = await browser.get("/slack/sl/install")
    location = httpx.URL(response.headers["location"])
    assert str(location).startswith(f"{fake_slack.url}/oauth/v2/authorize?")
    assert location.params["client_id"] == fake_slack.client_id
    assert location.params["scope"].split(",") == list(BOT_SCOPES)
    assert location.params["redirect_uri"] == f"{GATEWAY}/slack/sl/oauth_redirect"
    state = location.params["state"]
    assert await env.redis.get(SlackKeys.of(env.keys).oauth_state(state)) == b"sl"
    assert 0 < await env.redis.ttl(SlackKeys.of(env.keys).oauth_state(state)) <= 600
    assert f"ocsgw_slack_state={state}" in response.headers["set-cookie"]


async def test_two_workspaces_install_and_each_gets_its_own_token(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, browser = await oauth_env(make_slack, fake_slack)
    async with browser:
        for team in ("TA", "TB"):
            done = await install(fake_slack, browser, team)
            assert done.status_code == 200 and f"Team {team}" in done.text
    tokens = {ws.team_id: ws for ws in fake_slack.workspaces.values()}
    for team in ("TA", "TB"):
        installation = await env.adapter._workspaces.store.async_find_bot(enterprise_id=None, team_id=team)
        assert installation is not None
        # bot_id is not in oauth.v2.access: it came from auth.test with the new token (docs/PLATFORMS.md §2.7)
        assert (installation.bot_token, installation.bot_id, installation.bot_user_id) == (
            tokens[team].token, tokens[team].bot_id, tokens[team].user_id,
        )  # fmt: skip
    assert [c.token for c in fake_slack.calls("auth.test")] == [tokens["TA"].token, tokens["TB"].token]
    route = {"channel": "C1", "thread_ts": "1.1", "reply_to": "1.1"}
    await env.adapter.send({**route, "team": "TA"}, Outgoing(text="hello A"))
    await env.adapter.send({**route, "team": "TB"}, Outgoing(text="hello B"))
    posted = {c.params["text"]: c.token for c in fake_slack.calls("chat.postMessage")}
    assert posted == {"hello A": tokens["TA"].token, "hello B": tokens["TB"].token}


async def test_an_install_link_works_once(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    _env, browser = await oauth_env(make_slack, fake_slack)
    async with browser:
        start = await browser.get("/slack/sl/install")
        fake_slack.next_install_team = "TA"
        async with httpx.AsyncClient() as slack_site:
            back = (await slack_site.get(start.headers["location"])).headers["location"]
        assert (await browser.get(back)).status_code == 200
        browser.cookies.set("ocsgw_slack_state", httpx.URL(back).params["state"], domain="gw.example.com")
        again = await browser.get(back)
    assert again.status_code == 401 and "expired" in again.text  # Bolt's invalid_state


async def test_install_finished_in_another_browser_is_refused(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, browser = await oauth_env(make_slack, fake_slack)
    async with browser:
        start = await browser.get("/slack/sl/install")
        fake_slack.next_install_team = "TA"
        async with httpx.AsyncClient() as slack_site:
            back = (await slack_site.get(start.headers["location"])).headers["location"]
        browser.cookies.clear()
        response = await browser.get(back)
    assert response.status_code == 400 and "browser" in response.text
    assert await env.adapter._workspaces.store.find_bot_for("TA") is None


async def test_cancelled_or_refused_install_stores_nothing(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    _env, browser = await oauth_env(make_slack, fake_slack)
    async with browser:
        start = await browser.get("/slack/sl/install")
        state = httpx.URL(start.headers["location"]).params["state"]
        cancelled = await browser.get("/slack/sl/oauth_redirect", params={"error": "access_denied", "state": state})
        assert cancelled.status_code == 200 and "cancelled" in cancelled.text
        start = await browser.get("/slack/sl/install")
        state = httpx.URL(start.headers["location"]).params["state"]
        refused = await browser.get("/slack/sl/oauth_redirect", params={"code": "made-up", "state": state})
    assert refused.status_code == 401 and "invalid_code" in refused.text  # Bolt's status
    assert fake_slack.calls("oauth.v2.access")[0].error == "invalid_code"


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every record, but the test browser's own request lines (httpx logs the URL it was given)."""
    return "\n".join(
        f"{record.getMessage()} {record.args!r}" for record in caplog.records
        if not (record.name == "httpx" and GATEWAY in record.getMessage())
    )  # fmt: skip


@pytest.mark.parametrize(
    "error",
    [
        "<script>alert('forged')</script>",
        "access_denied\nERROR slack channel sl: forged line",
        "x\r\nforged: header",
        "invalid_code forged",  # Bolt's own reason, followed by text of the sender's
        "forged" * 500,
    ],
    ids=["script", "newline", "crlf", "bolt-reason", "long"],
)
async def test_oauth_error_parameter_is_logged_and_shown_as_a_fixed_code_only(
    make_slack: MakeEnv, fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture, error: str
) -> None:
    caplog.set_level(logging.DEBUG)
    _env, browser = await oauth_env(make_slack, fake_slack)
    async with browser:
        start = await browser.get("/slack/sl/install")
        state = httpx.URL(start.headers["location"]).params["state"]
        response = await browser.get("/slack/sl/oauth_redirect", params={"error": error, "state": state})
    assert response.status_code == 200 and "Installation failed" in response.text
    assert "forged" not in response.text and "forged" not in html.unescape(response.text)
    assert "forged" not in logged(caplog)
    assert "install failed: other" in logged(caplog)


async def test_oauth_code_that_is_not_slacks_shape_is_refused_unlogged_and_not_exchanged(
    make_slack: MakeEnv, fake_slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _env, browser = await oauth_env(make_slack, fake_slack)
    async with browser:
        start = await browser.get("/slack/sl/install")
        state = httpx.URL(start.headers["location"]).params["state"]
        code = "made-up\nERROR slack channel sl: forged line <script>"
        response = await browser.get("/slack/sl/oauth_redirect", params={"code": code, "state": state})
    assert response.status_code == 401 and "invalid_code" in response.text
    assert "forged" not in response.text
    assert "forged" not in logged(caplog) and "install failed: invalid_code" in logged(caplog)
    assert fake_slack.calls("oauth.v2.access") == []


async def test_single_workspace_channel_has_no_install_routes(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await make_slack(bot_token=Secret("xoxb-one"))
    assert env.adapter.routes() == []
    assert env.adapter.describe()["mode"] == "single-workspace"


# -- leaving ------------------------------------------------------------------------------------


async def test_uninstall_deletes_the_workspace_and_stops_sends(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env, browser = await oauth_env(make_slack, fake_slack)
    async with browser:
        for team in ("TA", "TB"):
            await install(fake_slack, browser, team)
    body = {"type": "event_callback", "team_id": "TA", "event_id": "EvU1", "event": {"type": "app_uninstalled"}}
    await env.adapter.verify(env.request(body))
    assert (await env.adapter.parse(env.request(body))).inbounds == ()
    assert await env.redis.exists(SlackKeys.of(env.keys).installation("sl", "TA")) == 0
    assert await env.adapter._workspaces.store.find_bot_for("TB") is not None
    with pytest.raises(RecipientGone):
        await env.adapter.send({"team": "TA", "channel": "C1"}, Outgoing(text="anyone?"))
    await env.adapter.parse(env.request(body))  # Slack's retry of the same event is harmless


async def test_revoked_user_token_deletes_that_users_installation_and_a_revoked_bot_the_bot(
    make_slack: MakeEnv, fake_slack: FakeSlack
) -> None:
    env = await make_slack(
        client_id=fake_slack.client_id, client_secret=Secret(fake_slack.client_secret), user_scopes=["search:read"]
    )
    browser = httpx.AsyncClient(transport=httpx.ASGITransport(app=Starlette(routes=env.adapter.routes())), base_url=GATEWAY)
    async with browser:
        await install(fake_slack, browser, "TA")
    store = env.adapter._workspaces.store
    installed = await store.async_find_installation(enterprise_id=None, team_id="TA", user_id="UINSTALLER")
    assert installed is not None and (installed.user_token or "").startswith("xoxp-")

    def revoked(tokens: dict[str, list[str]]) -> dict[str, object]:
        event = {"type": "tokens_revoked", "tokens": tokens}
        return {"type": "event_callback", "team_id": "TA", "event_id": "EvR", "event": event}

    await env.adapter.parse(env.request(revoked({"oauth": ["UINSTALLER"]})))
    assert await store.async_find_installation(enterprise_id=None, team_id="TA", user_id="UINSTALLER") is None
    latest = await store.async_find_installation(enterprise_id=None, team_id="TA")
    assert latest is not None and latest.user_token is None and latest.bot_token  # the bot still answers
    assert await store.find_bot_for("TA") is not None
    await env.adapter.parse(env.request(revoked({"bot": ["UTABOT"]})))
    assert await store.find_bot_for("TA") is None
    with pytest.raises(RecipientGone):
        await env.adapter.send({"team": "TA", "channel": "C1"}, Outgoing(text="anyone?"))


# -- manifest -------------------------------------------------------------------------------------


def test_manifest_names_the_request_url_scopes_events_and_redirect(fake_slack: FakeSlack) -> None:
    config = gateway_config(fake_slack, "support", client_id="cid", client_secret=Secret("s"), slash_command="/reset")
    text = manifest(config, "support")
    data = yaml.safe_load(text)
    events = data["settings"]["event_subscriptions"]
    assert events["request_url"] == f"{GATEWAY}/slack/support/events"
    assert events["bot_events"] == list(BOT_EVENTS)
    assert data["oauth_config"]["scopes"]["bot"] == [*BOT_SCOPES, "commands"]
    assert data["oauth_config"]["redirect_urls"] == [f"{GATEWAY}/slack/support/oauth_redirect"]
    assert data["features"]["slash_commands"][0]["command"] == "/reset"
    assert data["features"]["slash_commands"][0]["url"] == f"{GATEWAY}/slack/support/events"
    assert data["features"]["app_home"]["messages_tab_enabled"] is True


def test_manifest_without_public_url_says_what_to_replace(fake_slack: FakeSlack) -> None:
    config = gateway_config(fake_slack, "support", bot_token=Secret("xoxb-1"), public_url=None)
    text = manifest(config, "support")
    assert text.startswith("#") and "public_url is not set" in text
    data = yaml.safe_load(text)
    assert "redirect_urls" not in data["oauth_config"] and "slash_commands" not in data["features"]
    assert "commands" not in data["oauth_config"]["scopes"]["bot"]


def test_manifest_of_a_non_slack_channel_is_a_config_error() -> None:
    config = GatewayConfig.from_mapping({"bots": {}, "channels": {}})
    with pytest.raises(ConfigError, match="not a slack channel"):
        manifest(config, "nope")
