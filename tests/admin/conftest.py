"""Fixtures for the /admin console's tests: the console alone in process over a real Redis (for
what only the console decides: who gets in), a gateway stack with ``admin_token`` set (for what
needs a worker), a logged-in httpx client, and the states an operator must see (a stuck turn, a
dead letter, a worker)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.routing import Mount

from gateway.core.config import Secret
from gateway.core.keys import Keys
from gateway.core.models import ConversationKey, Inbound, InboundKind
from gateway.edge.admin.app import create_admin_app
from gateway.edge.admin.auth import FailureThrottle
from gateway.services import Services
from gateway.store.dead_letters import DeadLetterStage, DeadLetterStore
from gateway.store.heartbeats import Heartbeat, beat
from gateway.store.traffic import ChannelTraffic, read_traffic
from tests.conftest import Stack, stack_config, wait_for
from tests.support.tools import tool_missing

ADMIN_TOKEN = "adm_4f9c2e7b1d8a6035e9c4b7a1f2d8e6c3"
KEYS = Keys()
#: The conversation the tests make stuck, and the worker they make beat.
STUCK_CONVERSATION = "stuck-7"
WORKER_ID = "worker-a:4242:test"


@pytest.fixture
def console(make_stack: Callable[..., Stack]) -> Stack:
    """A running gateway (edge + worker) with the console enabled."""
    return make_stack(admin_token=Secret(ADMIN_TOKEN))


#: Where the in-process console's bots and callbacks point: nothing listens, nothing is called.
NOWHERE = "http://127.0.0.1:9"
#: The host the in-process console is reached at (its requests' ``Host``, hence its origin).
CONSOLE = "http://gw"


@dataclass
class ConsoleApp:
    """The console alone, in process: ``create_admin_app`` mounted at ``/admin`` over the
    services of a real Redis; no server, worker, simulator or edge routes."""

    redis: aioredis.Redis
    app: Starlette

    def client(self, address: str = "192.0.2.10", *, scheme: str = "http") -> httpx.AsyncClient:
        """A client whose requests come from ``address`` (the peer a server would see)."""
        transport = httpx.ASGITransport(app=self.app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url=f"{scheme}://gw", timeout=10)

    async def park_letter(self, conversation: str = "c-dlq", text: str = "hello", *, ledger_state: str = "sent",
                          task_id: str = "task-41") -> str:
        return await park_ocs_letter(self.redis, conversation, text, ledger_state, task_id)


@contextlib.asynccontextmanager
async def console_in_process(
    redis_url: str, *, throttle: FailureThrottle | None = None, **overrides: Any
) -> AsyncIterator[ConsoleApp]:
    """A ``ConsoleApp`` whose config has ``admin_token`` (``overrides`` merge into it)."""
    config = stack_config(NOWHERE, NOWHERE, **{"admin_token": Secret(ADMIN_TOKEN), **overrides})
    services = await Services.open(config, redis_url)
    try:
        admin = create_admin_app(config, lambda: services, throttle=throttle)
        yield ConsoleApp(services.redis, Starlette(routes=[Mount("/admin", admin)]))
    finally:
        await services.aclose()


@pytest_asyncio.fixture
async def console_app(redis_url: str) -> AsyncIterator[ConsoleApp]:
    async with console_in_process(redis_url) as console:
        yield console


async def park_ocs_letter(redis: aioredis.Redis, conversation: str, text: str, ledger_state: str, task_id: str) -> str:
    """A letter as the worker parks a turn that failed at the OCS stage (workers/failures.py)."""
    conv = ConversationKey("hooks", conversation)
    inbound = Inbound(key=conv, event_id=f"ev-{uuid.uuid4().hex}", kind=InboundKind.MESSAGE,
                      sender_id=f"user-{conversation}", text=text, route={"conversation_id": conversation})
    letter = await DeadLetterStore(redis, KEYS).park(
        conv, inbound.to_json(), error="OCS task poll failed", stage=DeadLetterStage.OCS,
        ocs={"session_id": "s-1" if task_id else "", "task_id": task_id},
        ledger={"turn": uuid.uuid4().hex, "state": ledger_state, "attempts": 5, "delivered": 0},
    )
    return letter.id


@contextlib.asynccontextmanager
async def served_in_process(app: Starlette) -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    """``app`` with its lifespan run, and ``client_from(address)``: a client whose requests reach
    the app from ``address`` (the peer a server would see), with no server, worker or simulator."""
    async with app.router.lifespan_context(app):

        def client_from(address: str, *, base_url: str = "http://gw") -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=app, client=(address, 40000))
            return httpx.AsyncClient(transport=transport, base_url=base_url, timeout=10)

        yield client_from


def login(stack: Stack, client: httpx.Client | None = None) -> httpx.Client:
    """A client holding a console session (logged in through the form, as a browser would)."""
    client = client or httpx.Client(base_url=stack.url, timeout=10)
    response = client.post("/admin/login", data={"token": ADMIN_TOKEN}, headers={"Origin": stack.url})
    assert response.status_code == 303, response.text
    return client


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "the page carries no CSRF token"
    return match.group(1)


def run(coro):  # type: ignore[no-untyped-def]
    """Run one coroutine to its end from a sync test, in a thread of its own (Playwright's sync
    API keeps an event loop running in the test's thread)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _with_redis(url: str, fn: Callable[[aioredis.Redis], object]) -> object:
    client = aioredis.Redis.from_url(url)
    try:
        return await fn(client)  # type: ignore[misc]
    finally:
        await client.aclose()


async def read_traffic_of(redis_url: str, channels: list[str]) -> dict[str, ChannelTraffic]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return await read_traffic(client, KEYS, channels)
    finally:
        await client.aclose()


def make_stuck_turn(stack: Stack, *, waited_s: float = 600.0, conversation: str = STUCK_CONVERSATION) -> str:
    """A turn whose owner froze: sent to OCS ``waited_s`` ago, its lease still held (so no sweeper
    adopts it) and its next step long overdue. Returns the conversation key."""
    conv = ConversationKey("hooks", conversation)
    now = time.time()
    inbound = Inbound(key=conv, event_id=f"ev-{uuid.uuid4().hex}", kind=InboundKind.MESSAGE, sender_id="u-stuck",
                      text="is anyone there?", route={"conversation_id": conversation}, received_at=now - waited_s)
    raw = inbound.to_json()
    r = stack.redis
    r.rpush(KEYS.inbox(conv), raw)
    r.hset(KEYS.turn(conv), mapping={"id": uuid.uuid4().hex, "inbound_raw": raw, "state": "sent",
                                     "task_id": "task-frozen", "attempts": "2", "next_at": repr(now - waited_s / 2)})
    r.set(KEYS.lease(conv), "frozen-owner", px=int(waited_s * 1000))
    r.zadd(KEYS.active, {str(conv): now - waited_s / 2})
    r.zadd(KEYS.waiting, {str(conv): now - waited_s})  # as the turn's begin records its head
    return str(conv)


def make_worker_beat(stack: Stack, *, worker_id: str = WORKER_ID, age_s: float = 1.0) -> None:
    now = time.time()
    heartbeat = Heartbeat(worker_id=worker_id, host="worker-a", pid=4242, queue="ocsgw", started_at=now - 3600,
                          beat_at=now - age_s, interval_s=5.0, housekeeping_at=now - age_s, conversations=3,
                          version="0.1.0")
    run(_with_redis(stack.redis_url, lambda r: beat(r, KEYS, heartbeat)))


def make_dead_letter(stack: Stack, conversation: str = "c-dlq", text: str = "hello") -> str:
    """A real failed delivery: the callback refuses the answer with a 400, the turn is parked."""
    stack.receiver.fail_with = [400]
    assert stack.say(conversation, text).status_code == 200
    wait_for(lambda: stack.redis.zcard(KEYS.dlq), what="the failed delivery in the dead-letter store")
    (letter_id,) = [m.decode() for m in stack.redis.zrange(KEYS.dlq, 0, -1)]
    return letter_id


def chromium_path() -> str | None:
    path = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    return path if os.access(path, os.X_OK) else None


@pytest.fixture
def browser_context() -> Iterator[object]:
    """A page in a real headless Chromium (Debian's package, driven by Playwright); fails with the
    reason when there is no Chromium (scripts/ensure_test_tools installs it)."""
    path = chromium_path()
    if path is None:
        wanted = os.environ.get("CHROMIUM", "/usr/bin/chromium")
        tool_missing(f"no Chromium at {wanted}: run scripts/ensure_test_tools (as root) for the browser tests")
    import tempfile

    # A test dependency (pyproject's [test] extra), imported here so the other console tests run
    # without loading it.
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="ocsgw-chromium-") as profile, sync_playwright() as pw:
        try:
            context = pw.chromium.launch_persistent_context(
                profile, executable_path=path, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": 1280, "height": 900},
            )
        except PlaywrightError as exc:  # a Chromium that cannot start here is the machine's problem
            tool_missing(f"Chromium at {path} did not start: {str(exc).splitlines()[0]}")
        try:
            yield context
        finally:
            context.close()


CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
