"""A worker's own HTTP listener (``worker.metrics_port``): ``/metrics`` parses, ``/livez``
answers while the process serves, and ``/readyz`` says 503 while Redis is away or while its
housekeeping has stopped, 200 once both are back. Off unless configured."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.core.config import METRICS_PORT_ENV, WorkerTuning
from gateway.services import worker_process
from gateway.store.embedded_redis import EmbeddedRedis
from tests.conftest import SimServer, Stack, stack_config, wait_for
from tests.support.scrape import scrape

_WORKER_HTTP = {"metrics_port": 0, "metrics_host": "127.0.0.1"}


def _url(worker: Any) -> str:
    assert worker.http is not None, "the worker's HTTP listener is not running"
    return str(worker.http.url)


def _status(url: str) -> int:
    return httpx.get(url, timeout=10).status_code


def test_the_worker_serves_metrics_and_probes_on_its_own_port(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(worker=_WORKER_HTTP)
    url = _url(stack.worker)
    wait_for(lambda: _status(f"{url}/readyz") == 200, what="the worker to be ready")
    assert httpx.get(f"{url}/livez").json() == {"status": "ok"}
    scraped = scrape(url)
    assert scraped.value("ocsgw_housekeeping_ticks_total", task="sweep") >= 1
    assert scraped.value("ocsgw_workers_alive") == 1
    assert scraped.series("ocsgw_inbound_requests_total") == {}


def test_readyz_fails_while_housekeeping_is_stuck(make_stack: Callable[..., Stack], monkeypatch: pytest.MonkeyPatch) -> None:
    stack = make_stack(worker=_WORKER_HTTP)
    assert stack.worker is not None
    url = _url(stack.worker)
    wait_for(lambda: _status(f"{url}/readyz") == 200, what="the worker to be ready")
    runner = stack.worker.runner

    async def stuck() -> tuple[int, int]:
        raise RuntimeError("sweep keeps failing")

    monkeypatch.setattr(runner, "sweep", stuck)
    wait_for(lambda: _status(f"{url}/readyz") == 503, what="readyz to notice housekeeping stopped")
    assert httpx.get(f"{url}/readyz").json() == {"status": "unavailable", "reason": "housekeeping not running"}
    assert _status(f"{url}/livez") == 200
    monkeypatch.undo()
    wait_for(lambda: _status(f"{url}/readyz") == 200, what="readyz once sweeps complete again")


def test_worker_readyz_follows_redis(sim: SimServer, tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", persist=False)
    server.start()
    config = stack_config(sim.url, "http://127.0.0.1:9", worker=_WORKER_HTTP)
    worker = worker_process(config, server.url)
    restarted: EmbeddedRedis | None = None
    try:
        worker.start()
        url = _url(worker)
        wait_for(lambda: _status(f"{url}/readyz") == 200, what="the worker to be ready")

        server.stop()
        wait_for(lambda: _status(f"{url}/readyz") == 503, what="readyz to fail without Redis")
        refused = httpx.get(f"{url}/readyz")
        assert refused.json()["status"] == "unavailable"
        assert str(server.port) not in refused.text
        assert _status(f"{url}/livez") == 200
        assert _status(f"{url}/metrics") == 200  # what it has, without Redis

        restarted = EmbeddedRedis(tmp_path / "redis", port=server.port, persist=False)
        restarted.start()
        wait_for(lambda: _status(f"{url}/readyz") == 200, timeout=20, what="readyz once Redis is back")
    finally:
        worker.stop()
        if restarted is not None:
            restarted.stop()
        server.stop()


def test_the_listener_is_off_unless_configured(stack: Stack) -> None:
    assert getattr(stack.worker, "http", None) is None


def test_the_environment_sets_the_metrics_port(monkeypatch: pytest.MonkeyPatch) -> None:
    assert WorkerTuning().metrics_port is None
    monkeypatch.setenv(METRICS_PORT_ENV, "9464")
    assert WorkerTuning().metrics_port == 9464
    assert WorkerTuning(metrics_port=0).metrics_port == 9464  # the environment wins over the file
