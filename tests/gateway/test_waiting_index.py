"""The waiting index (``gateway/store/waiting.py``): the oldest unanswered message is found
exactly however many conversations are in flight, by the gauge behind ``OCSGatewayTurnsStuck``
and by the console's turns list; a stale entry heals itself; a scrape reads no message body and
concurrent scrapes share one refresh; every path that appends, begins or finishes keeps it right."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis as sync_redis
import redis.asyncio as aioredis

from gateway.core.config import GatewayConfig
from gateway.core.keys import Keys
from gateway.core.metrics import Metrics
from gateway.core.models import ConversationKey, Inbound, InboundKind
from gateway.edge.admin.summary import gather_summary
from gateway.observe.gauges import GaugeRefresher
from gateway.services import Services
from gateway.store.dead_letters import DeadLetterStore
from gateway.store.inbox import Admitter
from gateway.store.lease import Lease
from gateway.store.ledger import TurnLedger
from gateway.store.waiting import oldest_waiting
from tests.conftest import Stack, settled, stack_config, wait_for

KEYS = Keys()
T = TypeVar("T")


def _config() -> GatewayConfig:
    # Nothing here calls OCS or a platform: the addresses only have to parse.
    return stack_config("http://127.0.0.1:9", "http://127.0.0.1:9")


def _inbound(conversation: str, *, received_at: float, text: str = "hello") -> Inbound:
    return Inbound(
        key=ConversationKey("hooks", conversation), event_id=f"ev-{conversation}-{time.time_ns()}",
        kind=InboundKind.MESSAGE, sender_id="u", text=text, route={"conversation_id": conversation},
        received_at=received_at,
    )


def _with_client(redis_url: str, fn: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
    async def go() -> T:
        client = aioredis.Redis.from_url(redis_url)
        try:
            return await fn(client)
        finally:
            await client.aclose()

    return asyncio.run(go())


async def _own_and_begin(client: aioredis.Redis, conv: ConversationKey, *, now: float) -> Lease:
    """What a worker does when it takes a conversation and starts its head's turn."""
    lease = await Lease.acquire(client, KEYS.lease(conv), ttl_s=60, active=KEYS.active, member=str(conv), hold_until=now + 60)
    assert lease is not None
    ledger = TurnLedger(client, KEYS)
    snapshot = await ledger.load(conv)
    assert snapshot.head is not None
    _, ops = ledger.begin(conv, snapshot.head, now=now)
    await lease.run(ops)
    return lease


async def _score(client: aioredis.Redis, conversation: str) -> float:
    score = await client.zscore(KEYS.waiting, conversation)
    assert score is not None, f"{conversation} is not in the waiting index"
    return float(score)


async def _gauge(client: aioredis.Redis, gauges: GaugeRefresher | None = None) -> float:
    gauges = gauges or GaugeRefresher(Metrics())
    await gauges.refresh(client, KEYS, _config())
    value = gauges.metrics.registry.get_sample_value("ocsgw_oldest_waiting_turn_age_seconds")
    assert value is not None
    return value


def test_an_hour_old_stuck_turn_is_seen_among_two_thousand_young_owned_ones(redis_url: str) -> None:
    """The reviewer's scenario: 2,000 owned conversations whose heads are 5 s old, renewed so
    their sweeper scores hide the stuck one from any sample of ``active``, and one owned,
    stuck conversation whose head is an hour old."""

    async def scenario(client: aioredis.Redis) -> tuple[float, list[Any]]:
        admit = Admitter(client, KEYS, dedup_ttl_s=60, wake=None)
        now = time.time()
        for i in range(2000):
            assert await admit(_inbound(f"c{i}", received_at=now - 5))
        assert await admit(_inbound("stuck", received_at=now - 3600))
        for i in range(2000):
            await _own_and_begin(client, ConversationKey("hooks", f"c{i}"), now=now)
        await _own_and_begin(client, ConversationKey("hooks", "stuck"), now=now)
        # Renewed last, so the stuck one scores highest in ``active`` (the old sample missed it).
        await client.zadd(KEYS.active, {"hooks/stuck": now + 120})
        age = await _gauge(client)
        services = await Services.open(_config(), redis_url)
        try:
            summary = await gather_summary(services, platforms=False)
        finally:
            await services.aclose()
        return age, summary.turns

    age, turns = _with_client(redis_url, scenario)
    assert 3595 <= age < 3700
    assert turns[0].conversation == "hooks/stuck"
    assert turns[0].state == "received" and turns[0].owned and turns[0].stuck
    assert 3595 <= turns[0].age_s < 3700
    assert not turns[1].stuck


def test_an_entry_whose_inbox_was_emptied_behind_its_back_is_healed_and_not_reported(redis_url: str) -> None:
    async def scenario(client: aioredis.Redis) -> tuple[float, float, Any, list[Any]]:
        admit = Admitter(client, KEYS, dedup_ttl_s=60, wake=None)
        now = time.time()
        assert await admit(_inbound("gone", received_at=now - 7200))
        assert await admit(_inbound("live", received_at=now - 30))
        before = await _gauge(client)
        await client.delete(KEYS.inbox(ConversationKey("hooks", "gone")))  # emptied, index untouched
        after = await _gauge(client)
        return before, after, await client.zscore(KEYS.waiting, "hooks/gone"), await oldest_waiting(client, KEYS, limit=10)

    before, after, score, oldest = _with_client(redis_url, scenario)
    assert before >= 7195
    assert 25 <= after < 100
    assert score is None  # removed from the index by the read
    assert [str(w.conversation) for w in oldest] == ["hooks/live"]


def test_a_new_message_after_a_stale_entry_gets_its_own_time(redis_url: str) -> None:
    """An inbox emptied behind the index's back, then a fresh message: the append that makes a
    head overwrites the leftover time instead of keeping it (NX would)."""

    async def scenario(client: aioredis.Redis) -> float:
        admit = Admitter(client, KEYS, dedup_ttl_s=60, wake=None)
        now = time.time()
        assert await admit(_inbound("c", received_at=now - 7200))
        await client.delete(KEYS.inbox(ConversationKey("hooks", "c")))
        assert await admit(_inbound("c", received_at=now - 3))
        return await _score(client, "hooks/c")

    assert abs(_with_client(redis_url, scenario) - (time.time() - 3)) < 60


def test_begin_takes_the_heads_time_and_finish_removes_it(redis_url: str) -> None:
    async def scenario(client: aioredis.Redis) -> tuple[float, float, float | None, float]:
        admit = Admitter(client, KEYS, dedup_ttl_s=60, wake=None)
        conv = ConversationKey("hooks", "c")
        now = time.time()
        assert await admit(_inbound("c", received_at=now - 100))
        assert await admit(_inbound("c", received_at=now - 50))
        queued = await _score(client, str(conv))  # NX: the first head's time
        await client.zadd(KEYS.waiting, {str(conv): now})  # wrong, as a crash could leave it
        lease = await _own_and_begin(client, conv, now=now)
        begun = await _score(client, str(conv))
        ledger = TurnLedger(client, KEYS)
        snapshot = await ledger.load(conv)
        assert snapshot.turn is not None
        await lease.run(ledger.finish(conv, snapshot.turn))
        finished = await client.zscore(KEYS.waiting, str(conv))
        await lease.run(ledger.begin(conv, (await ledger.load(conv)).head or "", now=now)[1])
        return queued, begun, finished, await _score(client, str(conv))

    queued, begun, finished, next_head = _with_client(redis_url, scenario)
    now = time.time()
    assert abs(queued - (now - 100)) < 30
    assert abs(begun - (now - 100)) < 30  # the head is the authority
    assert finished is None
    assert abs(next_head - (now - 50)) < 30


def test_a_replayed_dead_letter_is_waiting_again(redis_url: str) -> None:
    async def scenario(client: aioredis.Redis) -> tuple[Any, Any]:
        store = DeadLetterStore(client, KEYS)
        inbound = _inbound("dl", received_at=time.time() - 20)
        letter = await store.park(inbound.key, inbound.to_json(), error="boom", ocs={}, ledger={}, stage="ocs")
        before = await client.zscore(KEYS.waiting, "hooks/dl")
        assert await store.replay(letter.id) == inbound.key
        return before, await client.zscore(KEYS.waiting, "hooks/dl")

    before, after = _with_client(redis_url, scenario)
    assert before is None
    assert after is not None and abs(float(after) - (time.time() - 20)) < 30


def test_a_scrape_reads_no_message_body(redis_url: str) -> None:
    """A megabyte-long message waits at the head of an inbox: a refresh of every gauge moves
    far less than that out of Redis (before the index it read every sampled head)."""

    async def scenario(client: aioredis.Redis) -> int:
        admit = Admitter(client, KEYS, dedup_ttl_s=60, wake=None)
        for i in range(5):
            assert await admit(_inbound(f"big{i}", received_at=time.time() - 60, text="x" * 1_000_000))
        probe = sync_redis.Redis.from_url(redis_url)
        try:
            before = int(probe.info("stats")["total_net_output_bytes"])
            age = await _gauge(client)
            after = int(probe.info("stats")["total_net_output_bytes"])
        finally:
            probe.close()
        assert age >= 55
        return after - before

    assert _with_client(redis_url, scenario) < 200_000


def test_concurrent_scrapes_share_one_refresh_and_a_second_scrape_reuses_it(redis_url: str) -> None:
    async def time_calls(probe: sync_redis.Redis) -> int:
        return int(probe.info("commandstats").get("cmdstat_time", {}).get("calls", 0))

    async def scenario(client: aioredis.Redis) -> tuple[int, int, int]:
        assert await Admitter(client, KEYS, dedup_ttl_s=60, wake=None)(_inbound("c", received_at=time.time()))
        probe = sync_redis.Redis.from_url(redis_url)
        try:
            start = await time_calls(probe)
            await _gauge(client)  # one refresh on its own, to know what one costs
            one = await time_calls(probe) - start
            gauges = GaugeRefresher(Metrics())  # one process's
            start = await time_calls(probe)
            await asyncio.gather(*(_gauge(client, gauges) for _ in range(5)))
            together = await time_calls(probe) - start
            start = await time_calls(probe)
            await _gauge(client, gauges)
            again = await time_calls(probe) - start
        finally:
            probe.close()
        return one, together, again

    one, together, again = _with_client(redis_url, scenario)
    assert one >= 1
    assert together == one
    assert again == 0


def test_a_finished_conversation_leaves_the_index(stack: Stack) -> None:
    """End to end, through the edge and a real worker: once every turn is answered, nothing
    is left waiting."""
    assert stack.say("e2e", "hello").status_code == 200
    assert stack.say("e2e", "again").status_code == 200
    # However they went (one turn each, or the second queued behind the first as a burst).
    wait_for(lambda: sum(len(m["in_reply_to_all"]) for m in stack.receiver.received) >= 2, what="answers to both")
    settled(stack.redis)
    assert stack.redis.zcard(KEYS.waiting) == 0
