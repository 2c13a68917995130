"""The long-lived objects one process needs, built once on its event loop: Redis, the pooled
HTTP client, one OCS client per bot and one adapter per channel. The web app and the worker
runtime both hold one ``Services``; nothing else keeps state between requests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import redis.asyncio as aioredis

from adapters import adapter_class
from gateway.core.channel import AdapterServices, ChannelAdapter
from gateway.core.config import GatewayConfig
from gateway.core.keys import Keys
from gateway.core.models import ReplyAttachment
from gateway.core.version import USER_AGENT
from gateway.ocs.budget import RequestBudget
from gateway.ocs.client import OCSClient
from gateway.store.conversations import ConversationStore
from gateway.store.dead_letters import DeadLetterStore
from gateway.store.ledger import TurnLedger
from gateway.store.redis_check import check_redis
from workers.process import WorkerProcess

__all__ = ["Services", "worker_process"]


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
            # A bounded pool, all kept alive: httpcore checks every idle connection (a poll() and a
            # getpeername()) each time it assigns a request, so an oversized pool costs CPU and a
            # small keep-alive churns connections; 40 carry ~800 requests/s at a 50 ms round trip.
            limits=httpx.Limits(max_connections=40, max_keepalive_connections=40),
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
            ConversationStore(keys), TurnLedger(redis, keys),
            DeadLetterStore(redis, keys, retention_days=config.dead_letter_retention_days), budget,
        )
        for adapter in adapters.values():
            await adapter.startup()
        return services

    @classmethod
    async def open_checked(cls, config: GatewayConfig, redis_url: str) -> Services:
        """``open``, once the Redis is known not to evict (nor, if so configured, to lose) what
        the process will store: both the edge and the workers start this way."""
        services = await cls.open(config, redis_url)
        try:
            await check_redis(services.redis, require_durable=config.require_durable_redis)
        except BaseException:
            await services.aclose()
            raise
        return services

    @staticmethod
    def inbound_paths(config: GatewayConfig) -> dict[str, str]:
        """The inbound route path of each configured channel type (e.g. ``/telegram/{channel}``)."""
        return {kind: adapter_class(kind).inbound_path for kind in sorted({c.type for c in config.channels.values()})}

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


def worker_process(config: GatewayConfig, redis_url: str) -> WorkerProcess:
    """A worker process whose services are opened (and their Redis checked) on its runner's loop."""

    return WorkerProcess(config, redis_url, lambda: Services.open_checked(config, redis_url))
