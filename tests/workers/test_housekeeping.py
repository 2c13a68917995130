"""The worker's housekeeping survives anything one tick throws: each loop (sweep, lease renewal,
watch start, heartbeat) logs the exception with its traceback, counts it in
``ocsgw_housekeeping_errors_total{task}``, and runs its next tick. And the worker's heartbeat is
there while it runs and gone once it stopped cleanly."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.core.keys import Keys
from gateway.store import heartbeats
from tests.conftest import Stack, wait_for
from workers.runner import TurnRunner

_FAST_BEATS = {"worker": {"heartbeat_interval_s": 0.2}}


def _counter(runner: TurnRunner, name: str, task: str) -> float:
    value = runner.services.metrics.registry.get_sample_value(name, {"task": task})
    return value or 0.0


def _fail_once(original: Callable[..., Any], failed: list[float]) -> Callable[..., Any]:
    async def failing(*args: Any, **kwargs: Any) -> Any:
        if not failed:
            failed.append(time.time())
            raise RuntimeError("injected housekeeping failure")
        return await original(*args, **kwargs)

    return failing


def _inject(task: str, runner: TurnRunner, stack: Stack, monkeypatch: pytest.MonkeyPatch, failed: list[float]) -> None:
    if task == "sweep":
        monkeypatch.setattr(runner, "sweep", _fail_once(runner.sweep, failed))
    elif task == "renew":
        monkeypatch.setattr(runner.clock, "maybe_resync", _fail_once(runner.clock.maybe_resync, failed))
    elif task == "heartbeat":
        monkeypatch.setattr(heartbeats, "beat", _fail_once(heartbeats.beat, failed))
    else:  # watch: a due watch whose start fails once
        original = runner.claim

        async def claim(conv: str, *, watch: bool = False, wait: bool = False) -> bool:
            if watch and not failed:
                failed.append(time.time())
                raise RuntimeError("injected housekeeping failure")
            return await original(conv, watch=watch, wait=wait)

        monkeypatch.setattr(runner, "claim", claim)
        stack.redis.zadd(Keys().watch, {"hooks/w1": 0})


@pytest.mark.parametrize("task", ["sweep", "renew", "watch", "heartbeat"])
def test_an_exception_in_one_housekeeping_tick_is_logged_counted_and_the_next_tick_runs(
    task: str, make_stack: Callable[..., Stack], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="ocsgw.runner")
    stack = make_stack(**_FAST_BEATS)
    assert stack.worker is not None
    runner = stack.worker.runner
    failed: list[float] = []
    _inject(task, runner, stack, monkeypatch, failed)

    wait_for(lambda: failed, what=f"the {task} tick to fail")
    wait_for(lambda: _counter(runner, "ocsgw_housekeeping_errors_total", task) == 1, what="the failure to be counted")
    ticks = _counter(runner, "ocsgw_housekeeping_ticks_total", task)
    wait_for(lambda: _counter(runner, "ocsgw_housekeeping_ticks_total", task) >= ticks + 2, what=f"{task} ticks after the failure")
    assert _counter(runner, "ocsgw_housekeeping_errors_total", task) == 1

    logged = [r for r in caplog.records if r.exc_info and "injected housekeeping failure" in str(r.exc_info[1])]
    assert logged, "the failure was not logged with its traceback"
    assert task in logged[0].getMessage()

    # The heartbeat says housekeeping goes on: its last sweep is after the failure.
    worker_id = runner.worker_id

    def housekeeping_at() -> float:
        raw = stack.redis.hget(Keys().workers, worker_id)
        return float(json.loads(raw or "{}").get("housekeeping_at") or 0.0)

    wait_for(lambda: housekeeping_at() > failed[0], what="a sweep after the failure in the heartbeat")

    # And the worker still works.
    stack.say("h1", "still there?")
    wait_for(lambda: stack.receiver.texts("h1"), what="an answer after the failure")


async def _alive(redis_url: str) -> list[heartbeats.Heartbeat]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return await heartbeats.alive(client, Keys())
    finally:
        await client.aclose()


def test_a_running_worker_beats_and_a_cleanly_stopped_one_is_forgotten(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(**_FAST_BEATS)
    assert stack.worker is not None
    runner = stack.worker.runner
    stack.say("h1", "hello")
    wait_for(lambda: stack.receiver.texts("h1"), what="an answer")

    def beating() -> list[heartbeats.Heartbeat]:
        return [b for b in asyncio.run(_alive(stack.redis_url)) if b.housekeeping_at is not None]

    (beat,) = wait_for(beating, what="a heartbeat with a housekeeping tick")
    assert beat.worker_id == runner.worker_id
    host, pid, suffix = beat.worker_id.split(":")
    assert (host, int(pid)) == (beat.host, beat.pid) and len(suffix) == 8
    assert beat.queue == "ocsgw"
    assert beat.interval_s == 0.2
    assert beat.is_alive()
    assert beat.started_at <= beat.housekeeping_at <= beat.beat_at + 0.01  # type: ignore[operator]
    first = beat.beat_at
    wait_for(lambda: [b for b in asyncio.run(_alive(stack.redis_url)) if b.beat_at > first], what="the next beat")

    stack.stop_worker()
    assert asyncio.run(_alive(stack.redis_url)) == []


def test_a_cancelled_error_from_inside_a_tick_is_counted_and_the_loop_goes_on(
    make_stack: Callable[..., Stack], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="ocsgw.runner")
    stack = make_stack()
    assert stack.worker is not None
    runner = stack.worker.runner
    original = runner.sweep
    cancelled: list[bool] = []

    async def sweep() -> tuple[int, int]:
        if not cancelled:
            cancelled.append(True)
            # A future this tick awaits is cancelled by someone else, not the loop's task.
            future = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(future.cancel)
            await future
        return await original()

    monkeypatch.setattr(runner, "sweep", sweep)
    wait_for(lambda: cancelled, what="the sweep tick to be cancelled from within")
    wait_for(lambda: _counter(runner, "ocsgw_housekeeping_errors_total", "sweep") == 1, what="the cancellation to be counted")
    ticks = _counter(runner, "ocsgw_housekeeping_ticks_total", "sweep")
    wait_for(lambda: _counter(runner, "ocsgw_housekeeping_ticks_total", "sweep") >= ticks + 2, what="sweeps after it")
    assert any("sweep" in r.getMessage() and "cancelled" in r.getMessage() for r in caplog.records)
    assert stack.worker.failure is None
