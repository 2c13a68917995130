"""The start-up check refuses a Redis that evicts keys, warns loudly about one that can lose
acknowledged messages (or refuses it when ``require_durable_redis``), and says so when it cannot
look."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from gateway.edge.app import create_app
from gateway.store.embedded_redis import EmbeddedRedis
from gateway.store.redis_check import RedisVerdict, UnsafeRedis, check_redis, read_facts
from gateway.store.replication import Durability
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


async def _check(
    url: str, *, require_durable: bool = False, durability: Durability | None = None, **client: str
) -> RedisVerdict:
    connection = aioredis.Redis.from_url(url, **client)
    try:
        return await check_redis(connection, require_durable=require_durable, durability=durability or Durability())
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
        assert verdict.config_refused is not None and verdict.config_refused.kind == "noperm"
        assert any("cannot verify" in r.message and "NOPERM" in r.message for r in caplog.records)
        with pytest.raises(UnsafeRedis, match="cannot verify"):
            await _check(redis_url, require_durable=True, username="managed", password="pw")
    finally:
        redis_client.acl_deluser("managed")


async def test_the_edge_refuses_to_start_on_an_evicting_redis(evicting_redis: str) -> None:
    app = create_app(stack_config(NOWHERE, NOWHERE), evicting_redis)
    with pytest.raises(UnsafeRedis, match="refusing to start"):
        async with app.router.lifespan_context(app):
            pass


@pytest.fixture
def managed_user(redis_client: redis.Redis) -> Iterator[dict[str, str]]:
    """A managed Redis's user: everything but CONFIG."""
    redis_client.acl_setuser("managed", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                             commands=["+@all", "-config"])
    yield {"username": "managed", "password": "pw"}
    redis_client.acl_deluser("managed")


async def test_without_config_the_check_relies_on_durable_replicas_and_says_so(
    redis_url: str, managed_user: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="ocsgw.redis"):
        verdict = await _check(redis_url, require_durable=True, durability=Durability(replicas=1), **managed_user)
    assert verdict.durable_ack  # require_durable_redis is met by the replicas
    assert not verdict.warnings
    assert any("rely on durable_replicas: 1" in r.message for r in caplog.records)
    # This test server has no replica: said, as a matter of availability, not refused.
    assert any("1 replica" in n or "0 replica" in n for n in verdict.notices)


async def test_without_config_an_evicting_policy_is_still_refused_from_info(
    redis_url: str, redis_client: redis.Redis, managed_user: dict[str, str]
) -> None:
    redis_client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with pytest.raises(UnsafeRedis, match="maxmemory-policy is 'allkeys-lru'"):
            await _check(redis_url, durability=Durability(replicas=1), **managed_user)
    finally:
        redis_client.config_set("maxmemory-policy", "noeviction")


@pytest.fixture
def config_renamed(tmp_path: Path) -> Iterator[str]:
    with EmbeddedRedis(tmp_path / "redis", persist=False, extra_args=("--rename-command", "CONFIG", "")) as url:
        yield url


async def test_a_disabled_config_command_is_named_as_a_managed_service(config_renamed: str) -> None:
    verdict = await _check(config_renamed)
    assert verdict.config_refused is not None and verdict.config_refused.kind == "disabled"
    assert any("CONFIG GET is not allowed on this Redis (a managed service?" in w for w in verdict.warnings)


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[str]:
    with EmbeddedRedis(tmp_path / "redis", persist=False, extra_args=("--requirepass", "s3cret")) as url:
        yield url


async def test_no_password_is_named_noauth_with_its_fix(password_redis: str) -> None:
    with pytest.raises(UnsafeRedis, match=r"NOAUTH.*Fix: put it in redis_url"):
        await _check(password_redis)


async def test_a_wrong_password_is_named_wrongpass_with_its_fix(password_redis: str) -> None:
    with pytest.raises(UnsafeRedis, match=r"WRONGPASS.*Fix: check the password"):
        await _check(password_redis, password="wrong")
    assert (await _check(password_redis, password="s3cret")).config_refused is None


async def test_protected_mode_is_named_denied_with_its_fix() -> None:
    # Redis answers DENIED only to clients from other hosts, which a loopback test cannot be:
    # a one-line server on loopback sends the reply Redis sends there, word for word.
    reply = (b"-DENIED Redis is running in protected mode because protected mode is enabled and no password "
             b"is set for the default user.\r\n")

    async def deny(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(deny, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(UnsafeRedis, match=r"protected mode.*Fix: give Redis a password"):
            await _check(f"redis://127.0.0.1:{port}/0")
    finally:
        server.close()


async def test_durable_on_disk_needs_waitaof(redis_url: str, redis_client: redis.Redis) -> None:
    connection = aioredis.Redis.from_url(redis_url)
    try:
        version = (await read_facts(connection)).version
    finally:
        await connection.aclose()
    on_disk = Durability(replicas=0, on_disk=True)
    if version < (7, 2):
        with pytest.raises(UnsafeRedis, match="WAITAOF"):
            await _check(redis_url, durability=on_disk)
    else:
        assert (await _check(redis_url, durability=on_disk)).refusals == ()
