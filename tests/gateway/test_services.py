"""Opening a process's services (``Services.open``): the Redis check comes before any adapter
calls its platform, and a start-up that fails half-way leaves nothing open behind it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import aiohttp
import httpx
import pytest
import redis.asyncio as aioredis

import adapters
from gateway.core.channel import ChannelAdapter, InboundRequest
from gateway.core.config import Secret
from gateway.core.models import Outgoing, ParsedRequest, Reply, Route
from gateway.services import Services
from gateway.store.redis_check import UnsafeRedis
from tests.adapters._telegram import TOKEN, gateway_config
from tests.conftest import stack_config
from tests.fakes.telegram_api import FakeTelegram, fake_telegram  # noqa: F401 - fixture

NOWHERE = "http://127.0.0.1:9"
#: The name this test's Services give their Redis connections, to find them in CLIENT LIST.
CLIENT_NAME = "services-under-test"


class _Probe(ChannelAdapter[Any]):
    """A channel that talks to no platform; it keeps what it was lent, for the test to look at."""

    kind: ClassVar[str] = "webhook"
    inbound_path: ClassVar[str] = "/probe/{channel}"
    made: ClassVar[list[_Probe]] = []  # emptied by the ``probes`` fixture for every test

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.started = self.closed = False
        _Probe.made.append(self)

    async def startup(self) -> None:
        await self.services.redis.ping()  # holds a pooled Redis connection from now on
        self.started = True

    async def aclose(self) -> None:
        self.closed = True

    async def verify(self, request: InboundRequest) -> None:
        pass

    async def parse(self, request: InboundRequest) -> ParsedRequest:
        return ParsedRequest([])

    def render(self, reply: Reply) -> list[Outgoing]:
        return []

    async def send(self, route: Route, outgoing: Outgoing) -> str:
        return ""


class _FailingProbe(_Probe):
    async def startup(self) -> None:
        await super().startup()
        raise RuntimeError("this platform is down")


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[_Probe]]:
    """Webhook channels open as a ``_Probe``, Slack channels (which the aiohttp session is made
    for) as a ``_FailingProbe``."""
    monkeypatch.setattr(_Probe, "made", [])
    monkeypatch.setitem(adapters.ADAPTER_PATHS, "webhook", f"{__name__}:_Probe")
    monkeypatch.setitem(adapters.ADAPTER_PATHS, "slack", f"{__name__}:_FailingProbe")
    yield _Probe.made


async def _named_clients(redis_url: str) -> int:
    admin = aioredis.Redis.from_url(redis_url)
    try:
        return sum(1 for client in await admin.client_list() if client.get("name") == CLIENT_NAME)
    finally:
        await admin.aclose()


async def _until_no_named_clients(redis_url: str, timeout_s: float = 15.0) -> int:
    """The number of this test's Redis connections once none is left, or after ``timeout_s``
    (the server notices a closed socket on its next turn of the loop)."""
    deadline = time.monotonic() + timeout_s
    while (count := await _named_clients(redis_url)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return count


async def test_an_adapter_that_fails_to_start_leaves_no_pool_open(redis_url: str, probes: list[_Probe]) -> None:
    slack = {"type": "slack", "bot": "demo", "bot_token": Secret("xoxb-1"), "signing_secret": Secret("sig")}
    # The webhook channel ``hooks`` comes first: it starts (and so must be closed again) before
    # the Slack one fails.
    config = stack_config(NOWHERE, NOWHERE, channels={"sl": slack})
    assert list(config.channels) == ["hooks", "sl"]

    with pytest.raises(RuntimeError, match="this platform is down"):
        await Services.open(config, f"{redis_url}?client_name={CLIENT_NAME}")

    started, failed = probes
    assert started.started and isinstance(failed, _FailingProbe)
    assert started.closed and failed.closed
    http: httpx.AsyncClient = started.services.http
    session = started.services.aiohttp_session
    assert isinstance(session, aiohttp.ClientSession)
    assert http.is_closed
    assert session.closed
    assert await _until_no_named_clients(redis_url) == 0


async def test_an_unsafe_redis_stops_start_up_before_any_adapter_calls_its_platform(
    redis_url: str, fake_telegram: FakeTelegram
) -> None:
    fake_telegram.add_bot(TOKEN, username="clinic_bot")
    # The test Redis keeps no append-only file: a process that requires a durable one refuses it.
    config = gateway_config(fake_telegram.url, {"tg": {}}, require_durable_redis=True)

    with pytest.raises(UnsafeRedis):
        await Services.open_checked(config, f"{redis_url}?client_name={CLIENT_NAME}")

    assert fake_telegram.calls() == []  # no getMe, no setWebhook: the adapter never started
    assert await _until_no_named_clients(redis_url) == 0


async def test_closing_the_services_disconnects_their_redis_pool(redis_url: str) -> None:
    services = await Services.open_checked(stack_config(NOWHERE, NOWHERE), f"{redis_url}?client_name={CLIENT_NAME}")
    assert await _named_clients(redis_url) >= 1  # the check's connection, back in the pool
    await services.aclose()
    assert await _until_no_named_clients(redis_url) == 0
