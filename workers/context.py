"""What the workers need from their process, said as a protocol: the assembly
(``gateway/services.py``) provides it, so the workers depend on the foundation, the stores and
the OCS and speech clients, never on the adapters' packages nor on how the process was put together."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import redis.asyncio as aioredis

from gateway.core.channel import ChannelAdapter
from gateway.core.config import GatewayConfig
from gateway.core.keys import Keys
from gateway.core.metrics import Metrics
from gateway.ocs.client import OCSClient
from gateway.ocs.reachability import Reachability
from gateway.speech.client import SpeechClient
from gateway.store.conversations import ConversationStore
from gateway.store.dead_letters import DeadLetterStore
from gateway.store.ledger import TurnLedger
from gateway.store.replication import Durability

__all__ = ["WorkerServices"]


class WorkerServices(Protocol):
    """The long-lived objects of one worker process, opened on the turn runner's loop (read-only
    here, so any container with these attributes fits)."""

    @property
    def config(self) -> GatewayConfig: ...
    @property
    def redis(self) -> aioredis.Redis: ...
    @property
    def keys(self) -> Keys: ...
    @property
    def adapters(self) -> Mapping[str, ChannelAdapter[Any]]: ...
    @property
    def conversations(self) -> ConversationStore: ...
    @property
    def ledger(self) -> TurnLedger: ...
    @property
    def dead_letters(self) -> DeadLetterStore: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def reachability(self) -> Reachability: ...
    @property
    def durability(self) -> Durability:
        """What the fenced writes wait for (``durable_replicas``, gateway/store/replication.py)."""
        ...

    def ocs_for(self, channel: str) -> OCSClient: ...

    def speech_for(self, channel: str) -> SpeechClient | None:
        """The speech service of the channel's bot; None when it has no ``speech`` block."""
        ...

    async def aclose(self) -> None: ...
