"""Running the workers of one process: Dramatiq's threads, the actors, housekeeping."""

from __future__ import annotations

import logging
import signal
import threading

import dramatiq
from dramatiq.asyncio import get_event_loop_thread
from dramatiq.middleware import Middleware

from gateway.config import GatewayConfig
from gateway.keys import Keys
from workers.actors import declare_actors
from workers.broker import QUEUE, make_broker
from workers.housekeeping import Housekeeping
from workers.runtime import WorkerRuntime

__all__ = ["WorkerProcess", "run_worker"]

log = logging.getLogger("ocsgw.worker")


class _CloseServices(Middleware):
    """Closes the runtime's connections on Dramatiq's event loop before that loop stops.

    Added after the AsyncIO middleware, so its ``after_worker_shutdown`` runs first (Dramatiq
    runs after-hooks in reverse order).
    """

    def __init__(self, runtime: WorkerRuntime) -> None:
        self.runtime = runtime

    def after_worker_shutdown(self, broker: object, worker: object) -> None:
        loop_thread = get_event_loop_thread()
        if loop_thread is not None:
            try:
                loop_thread.run_coroutine(self.runtime.aclose())
            except Exception:  # noqa: BLE001 - shutting down: log, never block the exit
                log.warning("closing worker services failed", exc_info=True)


class WorkerProcess:
    """Dramatiq worker threads plus housekeeping, started and stopped as one."""

    def __init__(self, config: GatewayConfig, redis_url: str) -> None:
        self.broker = make_broker(redis_url)
        self.runtime = WorkerRuntime(config, redis_url, self.broker)
        self.broker.add_middleware(_CloseServices(self.runtime))
        declare_actors(self.broker, self.runtime)
        self.worker = dramatiq.Worker(self.broker, queues={QUEUE}, worker_threads=config.worker.threads, worker_timeout=100)
        self.housekeeping = Housekeeping(redis_url=redis_url, broker=self.broker, tuning=config.worker, keys=Keys())

    def start(self) -> None:
        self.worker.start()
        self.housekeeping.start()
        log.info("worker started: %d threads on queue %s", self.worker.worker_threads, QUEUE)

    def stop(self, timeout_ms: int = 10_000) -> None:
        self.housekeeping.stop()
        self.worker.stop(timeout=timeout_ms)
        self.broker.close()


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
