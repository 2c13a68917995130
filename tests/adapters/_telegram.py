"""Shared set-up of the Telegram adapter tests: a real ``TelegramAdapter`` on real Redis (the
harness's ``redis_url``) whose Bot API calls go to ``FakeTelegram``."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from adapters.telegram.adapter import TelegramAdapter
from gateway.config_loading import GatewayConfig
from gateway.core.channel import AdapterServices, InboundRequest
from gateway.core.config import Secret
from gateway.core.errors import AttachmentUnavailable
from gateway.core.keys import Keys
from gateway.core.models import ReplyAttachment
from tests.fakes.telegram_api import FakeTelegram

__all__ = ["CHATBOT_ID", "SECRET", "TOKEN", "MakeEnv", "TelegramEnv", "gateway_config", "make_telegram"]

TOKEN = "777000111:AAHfake-token_for_tests"
SECRET = "s3cret-Token_1"
CHATBOT_ID = "6f1c2a9e-3b7d-4c1e-9a52-0d4e8b7f1a23"


def gateway_config(api_base_url: str, channels: dict[str, dict[str, Any]], **top: Any) -> GatewayConfig:
    """A config with bot ``demo`` and the given Telegram channels (token/secret defaulted)."""
    filled = {
        name: {"type": "telegram", "bot": "demo", "token": Secret(TOKEN), "webhook_secret": Secret(SECRET),
               "api_base_url": api_base_url, **settings}
        for name, settings in channels.items()
    }
    return GatewayConfig.from_mapping(
        {"bots": {"demo": {"chatbot_id": CHATBOT_ID, "auth": "keyless"}}, "channels": filled, **top}
    )


@dataclass
class TelegramEnv:
    adapter: TelegramAdapter
    fake: FakeTelegram
    redis: aioredis.Redis
    keys: Keys
    fetched: list[ReplyAttachment] = field(default_factory=list)

    def request(self, update: dict[str, Any] | bytes, *, secret: str | None = SECRET) -> InboundRequest:
        """A request as the edge hands it over: lower-case headers, raw body, arrival time."""
        body = update if isinstance(update, bytes) else json.dumps(update).encode()
        headers = {"content-type": "application/json"}
        if secret is not None:
            headers["x-telegram-bot-api-secret-token"] = secret
        return InboundRequest(channel=self.adapter.name, headers=headers, body=body, received_at=time.time())


MakeEnv = Callable[..., Awaitable[TelegramEnv]]


@pytest.fixture
async def make_telegram(fake_telegram: FakeTelegram, redis_url: str) -> AsyncIterator[MakeEnv]:
    """``await make_telegram(name="tg", token=TOKEN, files={url: bytes}, **channel_settings)``;
    the token is registered with the fake unless ``register=False`` (a revoked token)."""
    redis = aioredis.Redis.from_url(redis_url)
    http = httpx.AsyncClient()
    made: list[TelegramAdapter] = []
    keys = Keys()

    async def build(
        name: str = "tg",
        *,
        token: str = TOKEN,
        username: str = "clinic_bot",
        register: bool = True,
        files: dict[str, bytes] | None = None,
        startup: bool = True,
        **settings: Any,
    ) -> TelegramEnv:
        if register and token not in fake_telegram.bots:
            fake_telegram.add_bot(token, username=username)
        api = settings.pop("api_base_url", fake_telegram.url)
        config = gateway_config(api, {name: {"token": Secret(token), **settings}})
        env: TelegramEnv

        async def fetch(attachment: ReplyAttachment) -> bytes:
            env.fetched.append(attachment)
            if attachment.content_url not in (files or {}):
                raise AttachmentUnavailable("OCS answered HTTP 404 for the file")
            return (files or {})[attachment.content_url]

        services = AdapterServices(config=config, http=http, redis=redis, keys=keys, fetch_ocs_file=fetch)
        channel = config.channels[name]
        assert channel.type == "telegram"
        adapter = TelegramAdapter(name, channel, config.bots["demo"], services)
        env = TelegramEnv(adapter, fake_telegram, redis, keys)
        if startup:
            await adapter.startup()
        made.append(adapter)
        return env

    yield build
    for adapter in made:
        await adapter.aclose()
    await http.aclose()
    await redis.aclose()
