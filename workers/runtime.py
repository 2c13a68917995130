"""What one worker process holds: its config, its broker, and the services it builds lazily on
Dramatiq's event loop (the loop exists only once the worker boots)."""

from __future__ import annotations

import asyncio

from dramatiq.brokers.redis import RedisBroker

from gateway.config import GatewayConfig
from gateway.models import ConversationKey
from gateway.services import Services
from workers.broker import ADVANCE, enqueue
from workers.turns import TurnEngine

__all__ = ["WorkerRuntime"]


class WorkerRuntime:
    def __init__(self, config: GatewayConfig, redis_url: str, broker: RedisBroker) -> None:
        self.config = config
        self.redis_url = redis_url
        self.broker = broker
        self._services: Services | None = None
        self._engine: TurnEngine | None = None
        self._lock: asyncio.Lock | None = None

    async def services(self) -> Services:
        if self._services is None:
            self._lock = self._lock or asyncio.Lock()
            async with self._lock:
                if self._services is None:
                    self._services = await Services.open(self.config, self.redis_url)
        return self._services

    async def engine(self) -> TurnEngine:
        if self._engine is None:
            self._engine = TurnEngine(await self.services(), self.config.worker, self.schedule)
        return self._engine

    def schedule(self, conv: ConversationKey, delay_s: float) -> None:
        enqueue(self.broker, ADVANCE, str(conv), delay_s=delay_s if delay_s > 0.001 else None)

    async def aclose(self) -> None:
        if self._services is not None:
            await self._services.aclose()
            self._services = None
