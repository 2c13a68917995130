"""Shared set-up of the Slack adapter tests: a real ``SlackAdapter`` on real Redis (the harness's
``redis_url``), its Web API calls going to ``FakeSlack``, and signed requests built like Slack's."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import pytest
import redis.asyncio as aioredis

from adapters.slack.adapter import SlackAdapter
from adapters.slack.config import SlackChannelConfig
from gateway.config_loading import GatewayConfig
from gateway.core.channel import AdapterServices, InboundRequest
from gateway.core.config import Secret
from gateway.core.keys import Keys
from gateway.core.models import ReplyAttachment
from tests.fakes.slack_api import FakeSlack, signed_headers

__all__ = ["MakeEnv", "SIGNING_SECRET", "SlackEnv", "make_slack"]

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
CHATBOT_ID = "6f1c2a9e-3b7d-4c1e-9a52-0d4e8b7f1a23"


@dataclass
class SlackEnv:
    adapter: SlackAdapter
    fake: FakeSlack
    redis: aioredis.Redis
    keys: Keys
    name: str

    def request(
        self,
        body: dict[str, Any] | bytes,
        *,
        timestamp: int | None = None,
        now: float | None = None,
        headers: dict[str, str] | None = None,
        secret: str = SIGNING_SECRET,
    ) -> InboundRequest:
        """A request as the edge hands it over: lower-case headers, raw body, arrival time."""
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        signed = signed_headers(secret, raw, timestamp=timestamp)
        if isinstance(body, bytes) and not raw.startswith(b"{"):
            signed["content-type"] = "application/x-www-form-urlencoded"
        signed.update({k.lower(): v for k, v in (headers or {}).items()})
        return InboundRequest(channel=self.name, headers=signed, body=raw, received_at=now or time.time())


MakeEnv = Callable[..., Awaitable[SlackEnv]]


def gateway_config(fake: FakeSlack, name: str, **channel: Any) -> GatewayConfig:
    public_url = channel.pop("public_url", "https://gw.example.com")
    slack: dict[str, Any] = {
        "type": "slack",
        "bot": "demo",
        "signing_secret": Secret(SIGNING_SECRET),
        "api_base_url": fake.api_url,
    }
    slack.update(channel)
    return GatewayConfig.from_mapping(
        {
            "public_url": public_url,
            "bots": {"demo": {"chatbot_id": CHATBOT_ID, "auth": "keyless"}},
            "channels": {name: slack},
        }
    )


@pytest.fixture
async def make_slack(redis_url: str, fake_slack: FakeSlack) -> AsyncIterator[MakeEnv]:
    """``await make_slack(bot_token=Secret(...), ...)``: a started adapter on channel ``sl``
    (keyword arguments are channel config fields; ``fetch_ocs_file=`` lends the OCS download,
    ``aiohttp_session=`` a process's shared session, else the adapter opens its own)."""
    redis = aioredis.Redis.from_url(redis_url)
    http = httpx.AsyncClient(timeout=10)
    made: list[SlackAdapter] = []

    async def build(
        *,
        name: str = "sl",
        fetch_ocs_file: Callable[[ReplyAttachment], Awaitable[bytes]] | None = None,
        aiohttp_session: aiohttp.ClientSession | None = None,
        **channel: Any,
    ) -> SlackEnv:
        config = gateway_config(fake_slack, name, **channel)
        channel_config = config.channels[name]
        assert isinstance(channel_config, SlackChannelConfig)
        keys = Keys()
        services = AdapterServices(
            config=config, http=http, redis=redis, keys=keys, fetch_ocs_file=fetch_ocs_file, aiohttp_session=aiohttp_session
        )
        adapter = SlackAdapter(name, channel_config, config.bots["demo"], services)
        await adapter.startup()
        made.append(adapter)
        return SlackEnv(adapter=adapter, fake=fake_slack, redis=redis, keys=keys, name=name)

    yield build
    for adapter in made:
        await adapter.aclose()
    await http.aclose()
    await redis.aclose()
