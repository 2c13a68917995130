"""A worker process's own HTTP listener: ``/metrics``, ``/livez`` and ``/readyz``
(``gateway/observe/health.py``) on ``worker.metrics_port``, so Prometheus scrapes what only the
worker measures (OCS calls, sends, turn times, housekeeping) and an orchestrator can tell a worker
whose housekeeping stopped from one that merely has nothing to do.

It is a small Starlette app under uvicorn in a thread of its own rather than
``prometheus_client.start_http_server``: readiness is an async question (a Redis PING, the
runner's last sweep) and the routes are the web process's, so both answer alike. Every Redis
call runs on the turn runner's loop, where the worker's clients live, so a runner whose loop is
stuck fails readiness rather than looking healthy from a loop of its own.

A worker is ready when Redis answers, its sweep completed within the last ``READY_SWEEPS`` sweep
intervals and its lease renewal within the last ``READY_SWEEPS`` renewal intervals (each at least
``READY_MIN_S``, so a busy CPU does not flap it). These are judged on ``time.monotonic()``: an
in-process question that a wall-clock step must not answer wrongly.

A worker is live while its turn runner runs: once the runner has ended on its own, ``/livez``
says 503 (the process is about to exit, ``workers/process.py``; a restart is what helps).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, TypeVar

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.core.config import WorkerTuning
from gateway.core.metrics import Metrics
from gateway.observe.gauges import GaugeRefresher
from gateway.observe.health import REDIS_TIMEOUT_S, Opened, health_routes, ping, refreshed

__all__ = ["RunnerProbe", "RunnerView", "WorkerHttp"]

log = logging.getLogger("ocsgw.worker.http")

#: Ready while the last sweep is at most this many sweep intervals old ...
READY_SWEEPS = 3
#: ... and never less than this many seconds.
READY_MIN_S = 2.0

_T = TypeVar("_T")


class RunnerView(Protocol):
    """What the probe reads of a running ``workers.runner.TurnRunner`` (the assembly hands the
    runner over once it runs: the listener starts first)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None: ...
    @property
    def services(self) -> Opened: ...
    @property
    def tuning(self) -> WorkerTuning: ...
    @property
    def started_mono(self) -> float: ...
    @property
    def swept_mono(self) -> float | None: ...
    @property
    def renewed_mono(self) -> float | None: ...


class RunnerProbe:
    """Readiness and metrics of a worker, asked on its runner's loop.

    Parameters:
        runner_of: the running runner, or None while the worker starts or after it stopped.
        failure_of: why the runner ended on its own, None while it runs (or was stopped).
    """

    def __init__(
        self, runner_of: Callable[[], RunnerView | None], failure_of: Callable[[], str | None] = lambda: None
    ) -> None:
        self._runner_of = runner_of
        self._failure_of = failure_of
        # This process's refresher, made for the runner's metrics on the first scrape.
        self._gauges: GaugeRefresher | None = None

    def dead(self) -> str | None:
        """None while live; else why not (the details are logged, not answered)."""
        failure = self._failure_of()
        if failure is None:
            return None
        log.error("liveness: %s", failure)
        return "turn runner stopped"

    def _runner(self) -> RunnerView | None:
        runner = self._runner_of()
        return runner if runner is not None and runner.loop is not None and not runner.loop.is_closed() else None

    async def _on_runner(self, runner: RunnerView, call: Coroutine[Any, Any, _T]) -> _T:
        loop = runner.loop
        assert loop is not None
        future = asyncio.run_coroutine_threadsafe(call, loop)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), REDIS_TIMEOUT_S + 1.0)
        finally:
            future.cancel()  # no-op once done; stops a call the stuck loop never ran

    async def problem(self) -> str | None:
        runner = self._runner()
        if runner is None:
            return "turn runner not running"
        try:
            reason = await self._on_runner(runner, ping(runner.services.redis))
        except (TimeoutError, RuntimeError):
            return "turn runner not answering"
        if reason is not None:
            return reason
        now = time.monotonic()
        limit = max(READY_SWEEPS * runner.tuning.sweep_interval_s, READY_MIN_S)
        swept = runner.swept_mono
        if swept is None or now - swept > limit:
            return "housekeeping not running"
        # Renewal runs every third of the lease TTL, its first tick one interval after the start.
        limit = max(READY_SWEEPS * runner.tuning.lease_ttl_s / 3, READY_MIN_S)
        renewed = runner.renewed_mono
        if now - (runner.started_mono if renewed is None else renewed) > limit:
            return "lease renewal not running"
        return None

    async def exposition(self) -> tuple[bytes, str]:
        runner = self._runner()
        if runner is None:
            return Metrics().render()  # starting or stopped: valid, and empty
        try:
            if self._gauges is None or self._gauges.metrics is not runner.services.metrics:
                self._gauges = GaugeRefresher(runner.services.metrics)
            return await self._on_runner(runner, refreshed(runner.services, self._gauges))
        except (TimeoutError, RuntimeError):
            return runner.services.metrics.render()  # counters as they are, gauges as they were


class WorkerHttp:
    """The listener: ``start()`` binds (port 0: any free one) and serves in a daemon thread."""

    def __init__(self, probe: RunnerProbe, *, host: str, port: int, metrics_token: str | None = None) -> None:
        async def livez(request: Request) -> Response:
            reason = probe.dead()
            if reason is not None:
                return JSONResponse({"status": "failed", "reason": reason}, status_code=503)
            return JSONResponse({"status": "ok"})

        # Ahead of the shared routes, so this /livez is the one that answers.
        app = Starlette(routes=[Route("/livez", livez, methods=["GET"]), *health_routes(lambda request: probe, metrics_token=metrics_token)])
        self._socket = socket.create_server((host, port), reuse_port=False)
        self.host = host
        self.port = int(self._socket.getsockname()[1])
        # log_config=None: uvicorn's loggers go through the root handlers and their redaction;
        # no access log, as a scrape every 15 s says nothing.
        self._server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False, log_config=None)
        )
        self._thread = threading.Thread(target=self._serve, name="ocsgw-worker-http", daemon=True)

    def _serve(self) -> None:
        self._server.run(sockets=[self._socket])

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the worker's HTTP listener did not start")
            time.sleep(0.02)
        log.info("worker metrics and health on port %d (/metrics, /livez, /readyz)", self.port)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()
