"""The budget gauges report what the admission gate (gateway.ocs.budget) enforces, read from a
real Redis: the origin's sliding estimate across a window boundary, the previous aligned window
for sessions and starts, and the busiest session found through the gate's index however large the
keyspace is (review R2 #1 and #2)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.core.config import GatewayConfig
from gateway.core.keys import Keys
from gateway.core.metrics import Metrics
from gateway.observe.gauges import GaugeRefresher
from gateway.ocs.budget import Priority, RequestBudget
from tests.conftest import stack_config

_NOWHERE = "http://127.0.0.1:9"


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def _config(**budget: Any) -> GatewayConfig:
    return stack_config(_NOWHERE, _NOWHERE, bots={"demo": {"budget": budget}})


async def _redis_ms(client: aioredis.Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def _until_ms(client: aioredis.Redis, at_ms: int) -> None:
    """Wait (by Redis TIME, the gate's clock) until ``at_ms``."""
    while await _redis_ms(client) < at_ms:
        await asyncio.sleep(0.01)


async def _window_start_ms(client: aioredis.Redis, window_s: int, room_s: float) -> int:
    """The start of a window with at least ``room_s`` left (waiting for the next if needed)."""
    window_ms = window_s * 1000
    now = await _redis_ms(client)
    start = now - now % window_ms
    if start + window_ms - now < room_s * 1000:
        start += window_ms
        await _until_ms(client, start)
    return start


async def _gauges(client: aioredis.Redis, config: GatewayConfig) -> tuple[dict[str, float], int, int]:
    """The budget gauges of one refresh, and Redis TIME (ms) just before and after it."""
    metrics = Metrics()
    before = await _redis_ms(client)
    await GaugeRefresher(metrics).refresh(client, Keys(), config)
    after = await _redis_ms(client)
    used = {scope: metrics.ocs_budget_used.labels("demo", scope)._value.get() for scope in ("origin", "session", "starts")}
    return used, before, after


async def _book(budget: RequestBudget, config: GatewayConfig, n: int, **where: Any) -> None:
    base_url = str(config.bots["demo"].base_url)
    for _ in range(n):
        grant = await budget.acquire(bot="demo", base_url=base_url, priority=Priority.WAITING, **where)
        assert grant.granted, grant


async def test_origin_gauge_stays_at_a_steady_loads_level_across_a_window_boundary(aredis: aioredis.Redis) -> None:
    # A steady 90 % load: 90 booked over the previous window, and this window's share so far.
    window_s, limit, load = 2, 100, 90
    config = _config(requests_per_window=limit, window_s=window_s)
    budget = RequestBudget(aredis, Keys(), lambda bot: config.bots[bot].budget)
    previous = await _window_start_ms(aredis, window_s, 1.0)
    await _book(budget, config, load)
    start = previous + window_s * 1000
    await _until_ms(aredis, start + 500)  # a quarter into the next window
    elapsed = await _redis_ms(aredis) - start
    booked_now = round(load * elapsed / (window_s * 1000))
    await _book(budget, config, booked_now)
    used, before, after = await _gauges(aredis, config)
    assert after < start + window_s * 1000, "the machine was too slow to stay in one window"

    def sliding(at_ms: int) -> float:
        return booked_now + load * (1 - (at_ms - start) / (window_s * 1000))

    # Exactly the gate's estimate at the moment of the read (an aligned count would show ~22).
    assert sliding(after) - 1e-6 <= used["origin"] <= sliding(before) + 1e-6
    assert used["origin"] / limit > 0.8


async def test_origin_gauge_reads_the_limit_when_the_gate_refuses(aredis: aioredis.Redis) -> None:
    window_s, limit = 2, 50
    config = _config(requests_per_window=limit, window_s=window_s)
    budget = RequestBudget(aredis, Keys(), lambda bot: config.bots[bot].budget)
    previous = await _window_start_ms(aredis, window_s, 1.0)
    await _book(budget, config, limit)
    start = previous + window_s * 1000
    await _until_ms(aredis, start + 300)
    base_url = str(config.bots["demo"].base_url)
    while (await budget.acquire(bot="demo", base_url=base_url, priority=Priority.WAITING)).granted:
        pass  # the gate grants only what the previous window's fading share leaves
    used, _, after = await _gauges(aredis, config)
    assert after < start + window_s * 1000, "the machine was too slow to stay in one window"
    # Refused means the estimate reached the limit; it fades by limit/window_ms per ms since.
    assert used["origin"] < limit + 1  # the last grant may take it just past the limit
    assert used["origin"] >= limit - 1 - limit * (after - start - 300) / (window_s * 1000) - 1


async def test_session_and_start_gauges_keep_the_previous_windows_count_after_a_boundary(aredis: aioredis.Redis) -> None:
    window_s = 2
    config = _config(window_s=window_s)
    budget = RequestBudget(aredis, Keys(), lambda bot: config.bots[bot].budget)
    previous = await _window_start_ms(aredis, window_s, 1.0)
    await _book(budget, config, 7, session_id="s-hot")
    await _book(budget, config, 3, start_channel="hooks")
    await _until_ms(aredis, previous + window_s * 1000 + 100)
    await _book(budget, config, 2, session_id="s-other")
    used, _, after = await _gauges(aredis, config)
    assert after < previous + 2 * window_s * 1000, "the machine was too slow to stay in one window"
    assert (used["session"], used["starts"]) == (7, 3)  # not 2 and 0: the load did not stop


async def test_a_session_near_its_limit_is_reported_among_100k_unrelated_keys(aredis: aioredis.Redis) -> None:
    config = _config(requests_per_window=100_000, window_s=1_000_000)
    budget = RequestBudget(aredis, Keys(), lambda bot: config.bots[bot].budget)
    async with aredis.pipeline(transaction=False) as pipe:
        for i in range(100_000):
            pipe.set(f"ocsgw:dedup:e{i}", 1)
        await pipe.execute()
    for i in range(300):
        await _book(budget, config, 1 + i % 3, session_id=f"s-{i}")
    await _book(budget, config, 291, session_id="s-hot")  # 97 % of 300
    await aredis.config_resetstat()
    used, _, _ = await _gauges(aredis, config)
    assert used["session"] == 291
    stats = await aredis.info("commandstats")
    assert "cmdstat_scan" not in stats and "cmdstat_keys" not in stats
    rows = [row for row in await budget.usage() if row.scope == "session"]
    assert (rows[0].name, rows[0].used, rows[0].limit) == ("s-hot", 291, 300)
    assert len(rows) == 301
