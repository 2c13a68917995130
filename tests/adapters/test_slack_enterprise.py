"""Enterprise Grid: an org-wide install (``is_enterprise_install: true``, ``team: null``) answers
events from every team of the organisation with the organisation's token, beside a workspace
installed on its own, and leaves with ``app_uninstalled``."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette

from gateway.core.config import Secret
from gateway.core.models import Outgoing
from tests.adapters._slack import MakeEnv, make_slack
from tests.adapters.test_slack_oauth import GATEWAY, install
from tests.fakes.slack_api import FakeSlack, event_envelope, fake_slack

__all__ = ["fake_slack", "make_slack"]


def org_dm(team: str, org: str, bot_user: str, text: str, *, event_id: str) -> dict[str, object]:
    """A DM in ``team`` received by the org-wide installation of ``org``."""
    event = {"type": "message", "channel": f"D{team}", "channel_type": "im", "user": f"U{team}", "text": text, "ts": "2.2"}
    return event_envelope(event, team_id=team, event_id=event_id, bot_user_id=bot_user, enterprise_id=org, org_wide=True)


async def test_org_wide_install_answers_every_team_of_the_org_with_the_org_token(
    make_slack: MakeEnv, fake_slack: FakeSlack
) -> None:
    env = await make_slack(client_id=fake_slack.client_id, client_secret=Secret(fake_slack.client_secret))
    org = fake_slack.add_workspace("E1", org_wide=True)
    solo = fake_slack.add_workspace("TS")
    browser = httpx.AsyncClient(transport=httpx.ASGITransport(app=Starlette(routes=env.adapter.routes())), base_url=GATEWAY)
    async with browser:
        done = await install(fake_slack, browser, "E1")
        assert done.status_code == 200 and "Org E1" in done.text
        assert (await install(fake_slack, browser, "TS")).status_code == 200
    store = env.adapter._workspaces.store
    bot = await store.async_find_bot(enterprise_id="E1", team_id=None, is_enterprise_install=True)
    assert bot is not None and bot.is_enterprise_install and bot.team_id is None and bot.bot_token == org.token
    installation = await store.async_find_installation(enterprise_id="E1", team_id=None, is_enterprise_install=True)
    assert installation is not None and installation.enterprise_url  # Bolt keeps auth.test's url for orgs

    for n, team in enumerate(("T1", "T2")):
        parsed = await env.adapter.parse(env.request(org_dm(team, "E1", org.user_id, f"hi from {team}", event_id=f"Ev{n}")))
        (inbound,) = parsed.inbounds
        assert inbound.route["team"] == team and inbound.route["enterprise"] == "E1"
        await env.adapter.send(inbound.route, Outgoing(text=f"answer {team}"))
    # Our own reply echoed back through the org install is recognised by the stored identity.
    own = org_dm("T1", "E1", org.user_id, "", event_id="EvOwn")
    own["event"] = {**own["event"], "user": org.user_id, "bot_id": org.bot_id, "text": "answer T1"}  # type: ignore[dict-item]
    assert (await env.adapter.parse(env.request(own))).inbounds == ()
    solo_event = event_envelope(
        {"type": "message", "channel": "DTS", "channel_type": "im", "user": "UTS", "text": "solo", "ts": "3.3"},
        team_id="TS", event_id="EvSolo", bot_user_id=solo.user_id,
    )  # fmt: skip
    (inbound,) = (await env.adapter.parse(env.request(solo_event))).inbounds
    await env.adapter.send(inbound.route, Outgoing(text="answer TS"))
    posts = {c.params["text"]: c.token for c in fake_slack.calls("chat.postMessage")}
    assert posts == {"answer T1": org.token, "answer T2": org.token, "answer TS": solo.token}


async def test_org_uninstall_deletes_the_org_installation_only(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await make_slack(client_id=fake_slack.client_id, client_secret=Secret(fake_slack.client_secret))
    org = fake_slack.add_workspace("E1", org_wide=True)
    fake_slack.add_workspace("TS")
    browser = httpx.AsyncClient(transport=httpx.ASGITransport(app=Starlette(routes=env.adapter.routes())), base_url=GATEWAY)
    async with browser:
        for team in ("E1", "TS"):
            assert (await install(fake_slack, browser, team)).status_code == 200
    gone = event_envelope({"type": "app_uninstalled"}, team_id="T1", event_id="EvBye", enterprise_id="E1", org_wide=True)
    await env.adapter.parse(env.request(gone))
    store = env.adapter._workspaces.store
    assert await store.find_bot_for("T1", "E1") is None
    assert not await env.adapter._workspaces.serves("T2", "E1")
    assert await store.find_bot_for("TS") is not None
    late = org_dm("T2", "E1", org.user_id, "anyone?", event_id="EvLate")
    assert (await env.adapter.parse(env.request(late))).inbounds == ()  # no installation: not answered
