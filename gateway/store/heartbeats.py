"""Worker heartbeats: each worker process writes who it is and when its housekeeping last ran,
so the web process (``/admin``, ``ocs-gateway status``) and operators see which workers are alive
without reaching them. One hash for all workers; a beat older than ``STALE_BEATS`` of its own
intervals is a dead worker, and is dropped by whoever reads it after ``FORGET_AFTER_S``.

Times are Redis ``TIME`` (the worker stamps with its ``RedisClock``, readers pass Redis's ``now``),
so hosts whose clocks disagree still agree on who is alive. Beats are read tolerantly: a rolling
upgrade has old and new workers beating side by side, so fields this version does not know are
ignored, and a beat it cannot read is skipped, never deleted."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import redis.asyncio as aioredis

from gateway.core.keys import Keys, as_text

__all__ = ["Heartbeat", "LIVENESS_FLOOR_S", "WorkerState", "alive", "beat", "forget"]

#: A worker not heard from for this many of its own beat intervals is reported dead.
STALE_BEATS = 3
#: A worker whose last completed sweep is older than this many of its sweep intervals beats but
#: does not do its housekeeping (adoption, watches): reported ``stale``, not alive.
STALE_SWEEPS = 3
#: Neither judgement is made on less than this many seconds. A live process on a starved host
#: (two cores, the event loop behind by a few seconds) is late by seconds, not by intervals:
#: with a 0.25 s sweep, three intervals are 0.75 s, and a healthy worker looked dead under load.
LIVENESS_FLOOR_S = 10.0
#: A dead worker's last beat is kept this long for the console, then dropped.
FORGET_AFTER_S = 24 * 3600.0

#: ``alive``: beating and sweeping; ``stale``: beating, but its sweep stopped; ``dead``: silent.
WorkerState = Literal["alive", "stale", "dead"]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """One worker process's latest beat (Redis ``TIME`` seconds)."""

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
    #: The worker's ``sweep_interval_s``; 0 (a beat from before it was published) never goes stale.
    sweep_interval_s: float = 0.0
    #: Seconds from its last completed sweep (or its start) to this beat, on the worker's
    #: monotonic clock: immune to a wall-clock step between the two. None in older beats.
    housekeeping_age_s: float | None = None

    def age_s(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.beat_at)

    def is_alive(self, now: float | None = None) -> bool:
        """The worker beats (says nothing about its housekeeping: see ``state``)."""
        return self.age_s(now) <= max(self.interval_s * STALE_BEATS, LIVENESS_FLOOR_S)

    def housekeeping_stale(self, now: float | None = None) -> bool:
        """At its last beat, its last sweep (or, before the first, its start) was older than
        ``STALE_SWEEPS`` sweep intervals: it takes wake-ups, but adopts nothing and starts no watch.

        Judged at the beat, not at ``now``: a beat is up to ``interval_s`` old when read, and the
        sweep it reports older still, so measuring the sweep against the reader's clock called a
        worker stale between two beats whenever its beats were sparser than three sweeps (the
        defaults: a 10 s beat, a 3 s sweep). Whether the beat itself is recent is ``is_alive``'s
        question. ``now`` is accepted for symmetry with ``state``."""
        if self.sweep_interval_s <= 0:
            return False
        if self.housekeeping_age_s is not None:
            age = self.housekeeping_age_s
        else:
            age = self.beat_at - (self.started_at if self.housekeeping_at is None else self.housekeeping_at)
        return age > max(self.sweep_interval_s * STALE_SWEEPS, LIVENESS_FLOOR_S)

    def state(self, now: float | None = None) -> WorkerState:
        if not self.is_alive(now):
            return "dead"
        return "stale" if self.housekeeping_stale(now) else "alive"


_FIELDS = frozenset(f.name for f in fields(Heartbeat))


def _read(raw: bytes | str) -> tuple[Heartbeat | None, float | None]:
    """The beat, or None when this version cannot read it; and its ``beat_at`` when readable."""
    try:
        data: Any = json.loads(as_text(raw))
    except ValueError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    beat_at = data.get("beat_at")
    stamped = float(beat_at) if isinstance(beat_at, (int, float)) and not isinstance(beat_at, bool) else None
    try:
        # Fields a newer worker added are not ours to know; the ones we know must be there.
        return Heartbeat(**{k: v for k, v in data.items() if k in _FIELDS}), stamped
    except (TypeError, ValueError):
        return None, stamped


async def beat(redis: aioredis.Redis, keys: Keys, heartbeat: Heartbeat) -> None:
    """Publish ``heartbeat`` (overwrites this worker's previous one)."""
    await redis.hset(keys.workers, heartbeat.worker_id, json.dumps(asdict(heartbeat)))


async def forget(redis: aioredis.Redis, keys: Keys, worker_id: str) -> None:
    """Remove a worker that stopped cleanly."""
    await redis.hdel(keys.workers, worker_id)


async def alive(redis: aioredis.Redis, keys: Keys, *, now: float | None = None) -> list[Heartbeat]:
    """Every known worker, newest beat first (dead and stale ones included, see
    ``Heartbeat.state``); beats older than ``FORGET_AFTER_S`` are dropped on the way.

    ``now``: Redis ``TIME`` (the beats are stamped with it); when omitted it is asked for."""
    if now is None:
        seconds, micros = await redis.time()
        now = int(seconds) + int(micros) / 1e6
    found: list[Heartbeat] = []
    expired: list[str] = []
    for worker_id, raw in (await redis.hgetall(keys.workers)).items():
        heartbeat, beat_at = _read(raw)
        if beat_at is not None and now - beat_at > FORGET_AFTER_S:
            expired.append(as_text(worker_id))
        elif heartbeat is not None:
            found.append(heartbeat)
        # else: another version's beat we cannot read; its writer (or a reader who can) owns it
    if expired:
        await redis.hdel(keys.workers, *expired)
    return sorted(found, key=lambda h: h.beat_at, reverse=True)
