"""``ocs-gateway telegram set-webhook | webhook-info`` against the fake Bot API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from adapters.telegram.cli import PENDING_WARNING, set_webhook, webhook_info
from gateway.core.config import GatewayConfig, Secret
from gateway.core.errors import ConfigError
from tests.adapters._telegram import SECRET, TOKEN, gateway_config
from tests.fakes.telegram_api import FakeTelegram, fake_telegram  # noqa: F401 - fixture
from tests.support.servers import free_port

PUBLIC = "https://gw.example.com"
EXPECTED_URL = f"{PUBLIC}/telegram/tg"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


def config_for(fake: FakeTelegram, *, public_url: str | None = PUBLIC, **channel: Any) -> GatewayConfig:
    fake.add_bot(TOKEN, username="clinic_bot")
    top = {"public_url": public_url} if public_url else {}
    return gateway_config(fake.url, {"tg": channel}, **top)


async def test_set_webhook_registers_url_secret_and_update_types(
    fake_telegram: FakeTelegram, http: httpx.AsyncClient
) -> None:
    config = config_for(fake_telegram)
    report = await set_webhook(config, "tg", http=http)
    assert fake_telegram.bots[TOKEN].webhook == {
        "url": EXPECTED_URL, "secret_token": SECRET,
        "allowed_updates": ["message", "my_chat_member", "callback_query"], "max_connections": 40,
    }
    assert f"Webhook set for channel 'tg': {EXPECTED_URL}" in report
    assert "@clinic_bot" in report and "OK: the webhook matches" in report
    assert SECRET not in report and TOKEN not in report


async def test_set_webhook_needs_public_url(fake_telegram: FakeTelegram, http: httpx.AsyncClient) -> None:
    with pytest.raises(ConfigError, match="public_url"):
        await set_webhook(config_for(fake_telegram, public_url=None), "tg", http=http)


async def test_secret_telegram_would_refuse_is_caught_before_calling(
    fake_telegram: FakeTelegram, http: httpx.AsyncClient
) -> None:
    config = config_for(fake_telegram, webhook_secret=Secret("has spaces!"))
    with pytest.raises(ConfigError, match="A-Z a-z 0-9"):
        await set_webhook(config, "tg", http=http)
    assert fake_telegram.calls("setWebhook") == []


async def test_webhook_info_warns_when_no_webhook_is_set(fake_telegram: FakeTelegram, http: httpx.AsyncClient) -> None:
    report = await webhook_info(config_for(fake_telegram), "tg", http=http)
    assert "no webhook is set" in report
    assert "ocs-gateway telegram set-webhook --channel tg" in report


async def test_webhook_info_warns_when_the_url_drifted(fake_telegram: FakeTelegram, http: httpx.AsyncClient) -> None:
    config = config_for(fake_telegram)
    await set_webhook(config, "tg", http=http)
    fake_telegram.bots[TOKEN].webhook["url"] = "https://old-host.example.com/telegram/tg"
    report = await webhook_info(config, "tg", http=http)
    assert f"points to https://old-host.example.com/telegram/tg, not {EXPECTED_URL}" in report


async def test_webhook_info_warns_when_update_types_differ(fake_telegram: FakeTelegram, http: httpx.AsyncClient) -> None:
    config = config_for(fake_telegram)
    await set_webhook(config, "tg", http=http)
    fake_telegram.bots[TOKEN].webhook["allowed_updates"] = ["message"]
    report = await webhook_info(config, "tg", http=http)
    assert "Telegram sends [message] but the config asks for [message, my_chat_member, callback_query]" in report


async def test_webhook_info_warns_about_piled_up_updates_and_the_last_error(
    fake_telegram: FakeTelegram, http: httpx.AsyncClient
) -> None:
    config = config_for(fake_telegram)
    await set_webhook(config, "tg", http=http)
    bot = fake_telegram.bots[TOKEN]
    bot.pending_update_count = PENDING_WARNING + 1
    bot.last_error_message = "Wrong response from the webhook: 503 Service Unavailable"
    report = await webhook_info(config, "tg", http=http)
    assert f"{PENDING_WARNING + 1} updates are waiting" in report
    assert "last delivery failed" in report and "503 Service Unavailable" in report


async def test_refused_token_is_a_config_error_that_does_not_print_it(
    fake_telegram: FakeTelegram, http: httpx.AsyncClient
) -> None:
    config = gateway_config(fake_telegram.url, {"tg": {}}, public_url=PUBLIC)  # token unknown to the fake
    with pytest.raises(ConfigError, match="refused the token") as caught:
        await webhook_info(config, "tg", http=http)
    assert TOKEN not in str(caught.value)


async def test_unreachable_bot_api_is_a_config_error_that_does_not_print_the_token(http: httpx.AsyncClient) -> None:
    config = gateway_config(f"http://127.0.0.1:{free_port()}", {"tg": {}}, public_url=PUBLIC)
    with pytest.raises(ConfigError, match="cannot reach") as caught:
        await set_webhook(config, "tg", http=http)
    assert TOKEN not in str(caught.value)


async def test_a_channel_that_is_not_telegram_is_refused(fake_telegram: FakeTelegram, http: httpx.AsyncClient) -> None:
    with pytest.raises(ConfigError, match="not a Telegram channel"):
        await webhook_info(config_for(fake_telegram), "nope", http=http)
