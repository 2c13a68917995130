"""The runner's step gate: a bound on steps at once, and turns a user already waits on go first."""

from __future__ import annotations

import asyncio

from workers.runner import StepGate


async def test_waiting_turns_go_before_new_ones_when_steps_queue() -> None:
    gate = StepGate(1)
    order: list[str] = []
    await gate.acquire(StepGate.NEW)  # the one step running

    async def step(name: str, priority: int) -> None:
        async with gate.step(priority):
            order.append(name)

    queued = [asyncio.create_task(step(f"new-{n}", StepGate.NEW)) for n in range(3)]
    queued.append(asyncio.create_task(step("waiting", StepGate.URGENT)))
    await asyncio.sleep(0)  # all four are queued behind the running step
    gate.release()
    await asyncio.gather(*queued)
    assert order == ["waiting", "new-0", "new-1", "new-2"]


async def test_a_cancelled_waiter_neither_leaks_nor_blocks_a_step() -> None:
    gate = StepGate(1)
    await gate.acquire(StepGate.NEW)
    doomed = asyncio.create_task(gate.acquire(StepGate.URGENT))
    await asyncio.sleep(0)
    doomed.cancel()
    await asyncio.gather(doomed, return_exceptions=True)
    gate.release()
    await asyncio.wait_for(gate.acquire(StepGate.NEW), timeout=1)  # the step is free again


async def test_no_more_than_the_limit_run_at_once() -> None:
    gate = StepGate(2)
    running = peak = 0

    async def step() -> None:
        nonlocal running, peak
        async with gate.step(StepGate.NEW):
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0)
            running -= 1

    await asyncio.gather(*(step() for _ in range(10)))
    assert peak == 2
