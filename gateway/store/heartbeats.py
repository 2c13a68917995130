"""Worker heartbeats: each worker process writes who it is and when its housekeeping last ran,
so the web process (``/admin``, ``ocs-gateway status``) and operators see which workers are alive
without reaching them. One hash for all workers; a beat older than its own ``stale_after_s`` is a
dead worker, and is dropped by whoever reads it after ``forget_after_s``."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import redis.asyncio as aioredis

from gateway.core.keys import Keys, as_text

__all__ = ["Heartbeat", "alive", "beat", "forget"]

#: A worker not heard from for this many of its own beat intervals is reported dead.
STALE_BEATS = 3
#: A dead worker's last beat is kept this long for the console, then dropped.
FORGET_AFTER_S = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One worker process's latest beat (wall-clock seconds)."""

    worker_id: str
    host: str
    pid: int
    queue: str
    started_at: float
    beat_at: float
    interval_s: float
    #: When housekeeping (sweep, lease renewal) last completed a tick; None before the first.
    housekeeping_at: float | None = None
    conversations: int = 0
    version: str = ""

    def age_s(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.beat_at)

    def is_alive(self, now: float | None = None) -> bool:
        return self.age_s(now) <= self.interval_s * STALE_BEATS


async def beat(redis: aioredis.Redis, keys: Keys, heartbeat: Heartbeat) -> None:
    """Publish ``heartbeat`` (overwrites this worker's previous one)."""
    await redis.hset(keys.workers, heartbeat.worker_id, json.dumps(asdict(heartbeat)))


async def forget(redis: aioredis.Redis, keys: Keys, worker_id: str) -> None:
    """Remove a worker that stopped cleanly."""
    await redis.hdel(keys.workers, worker_id)


async def alive(redis: aioredis.Redis, keys: Keys, *, now: float | None = None) -> list[Heartbeat]:
    """Every known worker, newest beat first (dead ones included, see ``Heartbeat.is_alive``);
    beats older than ``FORGET_AFTER_S`` are dropped on the way."""
    now = time.time() if now is None else now
    found: list[Heartbeat] = []
    expired: list[str] = []
    for worker_id, raw in (await redis.hgetall(keys.workers)).items():
        try:
            heartbeat = Heartbeat(**json.loads(as_text(raw)))
        except (TypeError, ValueError):
            expired.append(as_text(worker_id))  # written by another version: not ours to read
            continue
        if heartbeat.age_s(now) > FORGET_AFTER_S:
            expired.append(heartbeat.worker_id)
        else:
            found.append(heartbeat)
    if expired:
        await redis.hdel(keys.workers, *expired)
    return sorted(found, key=lambda h: h.beat_at, reverse=True)
