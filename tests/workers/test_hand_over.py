"""The runner's hand-over, driven directly on a real Redis: a hand-over that gave up never takes
a slot later, a slot that frees always reaches a waiting hand-over (even when the one woken first
needs none), and once the stop began no waiting hand-over starts a driver (no lease is taken
after the hand-back). Each conversation's step is held at a gate the test opens, so who holds a
slot when is the test's choice, and every wait is for a signal."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from gateway.core.models import ConversationKey
from gateway.services import Services
from tests.conftest import stack_config
from workers.runner import TurnRunner
from workers.turns import Hold, Outcome

_BOUND_S = 15.0
NOWHERE = "http://127.0.0.1:9"


@dataclass
class _Gates:
    """Every conversation's step waits at its gate (shut until the test opens it)."""

    runner: TurnRunner
    entered: defaultdict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    opened: defaultdict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    driven: list[str] = field(default_factory=list)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        step = self.runner.engine.step

        async def gated(hold: Hold) -> Outcome:
            conv = str(hold.conv)
            if conv not in self.driven:
                self.driven.append(conv)
            self.entered[conv].set()
            await self.opened[conv].wait()
            return await step(hold)  # the real step: an empty inbox, so the runner lets it go

        monkeypatch.setattr(self.runner.engine, "step", gated)

    async def reached(self, *convs: str) -> list[str]:
        """Wait until the first of ``convs`` reaches its step (within the bound); the driven so far."""
        waits = [asyncio.ensure_future(self.entered[c].wait()) for c in convs]
        await asyncio.wait(waits, timeout=_BOUND_S, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
        return list(self.driven)


@dataclass
class _Served:
    runner: TurnRunner
    gates: _Gates
    stop: asyncio.Event
    serving: asyncio.Task[None]


@contextlib.asynccontextmanager
async def _served(redis_url: str, monkeypatch: pytest.MonkeyPatch, *, max_in_flight: int) -> AsyncIterator[_Served]:
    config = stack_config(NOWHERE, NOWHERE, worker={"max_in_flight": max_in_flight})
    services = await Services.open(config, redis_url)
    runner = TurnRunner(services, config.worker)
    gates = _Gates(runner)
    gates.install(monkeypatch)
    stop = asyncio.Event()
    serving = asyncio.create_task(runner.serve(stop))
    try:
        while runner.loop is None:
            await asyncio.sleep(0)  # serve's first step records its loop
        yield _Served(runner, gates, stop, serving)
    finally:
        stop.set()
        await serving
        leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith("ocsgw-turn:")]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)
        await services.aclose()


def _offer(runner: TurnRunner, conv: str, timeout: float) -> bool:
    """A Dramatiq thread's hand-over; True when the runner took it."""
    try:
        return runner.offer(conv, timeout=timeout) is not False
    except TimeoutError:
        return False


def _drivers() -> list[str]:
    return sorted(t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("ocsgw-turn:") and not t.done())


async def test_a_hand_over_that_timed_out_never_takes_a_slot_later(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with _served(redis_url, monkeypatch, max_in_flight=1) as served:
        runner, gates = served.runner, served.gates
        assert await runner.claim("hooks/c1")
        assert await gates.reached("hooks/c1") == ["hooks/c1"]

        # A Dramatiq thread's hand-over while the runner is full: it gives up.
        assert not await asyncio.to_thread(_offer, runner, "hooks/c2", 0.2)

        later = asyncio.create_task(runner.claim("hooks/c3", wait=True))
        gates.opened["hooks/c1"].set()  # the slot frees
        # Whoever takes the freed slot reaches its step: it must be the waiting hand-over, not
        # the one whose caller was told no.
        assert await gates.reached("hooks/c2", "hooks/c3") == ["hooks/c1", "hooks/c3"]
        assert await later is True


async def test_a_freed_slot_reaches_a_waiting_hand_over_when_the_one_woken_first_needs_none(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _served(redis_url, monkeypatch, max_in_flight=2) as served:
        runner, gates = served.runner, served.gates
        assert await runner.claim("hooks/c1") and await runner.claim("hooks/cx")
        await gates.reached("hooks/c1")
        await gates.reached("hooks/cx")
        assert sorted(gates.driven) == ["hooks/c1", "hooks/cx"]  # the runner is full

        # Two wake-ups of c2 and one of c3 arrive while the runner is full, in that order.
        first = asyncio.create_task(runner.claim("hooks/c2", wait=True))
        again = asyncio.create_task(runner.claim("hooks/c2", wait=True))
        third = asyncio.create_task(runner.claim("hooks/c3", wait=True))

        gates.opened["hooks/c1"].set()  # a slot frees: c2 takes it
        assert (await gates.reached("hooks/c2"))[2:] == ["hooks/c2"]
        assert await first is True
        gates.opened["hooks/cx"].set()  # another frees: c2's second wake-up needs none, c3 does
        assert (await gates.reached("hooks/c3"))[2:] == ["hooks/c2", "hooks/c3"]
        assert await again is True
        assert await third is True


async def test_no_waiting_hand_over_starts_a_driver_once_the_stop_began(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with _served(redis_url, monkeypatch, max_in_flight=1) as served:
        runner, gates = served.runner, served.gates
        assert await runner.claim("hooks/c1")
        await gates.reached("hooks/c1")
        waiting = asyncio.create_task(runner.claim("hooks/c2", wait=True))

        served.stop.set()  # the stop hands c1 back: its slot frees during the stop
        await served.serving
        assert await waiting is False
        assert _drivers() == []
        assert gates.driven == ["hooks/c1"]
        lease = runner.services.keys.lease(ConversationKey.parse("hooks/c2"))
        assert await runner.services.redis.exists(lease) == 0
