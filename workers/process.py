"""One worker process: Dramatiq's worker, whose middleware runs the turn runner on its event
loop (``workers/lifecycle.py``), and whose threads hand it the queue's conversations."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Awaitable, Callable

import dramatiq

from gateway.core.config import GatewayConfig
from gateway.core.errors import ConfigError
from gateway.store.dramatiq_queue import require_tested_dramatiq
from workers.actors import declare_actors
from workers.broker import QUEUE, consume_no_delay_queue, make_broker
from workers.context import WorkerServices
from workers.lifecycle import RunnerMiddleware, RunnerNotStarted
from workers.runner import TurnRunner

__all__ = ["WorkerProcess", "run_worker", "supervise"]

log = logging.getLogger("ocsgw.worker")

#: Dramatiq's consumers poll Redis when the queue is empty, backing off up to this (ms): an idle
#: worker then costs about one Redis call a second per consumer, and a message that arrives
#: after a quiet spell waits at most this long.
_IDLE_POLL_MS = 1000
#: How often the main thread looks whether the turn runner still runs.
_WATCH_S = 0.5


class WorkerProcess:
    """Dramatiq's worker and the turn runner, started and stopped as one: ``Worker.start`` boots
    the runner (``RunnerMiddleware.before_worker_boot``) before its threads, and ``Worker.stop``
    hands the conversations back after them."""

    def __init__(self, config: GatewayConfig, redis_url: str, open_services: Callable[[], Awaitable[WorkerServices]]) -> None:
        """``open_services`` opens this process's services on the runner's event loop (the
        assembly, ``gateway.services.worker_process``, passes ``Services.open_checked``)."""
        # The edge writes the queue's messages in Dramatiq's layout; this worker reads them.
        require_tested_dramatiq()
        self.config = config
        self.broker = make_broker(config, redis_url)
        self.life = RunnerMiddleware(open_services, config.worker)
        self.broker.add_middleware(self.life)
        declare_actors(self.broker, self.life)
        consume_no_delay_queue(self.broker)
        self.worker = dramatiq.Worker(
            self.broker, queues={QUEUE}, worker_threads=config.worker.threads, worker_timeout=_IDLE_POLL_MS
        )

    @property
    def runner(self) -> TurnRunner:
        runner = self.life.runner
        if runner is None:
            raise RuntimeError("the turn runner is not running")
        return runner

    @property
    def failure(self) -> str | None:
        """Why the turn runner ended on its own, None while it runs (or after a clean stop)."""
        return self.life.failure

    def start(self) -> None:
        """Raises:
        ConfigError: the services refused the configuration (e.g. an evicting Redis).
        RunnerNotStarted: the turn runner did not start for another reason.
        """
        try:
            self.worker.start()
        except RunnerNotStarted as exc:
            if isinstance(exc.__cause__, ConfigError):
                raise exc.__cause__ from None  # one line for the operator, as every configuration error
            raise
        log.info("worker started: turn runner + %d Dramatiq threads on queue %s", self.worker.worker_threads, QUEUE)

    def stop(self, timeout_ms: int = 10_000) -> None:
        # Closes the runner to new conversations, stops the threads, then hands the held ones back.
        self.worker.stop(timeout=timeout_ms)
        self.life.stop()  # the same, if the worker never booted
        self.broker.close()
        self.broker.client.close()


def supervise(process: WorkerProcess, stop: threading.Event) -> int:
    """Start ``process`` and run it until ``stop`` is set (exit status 0) or its turn runner ends
    on its own (1). Without its runner the process would only take wake-ups and fail them, so
    Dramatiq is stopped too and the status tells the supervisor to restart it."""
    process.start()
    while not stop.wait(_WATCH_S):
        failure = process.failure
        if failure is not None:
            log.error("worker exiting: %s; a restart brings it back", failure)
            process.stop()
            return 1
    log.info("worker stopping")
    process.stop()
    return 0


def run_worker(process: WorkerProcess) -> None:
    """Run ``process`` until SIGTERM/SIGINT (what Procfile hosts send on shutdown).

    Raises:
        SystemExit: status 1, when the turn runner ended on its own (``supervise``).
    """
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    status = supervise(process, stop)
    if status:
        raise SystemExit(status)
