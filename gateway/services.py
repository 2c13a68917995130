"""The long-lived objects one process needs, built once on its event loop: Redis, the pooled
HTTP client, one OCS client (and speech client, where it has one) per bot and one adapter per
channel. The web app and the worker runtime both hold one ``Services``; nothing else keeps state
between requests."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import redis.asyncio as aioredis

from adapters import adapter_class
from gateway.core.aiohttp_transport import AiohttpTransport
from gateway.core.channel import AdapterServices, ChannelAdapter
from gateway.core.config import METRICS_PORT_ENV, GatewayConfig
from gateway.core.errors import ConfigError
from gateway.core.keys import Keys
from gateway.core.metrics import Metrics
from gateway.core.models import ReplyAttachment
from gateway.core.version import USER_AGENT
from gateway.ocs.budget import RequestBudget
from gateway.ocs.client import OCSClient
from gateway.ocs.reachability import Reachability
from gateway.speech.client import SpeechClient
from gateway.store.connect import async_redis
from gateway.store.conversations import ConversationStore
from gateway.store.dead_letters import DeadLetterStore
from gateway.store.ledger import TurnLedger
from gateway.store.redis_check import check_redis
from gateway.store.replication import NO_WAIT, Durability
from workers.http import RunnerProbe, WorkerHttp
from workers.process import WorkerProcess

__all__ = ["Services", "durability_of", "worker_process"]


def durability_of(config: GatewayConfig) -> Durability:
    """What the config asks acknowledged writes to wait for."""
    return Durability(config.durable_replicas, config.durable_timeout_ms, config.durable_on_disk)


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
    #: This process's metrics (its own registry): the edge, the OCS clients and the runner count here.
    metrics: Metrics = field(default_factory=Metrics)
    #: slack_sdk's clients of every Slack channel share it: one connection pool per process.
    aiohttp_session: aiohttp.ClientSession | None = None
    #: The speech service of each bot that has a ``speech`` block (docs/VOICE.md).
    speech: dict[str, SpeechClient] = field(default_factory=dict)
    #: Whether each OCS origin answers, and the turns waiting for it to (gateway/ocs/reachability.py).
    reachability: Reachability = field(default_factory=Reachability)
    #: What acknowledged writes wait for (``durable_replicas``): the admitter's and the leases'.
    durability: Durability = NO_WAIT

    @classmethod
    async def open(
        cls,
        config: GatewayConfig,
        redis_url: str,
        *,
        namespace: str = "ocsgw",
        metrics: Metrics | None = None,
        checked: bool = False,
    ) -> Services:
        """``metrics``: count into these (the web app builds them first, for its middleware).
        ``checked``: refuse an unsafe Redis (``check_redis``) before anything else is built.

        Whatever fails on the way (the Redis check, an adapter's start-up) closes what was opened
        before it, in reverse order: a process that could not start holds no pool."""
        keys = Keys(namespace)
        async with contextlib.AsyncExitStack() as opened:
            # A blocking pool: past its size a caller waits for a connection instead of failing at
            # once (redis-py's default pool raises), so a burst of adopted conversations queues.
            # Plain or Sentinel-managed (gateway/store/connect.py), the one factory every client comes from.
            redis = async_redis(
                config, redis_url, blocking=True, max_connections=config.worker.max_concurrent_steps + 64, timeout=20,
                socket_timeout=5, socket_connect_timeout=5, health_check_interval=30,
            )
            opened.push_async_callback(redis.aclose)
            durability = durability_of(config)
            if checked:
                # First: no adapter calls its platform (getMe, a socket) for a process that will not start.
                await check_redis(redis, require_durable=config.require_durable_redis, durability=durability)
            # One pool for OCS, platforms and callbacks; waiting turns hold no connection, so a
            # modest pool serves thousands of conversations.
            http = httpx.AsyncClient(
                headers={"User-Agent": USER_AGENT},
                timeout=httpx.Timeout(30.0, connect=10.0),
                # On aiohttp's pool: a quarter of httpcore's CPU per request at 16 concurrent (issue 21,
                # gateway/core/aiohttp_transport.py); the API above it is still httpx's. Bounded, all
                # kept alive: 40 carry ~800 requests/s at a 50 ms round trip.
                transport=AiohttpTransport(limits=httpx.Limits(max_connections=40, max_keepalive_connections=40)),
            )
            opened.push_async_callback(http.aclose)
            # One OCS request budget for every process (docs/OCS.md §3): the clients ask it first.
            metrics = metrics if metrics is not None else Metrics()
            budget = RequestBudget(redis, keys, lambda bot: config.bots[bot].budget, metrics)
            reachability = Reachability(probe_interval_s=config.worker.ocs_probe_interval_s)
            ocs = {
                name: OCSClient(
                    name=name, bot=bot, http=http, redis=redis, keys=keys, budget=budget, metrics=metrics,
                    fetch_allowlist=config.fetch_allowlist, reachability=reachability,
                )
                for name, bot in config.bots.items()
            }
            speech = {
                name: SpeechClient(name=name, config=bot.speech, http=http, metrics=metrics)
                for name, bot in config.bots.items()
                if bot.speech is not None
            }
            session: aiohttp.ClientSession | None = None
            if any(c.type == "slack" for c in config.channels.values()):
                from adapters.slack.api import new_session  # here: it loads slack_sdk

                session = new_session()
                opened.push_async_callback(session.close)
            adapters: dict[str, ChannelAdapter[Any]] = {}
            for name, channel in config.channels.items():
                client = ocs[channel.bot]
                lent = AdapterServices(
                    config=config, http=http, redis=redis, keys=keys, fetch_ocs_file=_fetcher(client), aiohttp_session=session,
                    metrics=metrics,
                )
                adapters[name] = adapter_class(channel.type)(name, channel, config.bots[channel.bot], lent)
            services = cls(
                config, redis, http, keys, ocs, adapters,
                ConversationStore(keys), TurnLedger(redis, keys),
                DeadLetterStore(redis, keys, retention_days=config.dead_letter_retention_days), budget, metrics,
                aiohttp_session=session, speech=speech, reachability=reachability, durability=durability,
            )
            for adapter in adapters.values():
                # Before its start-up: one that fails half-way is closed too.
                opened.push_async_callback(adapter.aclose)
                await adapter.startup()
            opened.pop_all()  # started: from now on ``aclose`` closes them
        return services

    @classmethod
    async def open_checked(cls, config: GatewayConfig, redis_url: str, *, metrics: Metrics | None = None) -> Services:
        """``open``, with the Redis checked first: it must not evict (nor, if so configured, lose)
        what the process will store, and that is known before any adapter calls its platform.
        Both the edge and the workers start this way."""
        return await cls.open(config, redis_url, metrics=metrics, checked=True)

    @staticmethod
    def inbound_paths(config: GatewayConfig) -> dict[str, str]:
        """The inbound route path of each configured channel type (e.g. ``/telegram/{channel}``)."""
        return {kind: adapter_class(kind).inbound_path for kind in sorted({c.type for c in config.channels.values()})}

    def ocs_for(self, channel: str) -> OCSClient:
        return self.ocs[self.config.channels[channel].bot]

    def speech_for(self, channel: str) -> SpeechClient | None:
        return self.speech.get(self.config.channels[channel].bot)

    async def aclose(self) -> None:
        """Close the adapters, the aiohttp session, the HTTP client and Redis, in that order;
        each is closed even when one before it fails to close."""
        async with contextlib.AsyncExitStack() as closing:
            closing.push_async_callback(self.redis.aclose)
            closing.push_async_callback(self.http.aclose)
            if self.aiohttp_session is not None:
                closing.push_async_callback(self.aiohttp_session.close)
            for adapter in reversed(self.adapters.values()):
                closing.push_async_callback(adapter.aclose)


def _fetcher(client: OCSClient):  # type: ignore[no-untyped-def]
    async def fetch(attachment: ReplyAttachment) -> bytes:
        return await client.download_file(attachment.content_url)

    return fetch


def worker_process(config: GatewayConfig, redis_url: str) -> WorkerProcess:
    """A worker process whose services are opened (and their Redis checked) on its runner's loop,
    with its HTTP listener for metrics and health when ``worker.metrics_port`` is set."""
    return _ObservedWorker(config, redis_url, lambda: Services.open_checked(config, redis_url))


class _ObservedWorker(WorkerProcess):
    """A worker with its HTTP listener (``workers/http.py``) when
    ``worker.metrics_port`` is set; the listener starts first, so ``/livez`` answers (and
    ``/readyz`` says 503) while the worker starts."""

    http: WorkerHttp | None = None

    def start(self) -> None:
        port = self.config.worker.metrics_port
        if port is not None:
            host = self.config.worker.metrics_host
            probe = RunnerProbe(lambda: self.life.runner, lambda: self.life.failure)
            try:
                token = self.config.metrics_token.reveal() if self.config.metrics_token is not None else None
                self.http = WorkerHttp(probe, host=host, port=port, metrics_token=token)
            except OSError as exc:
                # A setting to change, not a crash to debug: one line naming where it is set.
                raise ConfigError(
                    f"worker.metrics_port: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                    f"choose another port with worker.metrics_port or {METRICS_PORT_ENV}"
                ) from exc
        try:
            if self.http is not None:
                self.http.start()  # inside the try: a listener that started late is stopped too
            super().start()
        except BaseException:
            self._stop_http()
            raise

    def stop(self, timeout_ms: int = 10_000) -> None:
        try:
            super().stop(timeout_ms)
        finally:
            self._stop_http()

    def _stop_http(self) -> None:
        if self.http is not None:
            self.http.stop()
            self.http = None
