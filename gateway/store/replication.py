"""Acknowledged means replicated: a write whose loss would lose or repeat a message returns only
once ``durable_replicas`` replicas hold it (``WAIT``), and with ``durable_on_disk`` once it is in
the append-only file of the primary and of as many replicas (``WAITAOF``, Redis 7.2+).

Which writes: the edge's admission (a 200 follows it) and the worker's fenced writes
(``gateway/store/lease.py``: the ledger step recorded before an OCS send, the delivery marks).
``WAIT`` counts the writes of the connection it runs on, so a write and its ``WAIT`` share one
connection (``Redis.client()``: a client pinned to one pooled connection).

A ``WAIT`` that times out short of the count raises ``NotReplicated``, a ``RedisError``: the
caller's path for "Redis did not take it" — the edge answers 503 (the platform retries; the
admission is idempotent by event id, so the retry is no duplicate), a worker retries the step
(as after a crash between the write and the next call, which the ledger already survives). The
write itself stays on the primary: it may reach the replicas later, or be lost in a failover,
but nobody was told it was safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.store.lua import LuaScript

__all__ = ["Durability", "NO_WAIT", "NotReplicated"]


class NotReplicated(RedisError):
    """Raised when fewer replicas than required confirmed a write in time: it must not be
    acknowledged (503), or the step that made it is retried."""


@dataclass(frozen=True, slots=True)
class Durability:
    """``replicas``: how many replicas must hold a write before it counts; ``timeout_ms``: how
    long to wait for them; ``on_disk``: also wait for the append-only files (``WAITAOF``)."""

    replicas: int = 0
    timeout_ms: int = 1000
    on_disk: bool = False

    @property
    def waits(self) -> bool:
        return self.replicas > 0 or self.on_disk

    async def run(self, script: LuaScript, redis: aioredis.Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """``script(redis, keys, args)``, returning only once the write is as durable as required.

        Raises:
            NotReplicated: the replicas (or the disks) did not confirm in time.
            RedisError, OSError: Redis did not take it.
        """
        if not self.waits:
            return await script(redis, keys, args)
        async with redis.client() as pinned:
            result = await script(pinned, keys, args)
            await self.confirm(pinned)
        return result

    async def confirm(self, pinned: aioredis.Redis) -> None:
        """Wait for what ``pinned``'s connection wrote.

        Raises:
            NotReplicated: not confirmed in time.
        """
        if self.on_disk:
            local, replicas = await pinned.execute_command("WAITAOF", 1, self.replicas, self.timeout_ms)  # type: ignore[no-untyped-call]
            if int(local) < 1 or int(replicas) < self.replicas:
                raise NotReplicated(
                    f"WAITAOF: on the primary's disk {int(local)}, on {int(replicas)} of {self.replicas} replicas' "
                    f"disks within {self.timeout_ms} ms"
                )
            return
        confirmed = int(await pinned.wait(self.replicas, self.timeout_ms))
        if confirmed < self.replicas:
            raise NotReplicated(f"WAIT: {confirmed} of {self.replicas} replicas confirmed within {self.timeout_ms} ms")


NO_WAIT = Durability()
