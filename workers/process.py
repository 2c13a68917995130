"""One worker process: the turn runner's event loop, and Dramatiq's threads that feed it."""

from __future__ import annotations

import logging
import signal
import threading

import dramatiq

from gateway.config import GatewayConfig
from gateway.redis_check import check_redis
from gateway.services import Services
from workers.actors import declare_actors
from workers.broker import QUEUE, make_broker
from workers.runner import RunnerThread, TurnRunner

__all__ = ["WorkerProcess", "run_worker"]

log = logging.getLogger("ocsgw.worker")

#: Dramatiq's consumers poll Redis when the queue is empty, backing off up to this (ms): an idle
#: worker then costs about one Redis call a second per consumer, and a message that arrives
#: after a quiet spell waits at most this long.
_IDLE_POLL_MS = 1000


class WorkerProcess:
    """The turn runner and Dramatiq's consumer threads, started and stopped as one."""

    def __init__(self, config: GatewayConfig, redis_url: str) -> None:
        self.config = config
        self.broker = make_broker(redis_url, with_asyncio=False)
        self.runner_thread = RunnerThread(lambda: _open_checked(config, redis_url), config.worker)
        declare_actors(self.broker, self._runner)
        self.worker = dramatiq.Worker(
            self.broker, queues={QUEUE}, worker_threads=config.worker.threads, worker_timeout=_IDLE_POLL_MS
        )

    def _runner(self) -> TurnRunner:
        runner = self.runner_thread.runner
        if runner is None:
            raise RuntimeError("the turn runner is not running")
        return runner

    @property
    def runner(self) -> TurnRunner:
        return self._runner()

    def start(self) -> None:
        self.runner_thread.start()
        self.runner_thread.wait_ready()
        self.worker.start()
        log.info("worker started: turn runner + %d Dramatiq threads on queue %s", self.worker.worker_threads, QUEUE)

    def stop(self, timeout_ms: int = 10_000) -> None:
        self.worker.stop(timeout=timeout_ms)  # no new hand-overs
        self.runner_thread.stop(timeout_ms / 1000)  # gives held conversations back
        self.broker.close()


async def _open_checked(config: GatewayConfig, redis_url: str) -> Services:
    """The services, once the Redis they use is known not to evict (or lose) what we store."""
    services = await Services.open(config, redis_url)
    try:
        await check_redis(services.redis, require_durable=config.require_durable_redis)
    except BaseException:
        await services.aclose()
        raise
    return services


def run_worker(config: GatewayConfig, redis_url: str) -> None:
    """Run until SIGTERM/SIGINT (what Procfile hosts send on shutdown)."""
    process = WorkerProcess(config, redis_url)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    process.start()
    stop.wait()
    log.info("worker stopping")
    process.stop()
