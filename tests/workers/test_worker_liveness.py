"""A worker's health does not lie: heartbeats survive readers of another version, are stamped and
judged on Redis's clock, and a worker that beats but no longer sweeps is ``stale``, not alive; a
worker whose turn runner died fails ``/livez`` and exits non-zero; a housekeeping loop that ends
stops the worker; and a busy metrics port is one clear configuration error."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import types
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis

from gateway.core.errors import ConfigError
from gateway.core.keys import Keys
from gateway.core.metrics import Metrics
from gateway.observe.gauges import GaugeRefresher
from gateway.services import worker_process
from gateway.store import clock as clock_module
from gateway.store.heartbeats import FORGET_AFTER_S, LIVENESS_FLOOR_S, Heartbeat, alive
from tests.conftest import SimServer, Stack, stack_config, wait_for
from workers import http as worker_http
from workers import runner as runner_module
from workers.http import WorkerHttp
from workers.process import supervise

_WORKER_HTTP = {"metrics_port": 0, "metrics_host": "127.0.0.1"}


def _http(worker: Any) -> WorkerHttp:
    """The worker's listener (``gateway.services`` adds it to ``WorkerProcess``)."""
    http = getattr(worker, "http", None)
    assert isinstance(http, WorkerHttp), "the worker's HTTP listener is not running"
    return http


def _redis_now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return int(seconds) + int(micros) / 1e6


def _beat(worker_id: str, now: float, **fields: Any) -> Heartbeat:
    values: dict[str, Any] = {
        "worker_id": worker_id, "host": "h", "pid": 1, "queue": "ocsgw", "started_at": now - 3600, "beat_at": now,
        "interval_s": 10.0, "housekeeping_at": now, "sweep_interval_s": 3.0,
    }
    values.update(fields)
    return Heartbeat(**values)


async def _read_alive(url: str) -> list[Heartbeat]:
    client = aioredis.Redis.from_url(url)
    try:
        return await alive(client, Keys())
    finally:
        await client.aclose()


def test_a_newer_workers_beat_is_read_and_an_unreadable_one_is_skipped_not_deleted(
    redis_url: str, redis_client: redis.Redis
) -> None:
    now = _redis_now(redis_client)
    workers = Keys().workers
    newer = {"worker_id": "w-new", "host": "h", "pid": 1, "queue": "q", "started_at": now - 10, "beat_at": now,
                 "interval_s": 10.0, "housekeeping_at": now, "renew_at": now}  # one field this version lacks
    unreadable = {"worker_id": "w-odd", "beat_at": now}  # required fields missing
    redis_client.hset(workers, mapping={
        "w-new": json.dumps(newer), "w-odd": json.dumps(unreadable), "w-junk": "not json",
        "w-gone": json.dumps(dict(unreadable, beat_at=now - FORGET_AFTER_S - 60)),
        "w-old": json.dumps(dict(newer, worker_id="w-old", beat_at=now - FORGET_AFTER_S - 60)),
    })

    seen = asyncio.run(_read_alive(redis_url))

    assert [h.worker_id for h in seen] == ["w-new"]
    assert seen[0].is_alive(now)
    kept = {k.decode() if isinstance(k, bytes) else k for k in redis_client.hkeys(workers)}
    # Unreadable beats stay for whoever can read them; beats past FORGET_AFTER_S by their own
    # beat_at go, readable or not.
    assert kept == {"w-new", "w-odd", "w-junk"}


def test_a_beat_read_just_before_the_next_one_is_alive_with_the_default_intervals() -> None:
    # A 10 s beat that reports a sweep 2.9 s old, read 9.5 s later: the sweep is 12.4 s old by
    # the reader's clock, past three 3 s sweeps, but it was fresh when the worker beat.
    now = 1_000_000.0
    beat = _beat("w-ok", now - 9.5, housekeeping_at=now - 9.5 - 2.9)
    assert beat.state(now) == "alive"


def test_a_worker_whose_loop_lags_seconds_behind_a_fast_sweep_is_still_alive() -> None:
    # A starved host: sweeps every 0.25 s, the last one 4 s before the beat. Late by intervals,
    # not by the seconds that mean a stopped worker (LIVENESS_FLOOR_S).
    now = 1_000_000.0
    lagging = _beat("w-lag", now - 4.0, interval_s=0.2, sweep_interval_s=0.25, housekeeping_age_s=4.0)
    assert lagging.state(now) == "alive"
    stopped = _beat("w-stopped", now, interval_s=0.2, sweep_interval_s=0.25, housekeeping_age_s=LIVENESS_FLOOR_S + 1)
    assert stopped.state(now) == "stale"
    silent = _beat("w-silent", now - LIVENESS_FLOOR_S - 1, interval_s=0.2, sweep_interval_s=0.25, housekeeping_age_s=0.0)
    assert silent.state(now) == "dead"


def test_the_sweeps_age_is_judged_on_the_workers_monotonic_clock_not_its_stamps() -> None:
    # The wall clock stepped 40 s between the sweep's stamp and the beat's: the age says 0.3 s.
    now = 1_000_000.0
    beat = _beat("w-step", now, housekeeping_at=now - 40.0, housekeeping_age_s=0.3)
    assert beat.state(now) == "alive"


def test_a_worker_that_beats_but_no_longer_sweeps_is_stale_and_not_counted_alive(
    redis_url: str, redis_client: redis.Redis
) -> None:
    now = _redis_now(redis_client)
    fresh = _beat("w-ok", now)
    stale = _beat("w-stale", now, housekeeping_at=now - 3600)
    never_swept = _beat("w-never", now, housekeeping_at=None, started_at=now - 60)
    old_version = _beat("w-v1", now, housekeeping_at=now - 3600, sweep_interval_s=0.0)  # cannot tell
    dead = _beat("w-dead", now - 120)
    assert [b.state(now) for b in (fresh, stale, never_swept, old_version, dead)] == [
        "alive", "stale", "stale", "alive", "dead",
    ]
    assert stale.is_alive(now)  # it does beat

    redis_client.hset(Keys().workers, mapping={b.worker_id: json.dumps(asdict(b)) for b in (fresh, stale, never_swept, dead)})
    metrics = Metrics()
    config = stack_config("http://127.0.0.1:9", "http://127.0.0.1:9")

    async def refresh() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            await GaugeRefresher(metrics).refresh(client, Keys(), config)
        finally:
            await client.aclose()

    asyncio.run(refresh())
    assert metrics.registry.get_sample_value("ocsgw_workers_alive") == 1


def _skewed_time(offset_s: float) -> types.SimpleNamespace:
    return types.SimpleNamespace(time=lambda: time.time() + offset_s, monotonic=time.monotonic, sleep=time.sleep)


def test_a_worker_on_a_host_whose_clock_is_behind_beats_on_redis_time_and_stays_alive(
    make_stack: Callable[..., Stack], monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = make_stack(worker={**_WORKER_HTTP, "heartbeat_interval_s": 0.2})
    assert stack.worker is not None
    runner = stack.worker.runner
    # This worker's host is 40 s behind Redis (and every other host).
    monkeypatch.setattr(runner_module, "time", _skewed_time(-40.0))
    monkeypatch.setattr(clock_module, "time", _skewed_time(-40.0))
    assert runner.loop is not None
    asyncio.run_coroutine_threadsafe(runner.clock.sync(), runner.loop).result(10)
    synced = _redis_now(stack.redis)

    def beat_after_sync() -> list[Heartbeat]:
        return [b for b in asyncio.run(_read_alive(stack.redis_url)) if b.beat_at > synced]

    (beat,) = wait_for(beat_after_sync, what="a beat stamped after the skew")
    assert abs(beat.beat_at - _redis_now(stack.redis)) < 5  # Redis's time, not the host's
    assert beat.state(_redis_now(stack.redis)) == "alive"
    metrics = httpx.get(f"{_http(stack.worker).url}/metrics", timeout=10).text
    assert "ocsgw_workers_alive 1.0" in metrics


def test_worker_readiness_ignores_a_wall_clock_step(
    make_stack: Callable[..., Stack], monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = make_stack(worker=_WORKER_HTTP)
    url = _http(stack.worker).url
    wait_for(lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 200, what="the worker to be ready")
    monkeypatch.setattr(worker_http, "time", _skewed_time(3600.0))  # an NTP step forward
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200


def test_readyz_fails_while_lease_renewal_fails(make_stack: Callable[..., Stack], monkeypatch: pytest.MonkeyPatch) -> None:
    stack = make_stack(worker=_WORKER_HTTP)
    url = _http(stack.worker).url
    wait_for(lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 200, what="the worker to be ready")

    async def failing() -> None:
        raise RuntimeError("renewal keeps failing")

    assert stack.worker is not None
    monkeypatch.setattr(stack.worker.runner.clock, "maybe_resync", failing)
    wait_for(lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 503, what="readyz to notice renewal stopped")
    assert httpx.get(f"{url}/readyz", timeout=10).json()["reason"] == "lease renewal not running"
    monkeypatch.undo()
    wait_for(lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 200, what="readyz once renewal works again")


def _boom() -> None:
    raise SystemExit("simulated fatal error on the runner loop")


def test_a_worker_whose_runner_died_fails_livez_and_exits_non_zero(sim: SimServer, redis_url: str) -> None:
    config = stack_config(sim.url, "http://127.0.0.1:9", worker=_WORKER_HTTP)
    process = worker_process(config, redis_url)
    stop = threading.Event()
    status: list[int] = []
    supervisor = threading.Thread(target=lambda: status.append(supervise(process, stop)), daemon=True)
    supervisor.start()
    try:
        wait_for(lambda: getattr(process, "http", None) is not None and process.life.runner is not None,
                 what="the worker to start")
        url = _http(process).url
        wait_for(lambda: httpx.get(f"{url}/readyz", timeout=10).status_code == 200, what="the worker to be ready")
        assert httpx.get(f"{url}/livez", timeout=10).status_code == 200

        loop = process.life.runner.loop  # type: ignore[union-attr]
        assert loop is not None
        # The reviewer's scenario: the runner's loop ends under a fatal error; the supervisor may
        # stop the listener at once, so /livez is asked of the probe while it still stands.
        livez: list[int] = []
        loop.call_soon_threadsafe(_boom)
        wait_for(lambda: not process.life.running, what="the runner to end")
        try:
            livez.append(httpx.get(f"{url}/livez", timeout=5).status_code)
        except httpx.HTTPError:
            pass  # already stopped by the supervisor: the process is going away anyway
        supervisor.join(15)
        assert status == [1]
        assert livez in ([], [503])
        assert not any(t.is_alive() for t in process.worker.workers)  # Dramatiq stopped too
    finally:
        stop.set()
        supervisor.join(15)
        if supervisor.is_alive() or not status:
            process.stop()


def test_livez_fails_once_the_runner_ended_on_its_own(sim: SimServer, redis_url: str) -> None:
    config = stack_config(sim.url, "http://127.0.0.1:9", worker=_WORKER_HTTP)
    process = worker_process(config, redis_url)
    process.start()
    try:
        url = _http(process).url
        assert httpx.get(f"{url}/livez", timeout=10).status_code == 200
        loop = process.runner.loop
        assert loop is not None
        loop.call_soon_threadsafe(_boom)
        wait_for(lambda: not process.life.running, what="the runner to end")
        answer = httpx.get(f"{url}/livez", timeout=10)
        assert answer.status_code == 503
        assert answer.json() == {"status": "failed", "reason": "turn runner stopped"}
        assert process.failure is not None
    finally:
        process.stop()


def test_a_housekeeping_loop_that_ends_before_the_stop_stops_the_worker(
    make_stack: Callable[..., Stack], caplog: pytest.LogCaptureFixture
) -> None:
    stack = make_stack()
    assert stack.worker is not None
    runner = stack.worker.runner
    loop = runner.loop
    assert loop is not None

    def end_renewal() -> None:
        for task in asyncio.all_tasks(loop):
            if task.get_name() == "ocsgw-renew":
                task.cancel()

    loop.call_soon_threadsafe(end_renewal)
    failure = wait_for(lambda: stack.worker.failure if stack.worker else None, what="the worker to report a failure")
    assert "ocsgw-renew" in failure
    wait_for(lambda: not stack.worker.life.running if stack.worker else True, what="the runner to stop")
    assert any("ocsgw-renew" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)


def test_a_busy_metrics_port_is_one_configuration_error_naming_the_setting(sim: SimServer, redis_url: str) -> None:
    busy = socket.create_server(("127.0.0.1", 0))
    try:
        port = busy.getsockname()[1]
        config = stack_config(sim.url, "http://127.0.0.1:9", worker={"metrics_port": port, "metrics_host": "127.0.0.1"})
        with pytest.raises(ConfigError) as raised:
            worker_process(config, redis_url).start()
        message = str(raised.value)
        assert "worker.metrics_port" in message and "OCS_GATEWAY_METRICS_PORT" in message and str(port) in message
        assert "\n" not in message
    finally:
        busy.close()


def test_a_listener_that_starts_too_late_is_stopped_and_its_port_freed(
    sim: SimServer, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def impatient(self: WorkerHttp, timeout_s: float = 15.0) -> None:
        # What start() does when uvicorn is slower than its timeout: the thread runs, it raises.
        self._thread.start()
        raise RuntimeError("the worker's HTTP listener did not start")

    monkeypatch.setattr(WorkerHttp, "start", impatient)
    port = socket.create_server(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    config = stack_config(sim.url, "http://127.0.0.1:9", worker={"metrics_port": free, "metrics_host": "127.0.0.1"})
    before = set(threading.enumerate())
    process = worker_process(config, redis_url)
    with pytest.raises(RuntimeError, match="did not start"):
        process.start()
    assert getattr(process, "http", "missing") is None
    assert not [t for t in set(threading.enumerate()) - before if t.name == "ocsgw-worker-http" and t.is_alive()]
    socket.create_server(("127.0.0.1", free)).close()  # the port is free again
