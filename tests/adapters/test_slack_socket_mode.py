"""Slack over Socket Mode, end to end: envelopes from the Socket Mode fake into the running gateway
(the edge's listener + a worker + the OCS simulator, tests/HARNESS.md), replies out to the fake
Web API; each envelope acknowledged only once its event is stored."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from adapters.slack.config import SlackChannelConfig
from adapters.slack.manifest import BOT_EVENTS, manifest
from gateway import cli
from gateway.cli.demo import demo_config
from gateway.config_loading import GatewayConfig
from gateway.core.config import Secret
from gateway.core.errors import ConfigError
from gateway.edge.app import create_app
from gateway.services import worker_process
from gateway.store.embedded_redis import EmbeddedRedis
from tests.adapters._slack import CHATBOT_ID
from tests.adapters.test_slack_e2e import dm
from tests.conftest import SimServer, Stack, settled, stack_config, wait_for
from tests.fakes.slack_api import FakeSlack, Workspace, fake_slack
from tests.fakes.slack_socket import APP_TOKEN, Delivery, SlackSocketFake, slack_socket
from tests.support.servers import UvicornThread

__all__ = ["fake_slack", "slack_socket"]

MakeStack = Callable[..., Stack]


def socket_channel(fake: FakeSlack, ws: Workspace, **settings: Any) -> dict[str, Any]:
    return {
        "type": "slack", "bot": "demo", "socket_mode": True, "app_token": Secret(APP_TOKEN),
        "bot_token": Secret(ws.token), "api_base_url": fake.api_url, **settings,
    }  # fmt: skip


@pytest.fixture
def workspace(fake_slack: FakeSlack, slack_socket: SlackSocketFake) -> Workspace:
    fake_slack.socket_mode = slack_socket
    return fake_slack.add_workspace("T100")


@pytest.fixture
def socket_stack(make_stack: MakeStack, fake_slack: FakeSlack, slack_socket: SlackSocketFake, workspace: Workspace) -> Stack:
    stack = make_stack(channels={"sl": socket_channel(fake_slack, workspace)})
    wait_for(slack_socket.connections, what="the listener to connect")
    return stack


def acked(delivery: Delivery) -> Callable[[], bool]:
    return lambda: delivery.acked


def test_dm_over_the_socket_is_answered_and_its_envelope_acknowledged(
    socket_stack: Stack, fake_slack: FakeSlack, slack_socket: SlackSocketFake, workspace: Workspace
) -> None:
    delivery = slack_socket.deliver(dm(workspace, "hello", ts="1700000001.000100", event_id="Ev1"))
    assert wait_for(lambda: fake_slack.texts(channel="D100"), what="a reply") == ["Echo #1: hello"]
    assert delivery.acked and len(delivery.attempts) == 1
    # The apps.connections.open call carried the app-level token, never a bot token.
    assert {c.token for c in fake_slack.calls("apps.connections.open")} == {APP_TOKEN}


def test_events_route_of_a_socket_mode_channel_is_not_found(socket_stack: Stack, workspace: Workspace) -> None:
    response = socket_stack.http.post(f"{socket_stack.url}/slack/sl/events", json={"type": "event_callback"})
    assert response.status_code == 404


def test_envelope_redelivered_with_the_same_event_id_is_answered_once(
    socket_stack: Stack, fake_slack: FakeSlack, slack_socket: SlackSocketFake, workspace: Workspace
) -> None:
    event = dm(workspace, "once", ts="1700000002.000100", event_id="Ev2")
    first = slack_socket.deliver(event)
    wait_for(acked(first), what="the first envelope acknowledged")
    again = slack_socket.deliver(event)  # Slack sends it again (its ack was lost on the way)
    wait_for(acked(again), what="the redelivered envelope acknowledged")
    wait_for(lambda: fake_slack.texts(channel="D100"), what="a reply")
    settled(socket_stack.redis)
    assert fake_slack.texts(channel="D100") == ["Echo #1: once"]


def test_disconnect_refresh_requested_reconnects_and_keeps_receiving(
    socket_stack: Stack, fake_slack: FakeSlack, slack_socket: SlackSocketFake, workspace: Workspace
) -> None:
    (old,) = slack_socket.connections()
    slack_socket.disconnect("refresh_requested")
    wait_for(lambda: slack_socket.accepted == 2 and old not in slack_socket.connections(), what="a new connection")
    delivery = slack_socket.deliver(dm(workspace, "still here", ts="1700000003.000100", event_id="Ev3"))
    assert wait_for(lambda: fake_slack.texts(channel="D100"), what="a reply") == ["Echo #1: still here"]
    assert [a.connection for a in delivery.attempts] != [old]


def test_dropped_connection_is_reopened(
    socket_stack: Stack, fake_slack: FakeSlack, slack_socket: SlackSocketFake, workspace: Workspace
) -> None:
    slack_socket.drop()
    wait_for(lambda: slack_socket.accepted == 2 and slack_socket.connections(), what="a new connection")
    slack_socket.deliver(dm(workspace, "back", ts="1700000004.000100", event_id="Ev4"))
    assert wait_for(lambda: fake_slack.texts(channel="D100"), what="a reply") == ["Echo #1: back"]


def test_two_replicas_on_one_redis_answer_each_event_once(
    make_stack: MakeStack, fake_slack: FakeSlack, slack_socket: SlackSocketFake, workspace: Workspace
) -> None:
    first = make_stack(channels={"sl": socket_channel(fake_slack, workspace)})
    make_stack(channels={"sl": socket_channel(fake_slack, workspace)}, start_worker=False)
    wait_for(lambda: len(slack_socket.connections()) == 2, what="both replicas connected")
    deliveries = []
    for n in range(6):
        event = dm(workspace, f"m{n}", ts=f"1700000010.00010{n}", event_id=f"Ev1{n}", channel=f"D2{n}")
        # Each event twice: Slack's round robin hands the copy to the other replica.
        deliveries += [slack_socket.deliver(event), slack_socket.deliver(event)]
    for delivery in deliveries:
        wait_for(acked(delivery), what="every envelope acknowledged")
    assert {a.connection for d in deliveries for a in d.attempts} == set(slack_socket.connections())
    wait_for(lambda: len(fake_slack.texts()) >= 6, what="six replies")
    settled(first.redis)
    assert sorted(fake_slack.texts()) == [f"Echo #1: m{n}" for n in range(6)]


def test_slash_command_over_the_socket_answers_in_the_ack(
    make_stack: MakeStack, fake_slack: FakeSlack, slack_socket: SlackSocketFake, workspace: Workspace
) -> None:
    make_stack(channels={"sl": socket_channel(fake_slack, workspace, slash_command="/restart")})
    wait_for(slack_socket.connections, what="the listener to connect")
    form = {"team_id": "T100", "channel_id": "D100", "user_id": "UHUMAN", "command": "/restart", "text": "",
            "trigger_id": "13345224609.738474920.8088930838d88f008e0", "is_enterprise_install": False}
    delivery = slack_socket.deliver(form, type="slash_commands")
    wait_for(acked(delivery), what="the command acknowledged")
    assert delivery.ack_payload == {"response_type": "ephemeral", "text": "Starting over."}


def test_envelope_arriving_while_redis_is_down_is_redelivered_and_answered_once(
    tmp_path: Path, sim: SimServer, fake_slack: FakeSlack, slack_socket: SlackSocketFake, workspace: Workspace
) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    redis_url = server.start()
    config = stack_config(sim.url, "http://127.0.0.1:9", channels={"sl": socket_channel(fake_slack, workspace)})
    edge = UvicornThread(create_app(config, redis_url))
    worker = None
    try:
        edge.start()
        wait_for(slack_socket.connections, what="the listener to connect")
        server.stop()
        slack_socket.max_retries = 1000  # Slack keeps trying for minutes; the test needs seconds
        delivery = slack_socket.deliver(dm(workspace, "later", ts="1700000005.000100", event_id="Ev5"))
        wait_for(lambda: len(delivery.attempts) >= 2, what="a redelivery")
        assert not delivery.acked  # never acknowledged while it could not be stored
        server.start()
        wait_for(acked(delivery), what="the envelope acknowledged once Redis is back")
        worker = worker_process(config, redis_url)
        worker.start()
        assert wait_for(lambda: fake_slack.texts(channel="D100"), what="a reply") == ["Echo #1: later"]
        with redis.Redis.from_url(redis_url) as redis_client:
            settled(redis_client)
        assert fake_slack.texts(channel="D100") == ["Echo #1: later"]
    finally:
        if worker is not None:
            worker.stop()
        edge.stop()
        server.stop()


def _config_with(channel: dict[str, Any]) -> GatewayConfig:
    bots = {"demo": {"chatbot_id": CHATBOT_ID, "auth": "keyless"}}
    return GatewayConfig.from_mapping({"bots": bots, "channels": {"sl": {"type": "slack", "bot": "demo", **channel}}})


def test_socket_mode_needs_an_app_token_and_no_signing_secret() -> None:
    with pytest.raises(ConfigError, match="app_token"):
        _config_with({"socket_mode": True, "bot_token": Secret("xoxb-1")})
    config = _config_with({"socket_mode": True, "bot_token": Secret("xoxb-1"), "app_token": Secret(APP_TOKEN)})
    assert config.channels["sl"].type == "slack"


def test_http_events_need_a_signing_secret() -> None:
    with pytest.raises(ConfigError, match="signing_secret"):
        _config_with({"bot_token": Secret("xoxb-1")})


# -- the Socket Mode manifest -----------------------------------------------------------------------


def test_manifest_of_a_socket_mode_channel_enables_socket_mode_and_names_no_url() -> None:
    config = _config_with({"socket_mode": True, "bot_token": Secret("xoxb-1"), "app_token": Secret(APP_TOKEN),
                           "slash_command": "/restart"})
    text = manifest(config, "sl")
    document = yaml.safe_load(text)
    assert document["settings"]["socket_mode_enabled"] is True
    assert document["settings"]["event_subscriptions"] == {"bot_events": list(BOT_EVENTS)}
    assert "url" not in document["features"]["slash_commands"][0]
    assert "request_url" not in text and "YOUR-GATEWAY" not in text  # nothing public to point at


def test_cli_prints_the_socket_mode_manifest_on_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "s3cret")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-1")
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "bots": {"demo": {"chatbot_id": CHATBOT_ID, "auth": "keyless"}},
        "channels": {"sl": {"type": "slack", "bot": "demo", "signing_secret": "${SLACK_SIGNING_SECRET}",
                            "bot_token": "${SLACK_BOT_TOKEN}"}},
    }))  # fmt: skip
    assert cli.main(["--config", str(config), "slack", "manifest", "--channel", "sl"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["settings"]["socket_mode_enabled"] is False
    assert cli.main(["--config", str(config), "slack", "manifest", "--channel", "sl", "--socket-mode"]) == 0
    settings = yaml.safe_load(capsys.readouterr().out)["settings"]
    assert settings["socket_mode_enabled"] is True and "request_url" not in settings["event_subscriptions"]


def test_quickstart_without_a_config_prints_and_runs_a_socket_mode_slack_channel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OCS_GATEWAY_CONFIG", raising=False)
    for name in ("SLACK_APP_TOKEN", "SLACK_BOT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    # Before the app exists there are no tokens: the manifest needs none.
    assert cli.main(["slack", "manifest", "--channel", "slack"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["settings"]["socket_mode_enabled"] is True
    assert "slack" not in demo_config("http://127.0.0.1:8000", tmp_path, None).channels
    monkeypatch.setenv("SLACK_APP_TOKEN", APP_TOKEN)
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-quickstart")
    channel = demo_config("http://127.0.0.1:8000", tmp_path, None).channels["slack"]
    assert isinstance(channel, SlackChannelConfig) and channel.socket_mode and channel.bot == "simulator"
    assert channel.app_token is not None and channel.app_token.reveal() == APP_TOKEN
