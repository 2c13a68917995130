"""The optional reset slash command, posted as a form to the same events route."""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from gateway.core.config import Secret
from gateway.core.errors import PayloadInvalid
from gateway.core.models import ConversationKey, InboundKind
from tests.adapters._slack import MakeEnv, SlackEnv, make_slack
from tests.fakes.slack_api import FakeSlack, fake_slack
from tests.support.samples import load_sample

__all__ = ["fake_slack", "make_slack"]


def command(
    channel_id: str, *, name: str = "/reset", team: str = "T111", trigger: str = "13345224609.738474920.8088930838d88f008e0"
) -> bytes:
    return urlencode(
        {
            "token": "deprecated",
            "team_id": team,
            "team_domain": "example",
            "channel_id": channel_id,
            "channel_name": "directmessage" if channel_id.startswith("D") else "general",
            "user_id": "U2147483697",
            "user_name": "ada",
            "command": name,
            "text": "",
            "response_url": "https://hooks.slack.com/commands/1234/5678",
            "trigger_id": trigger,
        }
    ).encode()


async def env_for(make_slack: MakeEnv, fake: FakeSlack, **channel: object) -> SlackEnv:
    ws = fake.add_workspace("T111")
    return await make_slack(bot_token=Secret(ws.token), **channel)


async def test_slash_command_in_a_dm_resets_that_dm(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await env_for(make_slack, fake_slack, slash_command="/reset")
    request = env.request(command("D024BE91L", team="T123ABC456"))
    await env.adapter.verify(request)  # signed like events (docs/PLATFORMS.md §2.1)
    parsed = await env.adapter.parse(request)
    (inbound,) = parsed.inbounds
    assert inbound.kind is InboundKind.RESET
    (dm,) = (await env.adapter.parse(env.request(load_sample("slack_message_im.json")))).inbounds
    assert inbound.key == dm.key == ConversationKey("sl", "T:T123ABC456:D:D024BE91L")  # the DM's conversation
    assert inbound.event_id == "cmd:13345224609.738474920.8088930838d88f008e0"
    assert dict(inbound.route) == {"team": "T123ABC456", "channel": "D024BE91L"}
    assert parsed.response == {"response_type": "ephemeral", "text": "Starting over."}


async def test_slash_command_in_a_channel_explains_the_thread_keyword(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await env_for(make_slack, fake_slack, slash_command="/reset")
    parsed = await env.adapter.parse(env.request(command("C111")))
    assert parsed.inbounds == ()
    assert parsed.response["response_type"] == "ephemeral" and "`reset`" in parsed.response["text"]


async def test_slash_command_resets_the_channel_in_per_channel_mode(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await env_for(make_slack, fake_slack, slash_command="/reset", channel_conversation="per_channel")
    (inbound,) = (await env.adapter.parse(env.request(command("C111")))).inbounds
    assert inbound.key == ConversationKey("sl", "T:T111:C:C111")


async def test_unconfigured_command_gets_a_polite_ephemeral_answer(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await env_for(make_slack, fake_slack)
    parsed = await env.adapter.parse(env.request(command("D1", name="/other")))
    assert parsed.inbounds == () and "not set up" in parsed.response["text"]


async def test_ssl_check_and_interactivity_are_acknowledged(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await env_for(make_slack, fake_slack, slash_command="/reset")
    for body in (b"ssl_check=1&token=x", b"payload=%7B%7D"):
        parsed = await env.adapter.parse(env.request(body))
        assert parsed.inbounds == () and parsed.response is None


async def test_command_without_trigger_id_is_payload_invalid(make_slack: MakeEnv, fake_slack: FakeSlack) -> None:
    env = await env_for(make_slack, fake_slack, slash_command="/reset")
    with pytest.raises(PayloadInvalid):
        await env.adapter.parse(env.request(command("D1", trigger="")))
