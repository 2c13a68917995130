"""The housekeeping loop of a worker process: rescue stalled conversations and start the
bot-initiated-message polls that are due. One process does it per tick (a short Redis lock),
however many workers run."""

from __future__ import annotations

import logging
import threading
import time

import redis

from gateway.config import WorkerTuning
from gateway.keys import Keys, as_text
from workers.broker import ADVANCE, POLL_SESSION, enqueue

__all__ = ["Housekeeping"]

log = logging.getLogger("ocsgw.housekeeping")


class Housekeeping(threading.Thread):
    def __init__(self, *, redis_url: str, broker: object, tuning: WorkerTuning, keys: Keys) -> None:
        super().__init__(name="ocsgw-housekeeping", daemon=True)
        self._redis = redis.Redis.from_url(redis_url, socket_timeout=5)
        self._broker = broker
        self._tuning = tuning
        self._keys = keys
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        while not self._stop_event.wait(self._tuning.sweep_interval_s):
            try:
                self.tick()
            except redis.RedisError as exc:
                log.warning("housekeeping skipped a tick: %s", exc)
        self._redis.close()

    def tick(self) -> None:
        interval_ms = max(int(self._tuning.sweep_interval_s * 900), 100)
        if not self._redis.set(self._keys.custom("housekeeping"), "1", nx=True, px=interval_ms):
            return
        now = time.time()
        grace = self._tuning.stall_grace_s
        # A conversation whose next step is overdue lost its scheduled message (a killed worker
        # held it); give it a new one and push its deadline out, so it is not rescued twice.
        for raw in self._redis.zrangebyscore(self._keys.active, "-inf", now - grace, start=0, num=500):
            conv = as_text(raw)
            self._redis.zadd(self._keys.active, {conv: now + grace}, xx=True)
            log.info("rescuing stalled conversation %s", conv)
            enqueue(self._broker, ADVANCE, conv)  # type: ignore[arg-type]
        budget = self._tuning.botpoll_budget_per_tick
        for raw in self._redis.zrangebyscore(self._keys.botpoll, "-inf", now, start=0, num=budget):
            conv = as_text(raw)
            self._redis.zadd(self._keys.botpoll, {conv: now + self._tuning.botpoll_interval_s}, xx=True)
            enqueue(self._broker, POLL_SESSION, conv)  # type: ignore[arg-type]
