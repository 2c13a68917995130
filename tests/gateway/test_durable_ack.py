"""The ingest path: a 200 means the message is on disk, and the one admission script also puts the
wake-up on the queue exactly as Dramatiq would, so an unmodified Dramatiq worker runs it (the
contract of gateway/store/dramatiq_queue.py, which refuses an untested Dramatiq at start-up)."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Literal

import dramatiq
import httpx
import pytest
import redis
import redis.asyncio as aioredis
from dramatiq import Message, Worker
from dramatiq.brokers.redis import RedisBroker

from adapters.webhook import signing
from gateway.core.errors import ConfigError
from gateway.core.keys import Keys
from gateway.core.models import ConversationKey, Inbound, InboundKind
from gateway.edge.admin.wake import wake_conversation
from gateway.edge.app import create_app
from gateway.services import worker_process
from gateway.store.dramatiq_queue import require_tested_dramatiq
from gateway.store.embedded_redis import EmbeddedRedis
from gateway.store.inbox import Admitter, WakeQueue
from tests.conftest import WEBHOOK_SECRET, stack_config, wait_for
from tests.support.servers import UvicornThread
from workers.broker import ADVANCE, NAMESPACE, QUEUE

NOWHERE = "http://127.0.0.1:9"


def _inbound(conversation: str, event_id: str) -> Inbound:
    return Inbound(key=ConversationKey("hooks", conversation), event_id=event_id, kind=InboundKind.MESSAGE,
                   sender_id="u1", text="hi")


def _dramatiq_keys(client: redis.Redis) -> dict[str, bytes]:
    return {k.decode(): client.type(k) for k in client.scan_iter(f"{NAMESPACE}:*")}


async def _admit(redis_url: str, inbound: Inbound, wake: WakeQueue) -> bool:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return await Admitter(client, Keys(), dedup_ttl_s=60, wake=wake)(inbound)
    finally:
        await client.aclose()


def test_admission_writes_the_keys_dramatiq_enqueue_writes(redis_client: redis.Redis, redis_url: str) -> None:
    broker = RedisBroker(url=redis_url, namespace=NAMESPACE)
    sent = broker.enqueue(Message(queue_name=QUEUE, actor_name=ADVANCE, args=("hooks/c1",), kwargs={}, options={}))
    by_dramatiq = _dramatiq_keys(redis_client)
    theirs = Message.decode(redis_client.hget(f"{NAMESPACE}:{QUEUE}.msgs", sent.options["redis_message_id"]))
    redis_client.flushdb()

    wake = WakeQueue(NAMESPACE, QUEUE, ADVANCE, broker.broker_id)
    assert asyncio.run(_admit(redis_url, _inbound("c1", "e1"), wake)) is True
    assert _dramatiq_keys(redis_client) == by_dramatiq
    (message_id,) = redis_client.lrange(f"{NAMESPACE}:{QUEUE}", 0, -1)
    ours = Message.decode(redis_client.hget(f"{NAMESPACE}:{QUEUE}.msgs", message_id))
    assert ours.options == {"redis_message_id": message_id.decode()}
    assert (ours.queue_name, ours.actor_name, ours.args, ours.kwargs) == (
        theirs.queue_name, theirs.actor_name, theirs.args, theirs.kwargs)
    assert redis_client.zscore(f"{NAMESPACE}:__heartbeats__", broker.broker_id) is not None
    broker.close()


async def _wake(redis_url: str, conversation: str, wake: WakeQueue) -> bool:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return await wake_conversation(client, conversation, wake=wake)
    finally:
        await client.aclose()


def test_a_plain_dramatiq_worker_runs_the_wake_ups_the_edge_queued(redis_url: str, redis_client: redis.Redis) -> None:
    broker = RedisBroker(url=redis_url, namespace=NAMESPACE)
    received: list[str] = []
    done = threading.Event()

    @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name=ADVANCE, max_retries=0)
    def advance(conversation: str) -> None:
        received.append(conversation)
        if len(received) == 2:
            done.set()

    wake = WakeQueue.new(namespace=NAMESPACE, queue=QUEUE, actor=ADVANCE)
    assert asyncio.run(_admit(redis_url, _inbound("c7", "e7"), wake)) is True
    assert asyncio.run(_admit(redis_url, _inbound("c7", "e7"), wake)) is False  # a duplicate queues nothing
    assert asyncio.run(_wake(redis_url, "hooks/c8", wake)) is True  # the console's replay
    worker = Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        assert done.wait(timeout=15), "the worker never ran the queued wake-ups"
        # Acknowledged by the worker with our redis_message_id: nothing left behind.
        wait_for(lambda: redis_client.hlen(f"{NAMESPACE}:{QUEUE}.msgs") == 0, what="the messages to be acked")
    finally:
        worker.stop()
        broker.close()
    assert received == ["hooks/c7", "hooks/c8"]
    assert redis_client.llen("ocsgw:inbox:hooks/c7") == 1
    assert redis_client.llen(f"{NAMESPACE}:{QUEUE}") == 0
    assert redis_client.zcard(f"{NAMESPACE}:{QUEUE}.XQ") == 0  # none dead-lettered by Dramatiq


@pytest.mark.parametrize("version", ["2.3.0", "3.0.0", "1.18.0", "dev"])
def test_an_untested_dramatiq_stops_the_edge_and_the_worker_at_start_up(
    version: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dramatiq, "__version__", version)
    with pytest.raises(ConfigError) as raised:
        WakeQueue.new(namespace=NAMESPACE, queue=QUEUE, actor=ADVANCE)
    assert version in str(raised.value) and "2.0 to 2.2" in str(raised.value)
    with pytest.raises(ConfigError):
        worker_process(stack_config(NOWHERE, NOWHERE), redis_url)


def test_the_installed_dramatiq_is_a_tested_one() -> None:
    require_tested_dramatiq()  # what constraints.txt installs


def _signed(conversation: str, n: int) -> tuple[str, bytes, dict[str, str]]:
    event_id = f"msg_{conversation}_{n}"
    body = json.dumps({"conversation_id": conversation, "sender": {"id": f"u-{conversation}"}, "text": f"m{n}"}).encode()
    headers = signing.signed_headers(signing.decode_secret(WEBHOOK_SECRET), event_id, body)
    return event_id, body, headers


async def _burst_until_killed(url: str, server: EmbeddedRedis, *, total: int, conversations: int,
                              armed_after: int) -> dict[str, str]:
    """Post ``total`` signed webhooks, 20 at a time, and SIGKILL Redis at the worst moment: once
    ``armed_after`` were acknowledged, as soon as Redis holds append-only data it has not written
    while a background fsync is in flight (or after the last request, if that never happens).
    Returns acked event id → conversation."""
    requests = [(f"c{i % conversations}", *_signed(f"c{i % conversations}", i)) for i in range(total)]
    acked: dict[str, str] = {}
    gate = asyncio.Semaphore(20)
    finished = asyncio.Event()

    async def post(http: httpx.AsyncClient, conversation: str, event_id: str, body: bytes, headers: dict[str, str]) -> None:
        async with gate:
            response = await http.post(f"{url}/webhooks/hooks", content=body, headers=headers)
        if response.status_code == 200:
            acked[event_id] = conversation

    async def killer() -> None:
        watcher = aioredis.Redis.from_url(server.url)
        try:
            while not finished.is_set():
                aof = await watcher.info("persistence")
                # Data Redis holds but has not written while its disk is busy fsyncing: what a
                # crash loses if Redis replied before writing.
                if len(acked) >= armed_after and aof.get("aof_buffer_length") and aof.get("aof_pending_bio_fsync"):
                    break
        finally:
            server.kill()
            await watcher.aclose()

    async def burst(http: httpx.AsyncClient) -> None:
        await asyncio.gather(*(post(http, *request) for request in requests))
        finished.set()

    async with httpx.AsyncClient(timeout=30) as http:
        await asyncio.gather(burst(http), killer())
    return acked


class _BusyDisk(threading.Thread):
    """Another client writing large values until Redis dies: the append-only file grows fast, so
    Redis's own fsyncs take long, as on a busy shared disk. (Under ``appendfsync everysec`` Redis
    postpones its AOF writes while a background fsync runs, and still replies.)"""

    def __init__(self, redis_url: str) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(redis_url)
        self.busy = threading.Event()

    def run(self) -> None:
        ballast = b"x" * (4 << 20)
        try:
            for i in range(1_000_000):
                self.client.set(f"ballast:{i % 4}", ballast)
                if i == 8:
                    self.busy.set()
        except redis.RedisError:
            pass  # Redis was killed: the point of the exercise
        finally:
            self.client.close()


def acknowledged_but_lost(data_dir: Path, *, fsync: Literal["always", "everysec"]) -> tuple[int, set[str]]:
    """Run the burst against an edge on a persistent Redis, SIGKILL Redis mid-burst, restart it on
    the same directory; returns (how many were acknowledged, which of those are not in an inbox)."""
    server = EmbeddedRedis(data_dir, fsync=fsync)
    redis_url = server.start()
    edge = UvicornThread(create_app(stack_config(NOWHERE, NOWHERE), redis_url))
    url = edge.start()
    busy = _BusyDisk(redis_url)
    try:
        busy.start()
        assert busy.busy.wait(timeout=30)
        acked = asyncio.run(_burst_until_killed(url, server, total=400, conversations=20, armed_after=50))
        busy.join()
        server = EmbeddedRedis(data_dir, port=server.port, fsync=fsync)
        server.start()
        client = redis.Redis.from_url(redis_url)
        stored = set()
        for conversation in set(acked.values()):
            stored |= {json.loads(raw)["event_id"] for raw in client.lrange(f"ocsgw:inbox:hooks/{conversation}", 0, -1)}
        client.close()
        return len(acked), set(acked) - stored
    finally:
        edge.stop()
        server.stop()


def test_every_message_acknowledged_before_a_redis_sigkill_is_in_its_inbox_after_restart(tmp_path: Path) -> None:
    # The shipped setting. With fsync="everysec" (the old default) this loses acknowledged
    # messages: Redis postpones its AOF write while a background fsync runs, and still replies.
    acked, lost = acknowledged_but_lost(tmp_path / "redis", fsync="always")
    assert acked >= 50
    assert lost == set(), f"{len(lost)} of {acked} acknowledged messages were lost"
