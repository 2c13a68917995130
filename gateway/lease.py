"""The conversation lease: one worker step at a time per conversation, across all workers.

A lease is a Redis key holding a random token with a TTL, so a worker killed with SIGKILL
frees it when the TTL lapses; only the holder of the token can renew or release it.
"""

from __future__ import annotations

import secrets

import redis.asyncio as aioredis

__all__ = ["Lease"]

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""


class Lease:
    """A held lease; get one with ``await Lease.acquire(...)``."""

    def __init__(self, redis: aioredis.Redis, key: str, token: str, ttl_ms: int) -> None:
        self._redis = redis
        self.key = key
        self.token = token
        self.ttl_ms = ttl_ms

    @classmethod
    async def acquire(cls, redis: aioredis.Redis, key: str, *, ttl_s: float) -> Lease | None:
        """Take the lease, or None when another step holds it."""
        token = secrets.token_hex(8)
        ttl_ms = max(int(ttl_s * 1000), 1)
        if await redis.set(key, token, nx=True, px=ttl_ms):
            return cls(redis, key, token, ttl_ms)
        return None

    async def renew(self) -> bool:
        """Extend the lease before a long call; False if it lapsed and someone else took it."""
        return bool(await self._redis.eval(_RENEW, 1, self.key, self.token, self.ttl_ms))  # type: ignore[misc]

    async def release(self) -> None:
        await self._redis.eval(_RELEASE, 1, self.key, self.token)  # type: ignore[misc]
