"""The long-lived objects one process needs, built once on its event loop: Redis, the pooled
HTTP client, one OCS client per bot and one adapter per channel. The web app and the worker
runtime both hold one ``Services``; nothing else keeps state between requests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import redis.asyncio as aioredis

from adapters import AdapterServices, ChannelAdapter, adapter_class
from gateway.budget import RequestBudget
from gateway.config import GatewayConfig
from gateway.conversations import ConversationStore
from gateway.dead_letters import DeadLetterStore
from gateway.keys import Keys
from gateway.ledger import TurnLedger
from gateway.models import ReplyAttachment
from gateway.ocs_client import USER_AGENT, OCSClient

__all__ = ["Services"]


@dataclass
class Services:
    config: GatewayConfig
    redis: aioredis.Redis
    http: httpx.AsyncClient
    keys: Keys
    ocs: dict[str, OCSClient]
    adapters: dict[str, ChannelAdapter[Any]]
    conversations: ConversationStore
    ledger: TurnLedger
    dead_letters: DeadLetterStore
    budget: RequestBudget

    @classmethod
    async def open(cls, config: GatewayConfig, redis_url: str, *, namespace: str = "ocsgw") -> Services:
        keys = Keys(namespace)
        # A blocking pool: past its size a caller waits for a connection instead of failing at
        # once (redis-py's default pool raises), so a burst of adopted conversations queues.
        pool = aioredis.BlockingConnectionPool.from_url(
            redis_url, max_connections=config.worker.max_concurrent_steps + 64, timeout=20,
            socket_timeout=5, socket_connect_timeout=5, health_check_interval=30,
        )
        redis = aioredis.Redis(connection_pool=pool)
        # One pool for OCS, platforms and callbacks; waiting turns hold no connection, so a
        # modest pool serves thousands of conversations.
        http = httpx.AsyncClient(
            headers={"User-Agent": USER_AGENT},
            timeout=httpx.Timeout(30.0, connect=10.0),
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )
        # One OCS request budget for every process (CONTRACT §3): the clients ask it first.
        budget = RequestBudget(redis, keys, lambda bot: config.bots[bot].budget)
        ocs = {
            name: OCSClient(name=name, bot=bot, http=http, redis=redis, keys=keys, budget=budget)
            for name, bot in config.bots.items()
        }
        adapters: dict[str, ChannelAdapter[Any]] = {}
        for name, channel in config.channels.items():
            client = ocs[channel.bot]
            lent = AdapterServices(config=config, http=http, redis=redis, keys=keys, fetch_ocs_file=_fetcher(client))
            adapters[name] = adapter_class(channel.type)(name, channel, config.bots[channel.bot], lent)
        services = cls(
            config, redis, http, keys, ocs, adapters,
            ConversationStore(redis, keys), TurnLedger(redis, keys),
            DeadLetterStore(redis, keys, retention_days=config.dead_letter_retention_days), budget,
        )
        for adapter in adapters.values():
            await adapter.startup()
        return services

    def ocs_for(self, channel: str) -> OCSClient:
        return self.ocs[self.config.channels[channel].bot]

    async def aclose(self) -> None:
        for adapter in self.adapters.values():
            await adapter.aclose()
        await self.http.aclose()
        await self.redis.aclose()


def _fetcher(client: OCSClient):  # type: ignore[no-untyped-def]
    async def fetch(attachment: ReplyAttachment) -> bytes:
        return await client.download_file(attachment.content_url)

    return fetch
