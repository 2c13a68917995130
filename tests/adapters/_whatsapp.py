"""Shared set-up of the WhatsApp adapter tests: a real ``WhatsAppAdapter`` on real Redis (the
harness's ``redis_url``) whose Graph API calls go to ``FakeWhatsApp``; and the channel settings
for ``make_stack``."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from adapters.whatsapp.adapter import WhatsAppAdapter
from adapters.whatsapp.keys import WhatsAppKeys
from gateway.config_loading import GatewayConfig
from gateway.core.channel import AdapterServices, InboundRequest
from gateway.core.config import Secret
from gateway.core.errors import AttachmentUnavailable
from gateway.core.keys import Keys
from gateway.core.metrics import Metrics
from gateway.core.models import ReplyAttachment
from tests.fakes.whatsapp_api import PHONE_NUMBER_ID, TOKEN, FakeWhatsApp, signed_headers

__all__ = ["APP_SECRET", "CHATBOT_ID", "VERIFY_TOKEN", "MakeEnv", "WhatsAppEnv", "channel_settings", "make_whatsapp"]

APP_SECRET = "0123456789abcdef0123456789abcdef"
VERIFY_TOKEN = "verify-me-please"
CHATBOT_ID = "6f1c2a9e-3b7d-4c1e-9a52-0d4e8b7f1a23"


def channel_settings(fake: FakeWhatsApp, **settings: Any) -> dict[str, Any]:
    """A ``type: whatsapp`` channel on bot ``demo`` whose Graph API is ``fake``."""
    return {
        "type": "whatsapp", "bot": "demo", "phone_number_id": PHONE_NUMBER_ID,
        "access_token": Secret(TOKEN), "app_secret": Secret(APP_SECRET), "verify_token": Secret(VERIFY_TOKEN),
        "api_base_url": fake.api_base_url, **settings,
    }


@dataclass
class WhatsAppEnv:
    adapter: WhatsAppAdapter
    fake: FakeWhatsApp
    redis: aioredis.Redis
    keys: WhatsAppKeys
    metrics: Metrics
    fetched: list[ReplyAttachment] = field(default_factory=list)

    def request(self, body: dict[str, Any] | bytes, *, secret: str = APP_SECRET) -> InboundRequest:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return InboundRequest(channel=self.adapter.name, headers=signed_headers(raw, secret), body=raw,
                              received_at=time.time())

    async def open_window(self, wa_id: str) -> None:
        """As if the user had just written."""
        await self.redis.set(self.keys.window(self.adapter.name, wa_id), int(time.time()), ex=86400)


MakeEnv = Callable[..., Awaitable[WhatsAppEnv]]


@pytest.fixture
async def make_whatsapp(fake_whatsapp: FakeWhatsApp, redis_url: str) -> AsyncIterator[MakeEnv]:
    """``await make_whatsapp(files={url: bytes}, fetch_allowlist=[...], **channel_settings)``."""
    redis = aioredis.Redis.from_url(redis_url)
    http = httpx.AsyncClient()

    async def build(
        name: str = "wa", *, files: dict[str, bytes] | None = None, fetch_allowlist: list[str] | None = None,
        **settings: Any,
    ) -> WhatsAppEnv:
        config = GatewayConfig.from_mapping({
            "bots": {"demo": {"chatbot_id": CHATBOT_ID, "auth": "keyless"}},
            "channels": {name: channel_settings(fake_whatsapp, **settings)},
            "fetch_allowlist": fetch_allowlist or [],
        })
        env: WhatsAppEnv
        metrics = Metrics()

        async def fetch(attachment: ReplyAttachment) -> bytes:
            env.fetched.append(attachment)
            if attachment.content_url not in (files or {}):
                raise AttachmentUnavailable("OCS answered HTTP 404 for the file")
            return (files or {})[attachment.content_url]

        services = AdapterServices(config=config, http=http, redis=redis, keys=Keys(), fetch_ocs_file=fetch,
                                   metrics=metrics)
        channel = config.channels[name]
        assert channel.type == "whatsapp"
        adapter = WhatsAppAdapter(name, channel, config.bots["demo"], services)  # type: ignore[arg-type]
        env = WhatsAppEnv(adapter, fake_whatsapp, redis, WhatsAppKeys.of(Keys()), metrics)
        return env

    yield build
    await http.aclose()
    await redis.aclose()
