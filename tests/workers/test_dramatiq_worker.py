"""The worker is Dramatiq's: its middleware runs the turn runner, a stopping worker refuses the
hand-overs still waiting for room (so Dramatiq's threads end within its stop and the sweepers
take those conversations), and the worker consumes its queue but no delay queue, which nothing
here ever writes (no actor may be retried)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker

from gateway.core.keys import Keys
from tests.conftest import Stack, wait_for
from workers.broker import NAMESPACE, QUEUE, consume_no_delay_queue
from workers.lifecycle import RunnerMiddleware
from workers.turns import Hold, Outcome


def test_the_worker_consumes_its_queue_and_no_delay_queue(stack: Stack) -> None:
    assert stack.worker is not None
    assert set(stack.worker.worker.consumers) == {QUEUE}
    assert any(isinstance(m, RunnerMiddleware) for m in stack.worker.broker.middleware)


def test_a_broker_whose_actor_may_be_retried_keeps_its_delay_queue(redis_url: str) -> None:
    broker = RedisBroker(url=redis_url, namespace=NAMESPACE)

    @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name="retried")  # Dramatiq's default: 20 retries
    def retried() -> None: ...

    with pytest.raises(ValueError, match="retried"):
        consume_no_delay_queue(broker)
    assert broker.get_declared_delay_queues() == {f"{QUEUE}.DQ"}


def test_a_stopping_worker_refuses_the_hand_over_waiting_for_room(
    make_stack: Callable[..., Stack], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ocsgw.worker")
    stack = make_stack(worker={"max_in_flight": 1})
    worker = stack.worker
    assert worker is not None
    entered: list[str] = []

    async def held(hold: Hold) -> Outcome:
        entered.append(str(hold.conv))
        await asyncio.Event().wait()  # until the stop hands it back
        raise AssertionError("unreachable")

    monkeypatch.setattr(worker.runner.engine, "step", held)
    stack.say("c1", "hello")
    wait_for(lambda: entered == ["hooks/c1"], what="c1 to hold the runner's one slot")
    stack.say("c2", "hello")
    messages = f"{NAMESPACE}:{QUEUE}"
    # c2's wake-up fetched (off the queue) and not acknowledged: a Dramatiq thread waits for room.
    wait_for(lambda: stack.redis.llen(messages) == 0 and stack.redis.hlen(f"{messages}.msgs") == 1,
             what="c2's hand-over to wait")

    worker.stop()
    stack.worker = None
    assert not any(t.is_alive() for t in worker.worker.workers), "a Dramatiq thread outlived the worker's stop"
    assert not worker.life.running
    assert any("refused" in r.getMessage() for r in caplog.records)
    # Nothing is lost: both wait in `active` for a live worker's sweeper.
    assert {m.decode() for m in stack.redis.zrange(Keys().active, 0, -1)} == {"hooks/c1", "hooks/c2"}
    assert entered == ["hooks/c1"]
