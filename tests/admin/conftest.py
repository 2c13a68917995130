"""Fixtures for the /admin console's tests: a gateway stack with ``admin_token`` set, a logged-in
httpx client, and the states an operator must see (a stuck turn, a dead letter, a worker)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette

from gateway.core.config import Secret
from gateway.core.keys import Keys
from gateway.core.models import ConversationKey, Inbound, InboundKind
from gateway.store.heartbeats import Heartbeat, beat
from gateway.store.traffic import ChannelTraffic, read_traffic
from tests.conftest import Stack, wait_for
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
