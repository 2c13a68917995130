"""OCS back, turns move: turns backing off from an OCS that does not answer are woken by the first
request that gets an answer again (``gateway/ocs/reachability.py``), not by their own timers.

OCS sits behind an ``OutageProxy``: cut, it refuses connections, as a server that is down. The
turns' backoff is made long (at least 30 s for the first retry), so an answer well within that
can only come from the wake-up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import redis.asyncio as aioredis

from gateway.core.keys import Keys
from gateway.core.models import ConversationKey
from gateway.ocs.client import OCSClient
from gateway.ocs.reachability import Reachability
from tests.conftest import SimServer, Stack, wait_for
from tests.support.outage_proxy import OutageProxy

KEYS = Keys()
#: The first retry waits backoff_base_s times a jitter of 0.5-1: at least this.
_BACKOFF_BASE_S = 60.0
_CONVERSATIONS = [f"c{i}" for i in range(6)]


def _attempts(stack: Stack, conversation: str) -> int:
    raw = stack.redis.hget(KEYS.turn(ConversationKey("hooks", conversation)), "attempts")
    return int(raw) if raw else 0


def test_turns_backing_off_from_an_unreachable_ocs_move_as_soon_as_it_answers_again(
    make_stack: Callable[..., Stack], sim: SimServer
) -> None:
    target = urlsplit(sim.url)
    with OutageProxy(target.hostname or "127.0.0.1", target.port or 80) as proxy:
        proxy.cut()
        stack = make_stack(
            bots={"demo": {"base_url": f"http://{proxy.address}"}},
            worker={"backoff_base_s": _BACKOFF_BASE_S, "backoff_max_s": 2 * _BACKOFF_BASE_S, "ocs_probe_interval_s": 0.5},
        )
        for conversation in _CONVERSATIONS:
            assert stack.say(conversation, f"hello from {conversation}").status_code == 200
        wait_for(
            lambda: all(_attempts(stack, c) >= 1 for c in _CONVERSATIONS), timeout=60,
            what="every turn to have failed once and be backing off",
        )
        proxy.restore()
        restored = time.monotonic()
        # Well inside the shortest backoff (30 s): only the wake-up can answer them this soon.
        wait_for(
            lambda: all(stack.receiver.texts(c) for c in _CONVERSATIONS), timeout=_BACKOFF_BASE_S / 2 - 5,
            what="every answer once OCS is back",
        )
        took = time.monotonic() - restored
        print(f"\nOCS back: {len(_CONVERSATIONS)} waiting turns answered {took:.2f} s after it returned")
        for conversation in _CONVERSATIONS:
            assert stack.receiver.texts(conversation) == [f"Echo #1: hello from {conversation}"]
        # The probe went through the proxy and was counted as OCS's own answer (a 405, nothing made).
        assert proxy.connections >= 1
        assert len(stack.sim.state.list_sessions()) == len(_CONVERSATIONS)


def test_a_probe_answered_wakes_that_origins_turns_only_and_creates_nothing_in_ocs(stack: Stack) -> None:
    async def probe() -> bool:
        reach = Reachability()
        woken: list[str] = []
        reach.on_answer(lambda convs: woken.extend(convs))
        reach.wait("x", "ignored")  # another origin's waiter stays asleep
        redis = aioredis.Redis.from_url(stack.redis_url)
        async with httpx.AsyncClient() as http:
            client = OCSClient(name="demo", bot=stack.config.bots["demo"], http=http, redis=redis, keys=KEYS, reachability=reach)
            reach.wait(client.origin, "hooks:c1")
            await client.probe()
        await redis.aclose()
        return woken == ["hooks:c1"] and reach.is_down("x") and not reach.is_down(client.origin)

    assert asyncio.run(probe())
    assert stack.sim.state.list_sessions() == []
