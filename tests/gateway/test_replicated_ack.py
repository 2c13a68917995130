"""``durable_replicas``: an acknowledged write is on the replicas before anyone is told it is
safe (``WAIT``, gateway/store/replication.py). A real primary and replica (``redis-server``
processes); the replica is paused with SIGSTOP to make it lag as far as it can."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from adapters.webhook import signing
from gateway.core.errors import StoreUnavailable
from gateway.core.keys import Keys
from gateway.core.models import ConversationKey, Inbound, InboundKind
from gateway.edge.app import create_app
from gateway.store.inbox import Admitter
from gateway.store.lease import Lease, Op
from gateway.store.replication import Durability, NotReplicated
from tests.conftest import WEBHOOK_SECRET, stack_config, wait_for
from tests.support.redis_group import RedisGroup, paused
from tests.support.servers import UvicornThread

NOWHERE = "http://127.0.0.1:9"
#: Generous: a confirmation must not time out on a loaded test machine (the lagging case times
#: out by design, and so takes this long).
ONE_REPLICA = Durability(replicas=1, timeout_ms=2000)
KEY = ConversationKey("hooks", "c1")


@pytest.fixture
def group(tmp_path: Path) -> Iterator[RedisGroup]:
    with RedisGroup(tmp_path, replicas=1, sentinels=0) as started:
        yield started


def _replica(group: RedisGroup):  # type: ignore[no-untyped-def]
    return next(s for s in group.servers.values() if s is not group.first_primary)


def _inbound(event_id: str) -> Inbound:
    return Inbound(key=KEY, event_id=event_id, kind=InboundKind.MESSAGE, sender_id="u1", text="hi")


async def test_an_admission_returns_only_once_the_replica_holds_it(group: RedisGroup) -> None:
    primary = aioredis.Redis.from_url(group.first_primary.url)
    try:
        assert await Admitter(primary, Keys(), dedup_ttl_s=60, wake=None, durability=ONE_REPLICA)(_inbound("e1"))
    finally:
        await primary.aclose()
    # Read at once on the replica: WAIT returned, so it has applied the admission already.
    with group.client(_replica(group).port) as replica:
        assert replica.llen(Keys().inbox(KEY)) == 1


async def test_an_admission_the_lagging_replica_did_not_confirm_is_refused_and_its_retry_is_no_duplicate(
    group: RedisGroup,
) -> None:
    primary = aioredis.Redis.from_url(group.first_primary.url)
    admit = Admitter(primary, Keys(), dedup_ttl_s=60, wake=None, durability=ONE_REPLICA)
    try:
        with paused(_replica(group)):
            with pytest.raises(StoreUnavailable, match="0 of 1 replicas confirmed"):
                await admit(_inbound("e1"))
            # The retry while the replica still lags: the event is claimed, but a duplicate is
            # acknowledged only once the first admission is replicated, so it is refused too.
            with pytest.raises(StoreUnavailable, match="0 of 1 replicas confirmed"):
                await admit(_inbound("e1"))
        assert await admit(_inbound("e1")) is False  # the platform's retry: a duplicate, confirmed
        assert await primary.llen(Keys().inbox(KEY)) == 1
    finally:
        await primary.aclose()
    with group.client(_replica(group).port) as replica:
        assert replica.llen(Keys().inbox(KEY)) == 1


async def test_without_durable_replicas_the_admission_does_not_wait_for_the_replica(group: RedisGroup) -> None:
    primary = aioredis.Redis.from_url(group.first_primary.url)
    try:
        with paused(_replica(group)):
            assert await Admitter(primary, Keys(), dedup_ttl_s=60, wake=None)(_inbound("e1"))
    finally:
        await primary.aclose()


def test_the_edge_answers_503_while_the_replica_lags_and_200_once_it_holds_the_message(group: RedisGroup) -> None:
    config = stack_config(NOWHERE, NOWHERE, durable_replicas=1, durable_timeout_ms=2000)
    body = httpx.Request("POST", "/", json={"conversation_id": "c1", "sender": {"id": "u1"}, "text": "hi"}).content
    headers = signing.signed_headers(signing.decode_secret(WEBHOOK_SECRET), "msg_1", body)
    with UvicornThread(create_app(config, group.first_primary.url)) as url, httpx.Client(timeout=10) as http:
        with paused(_replica(group)):
            refused = http.post(f"{url}/webhooks/hooks", content=body, headers=headers)
        accepted = http.post(f"{url}/webhooks/hooks", content=body, headers=headers)
    assert refused.status_code == 503
    assert accepted.status_code == 200
    with group.client(_replica(group).port) as replica:
        assert replica.llen(Keys().inbox(KEY)) == 1  # once: the retry was taken for the same event


async def test_a_fenced_write_waits_for_the_replica_and_fails_retryably_when_it_lags(group: RedisGroup) -> None:
    primary = aioredis.Redis.from_url(group.first_primary.url)
    try:
        lease = await Lease.acquire(primary, "lease:c1", ttl_s=30, durability=ONE_REPLICA)
        assert lease is not None
        await lease.run([Op("HSET", "turn:c1", ("step", "sent"))])
        with group.client(_replica(group).port) as replica:
            assert replica.hget("turn:c1", "step") == b"sent"
        with paused(_replica(group)):
            with pytest.raises(NotReplicated):
                await lease.run([Op("HSET", "turn:c1", ("step", "delivered"))])
    finally:
        await primary.aclose()


async def test_a_demoted_primary_refuses_writes_retryably_and_nothing_is_stored(group: RedisGroup) -> None:
    # A client still pointed at a server that is now a replica (a primary demoted after a
    # failover, seen without Sentinel): READONLY, a RedisError — the 503 and step-retry path.
    replica = _replica(group)
    demoted = aioredis.Redis.from_url(replica.url)
    try:
        with pytest.raises(StoreUnavailable, match=r"(?i)read only replica"):
            await Admitter(demoted, Keys(), dedup_ttl_s=60, wake=None)(_inbound("e1"))
        primary = aioredis.Redis.from_url(group.first_primary.url)
        try:
            lease = await Lease.acquire(primary, "lease:c1", ttl_s=30)
            assert lease is not None
        finally:
            await primary.aclose()
        with group.client(replica.port) as sync_replica:
            wait_for(lambda: sync_replica.get(lease.key) == lease.token.encode(), timeout=30, what="the lease replicated")
        on_replica = Lease(demoted, lease.key, lease.token, lease.ttl_ms, time.monotonic())
        with pytest.raises(RedisError, match=r"(?i)read only replica") as raised:
            await on_replica.run([Op("HSET", "turn:c1", ("step", "sent"))])
        assert not isinstance(raised.value, NotReplicated)
        assert await demoted.llen(Keys().inbox(KEY)) == 0 and not await demoted.exists("turn:c1")
    finally:
        await demoted.aclose()
