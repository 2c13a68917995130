"""The start-up check refuses a Redis that evicts keys, warns loudly about one that can lose
acknowledged messages (or refuses it when ``require_durable_redis``), and says so when it cannot
look."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from gateway.edge.app import create_app
from gateway.store.embedded_redis import EmbeddedRedis
from gateway.store.redis_check import RedisVerdict, UnsafeRedis, check_redis
from tests.conftest import stack_config

NOWHERE = "http://127.0.0.1:9"


@pytest.fixture
def evicting_redis(redis_url: str, redis_client: redis.Redis) -> Iterator[str]:
    redis_client.config_set("maxmemory-policy", "allkeys-lru")
    yield redis_url
    redis_client.config_set("maxmemory-policy", "noeviction")


@pytest.fixture
def durable_redis(tmp_path: Path) -> Iterator[str]:
    with EmbeddedRedis(tmp_path / "redis") as url:
        yield url


async def _check(url: str, *, require_durable: bool = False, **client: str) -> RedisVerdict:
    connection = aioredis.Redis.from_url(url, **client)
    try:
        return await check_redis(connection, require_durable=require_durable)
    finally:
        await connection.aclose()


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-ttl"])
async def test_an_evicting_policy_is_refused_naming_the_fix(redis_url: str, redis_client: redis.Redis, policy: str) -> None:
    redis_client.config_set("maxmemory-policy", policy)
    try:
        with pytest.raises(UnsafeRedis, match="maxmemory-policy noeviction"):
            await _check(redis_url)
    finally:
        redis_client.config_set("maxmemory-policy", "noeviction")


async def test_redis_without_aof_starts_with_a_loud_warning(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ocsgw.redis"):
        verdict = await _check(redis_url)
    assert not verdict.durable_ack
    assert any("ACKNOWLEDGED MESSAGES CAN BE LOST" in r.message and "appendfsync always" in r.message for r in caplog.records)


async def test_require_durable_redis_refuses_redis_without_aof(redis_url: str) -> None:
    with pytest.raises(UnsafeRedis, match=r"appendonly no.*require_durable_redis"):
        await _check(redis_url, require_durable=True)


async def test_aof_with_fsync_always_passes_silently(durable_redis: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ocsgw.redis"):
        verdict = await _check(durable_redis, require_durable=True)
    assert verdict.durable_ack
    assert not caplog.records


async def test_aof_with_fsync_everysec_warns(durable_redis: str, caplog: pytest.LogCaptureFixture) -> None:
    with redis.Redis.from_url(durable_redis) as client:
        client.config_set("appendfsync", "everysec")
    with caplog.at_level(logging.WARNING, logger="ocsgw.redis"):
        await _check(durable_redis)
    assert any("appendfsync everysec" in r.message for r in caplog.records)


async def test_skipping_fsync_during_aof_rewrites_warns(durable_redis: str, caplog: pytest.LogCaptureFixture) -> None:
    with redis.Redis.from_url(durable_redis) as client:
        client.config_set("no-appendfsync-on-rewrite", "yes")
    with caplog.at_level(logging.WARNING, logger="ocsgw.redis"):
        verdict = await _check(durable_redis)
    assert not verdict.durable_ack
    assert any("no-appendfsync-on-rewrite" in r.message for r in caplog.records)


async def test_a_redis_that_forbids_config_is_reported_as_unverifiable(
    redis_url: str, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # A managed Redis: this user may do everything but CONFIG.
    redis_client.acl_setuser("managed", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                             commands=["+@all", "-config"])
    try:
        with caplog.at_level(logging.WARNING, logger="ocsgw.redis"):
            verdict = await _check(redis_url, username="managed", password="pw")
        assert verdict.settings is None
        assert any("cannot verify" in r.message for r in caplog.records)
        with pytest.raises(UnsafeRedis, match="cannot verify"):
            await _check(redis_url, require_durable=True, username="managed", password="pw")
    finally:
        redis_client.acl_deluser("managed")


async def test_the_edge_refuses_to_start_on_an_evicting_redis(evicting_redis: str) -> None:
    app = create_app(stack_config(NOWHERE, NOWHERE), evicting_redis)
    with pytest.raises(UnsafeRedis, match="refusing to start"):
        async with app.router.lifespan_context(app):
            pass
