"""The one way a process gets a Redis client: a plain server (``redis://``, ``rediss://``) or the
master of a Sentinel group (``redis_sentinel``), with the TLS files and ACL user of the config.

Every client the gateway builds comes from here — the web process, the workers and their
Dramatiq broker, the Telegram poller (it uses the web process's), the CLI — so all of them follow
the same primary. A Sentinel-managed pool asks the sentinels for the master's address whenever
it opens a connection; after a failover the connections to the old primary fail (it is dead, or
it answers ``READONLY`` once demoted: redis-py's Sentinel connection then drops itself and
raises ``ConnectionError``), and the next connection goes to the promoted replica. A caller sees
one ``RedisError`` for the command that was in flight: the edge answers 503 (the platform
retries), a worker retries the step. Nothing here retries a write itself: only the caller knows
whether the write is safe to repeat.

A plain client on a server that turned into a replica keeps getting ``READONLY`` (a
``ResponseError``, so a ``RedisError`` too): every write is refused and retried, none is lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.sentinel as asentinel
import redis.sentinel as ssentinel

from gateway.core.config import GatewayConfig, RedisSentinelConfig, RedisTls

__all__ = ["async_redis", "describe_redis", "sync_redis"]

#: A sentinel that does not answer within this is skipped for the next one: a Sentinel down
#: costs this much per master lookup, not a socket timeout.
_SENTINEL_TIMEOUT_S = 1.0


class _BlockingSentinelPool(asentinel.SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """A Sentinel-managed pool that, past its size, makes a caller wait for a connection (as the
    plain ``BlockingConnectionPool`` does) instead of failing at once."""


def describe_redis(config: GatewayConfig, url: str | None) -> str:
    """Where the process's Redis is, for logs: no password."""
    sentinel = config.redis_sentinel
    if sentinel is not None:
        return f"Sentinel master {sentinel.master_name!r} via {', '.join(sentinel.sentinels)}"
    if not url:
        return "no Redis"
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}:{parts.port or 6379}{parts.path or '/0'}"


def async_redis(config: GatewayConfig, url: str | None, *, blocking: bool = False, **options: Any) -> aioredis.Redis:
    """An asyncio client for the configured Redis. ``blocking``: past ``max_connections`` a
    caller waits up to ``timeout`` for a connection instead of failing. ``options`` are
    redis-py connection and pool options (``socket_timeout``, ``max_connections``, ...).

    Raises:
        ValueError: no Redis is configured.
    """
    sentinel = config.redis_sentinel
    if sentinel is not None:
        manager = asentinel.Sentinel(  # type: ignore[no-untyped-call]  # redis-py's Sentinel is untyped
            sentinel.addresses(), sentinel_kwargs=_sentinel_kwargs(sentinel, config.redis_tls),
            **_data_kwargs(sentinel, config.redis_tls),
        )
        pool_class = _BlockingSentinelPool if blocking else asentinel.SentinelConnectionPool
        client: aioredis.Redis = manager.master_for(
            sentinel.master_name, redis_class=aioredis.Redis, connection_pool_class=pool_class, **options
        )
        return client
    if not url:
        raise ValueError("no Redis: set REDIS_URL (or redis_url, or redis_sentinel, in the config)")
    options = {**_url_tls_kwargs(url, config.redis_tls), **options}
    pool_class_plain = aioredis.BlockingConnectionPool if blocking else aioredis.ConnectionPool
    # from_pool: closing the client disconnects the pool (a client given a pool otherwise leaves it open).
    return aioredis.Redis.from_pool(pool_class_plain.from_url(url, **options))


def sync_redis(config: GatewayConfig, url: str | None, **options: Any) -> redis.Redis:
    """A blocking client for the configured Redis (Dramatiq's broker, tools).

    Raises:
        ValueError: no Redis is configured.
    """
    sentinel = config.redis_sentinel
    if sentinel is not None:
        manager = ssentinel.Sentinel(  # type: ignore[no-untyped-call]  # redis-py's sync Sentinel is untyped
            sentinel.addresses(), sentinel_kwargs=_sentinel_kwargs(sentinel, config.redis_tls),
            **_data_kwargs(sentinel, config.redis_tls),
        )
        sync_client: redis.Redis = manager.master_for(sentinel.master_name, redis_class=redis.Redis, **options)  # type: ignore[no-untyped-call]
        return sync_client
    if not url:
        raise ValueError("no Redis: set REDIS_URL (or redis_url, or redis_sentinel, in the config)")
    return redis.Redis.from_url(url, **{**_url_tls_kwargs(url, config.redis_tls), **options})


def _tls_kwargs(tls: RedisTls | None) -> dict[str, Any]:
    if tls is None:
        return {}
    found: dict[str, Any] = {"ssl_check_hostname": tls.check_hostname}
    if tls.ca_file:
        found["ssl_ca_certs"] = tls.ca_file
    if tls.cert_file:
        found["ssl_certfile"] = tls.cert_file
        found["ssl_keyfile"] = tls.key_file
    return found


def _url_tls_kwargs(url: str, tls: RedisTls | None) -> dict[str, Any]:
    # redis-py takes ssl_* options only for an SSL connection: a redis:// URL with TLS files is
    # a configuration mistake the URL wins (no TLS), so they are not passed.
    return _tls_kwargs(tls) if url.startswith("rediss://") else {}


def _data_kwargs(sentinel: RedisSentinelConfig, tls: RedisTls | None) -> dict[str, Any]:
    """How to connect to the primary the sentinels name."""
    found: dict[str, Any] = {"db": sentinel.db}
    if sentinel.username:
        found["username"] = sentinel.username
    if sentinel.password is not None:
        found["password"] = sentinel.password.reveal()
    if sentinel.tls:
        found.update(ssl=True, **_tls_kwargs(tls))
    return found


def _sentinel_kwargs(sentinel: RedisSentinelConfig, tls: RedisTls | None) -> Mapping[str, Any]:
    """How to connect to the sentinels themselves."""
    found: dict[str, Any] = {"socket_timeout": _SENTINEL_TIMEOUT_S, "socket_connect_timeout": _SENTINEL_TIMEOUT_S}
    if sentinel.sentinel_username:
        found["username"] = sentinel.sentinel_username
    if sentinel.sentinel_password is not None:
        found["password"] = sentinel.sentinel_password.reveal()
    if sentinel.tls:
        found.update(ssl=True, **_tls_kwargs(tls))
    return found
