"""Redis you can lose: the primary is SIGKILLed under load and Sentinel promotes a replica; every
message the edge acknowledged is answered, none reaches OCS twice, each conversation's stay in
order. Real ``redis-server`` processes (a primary, two replicas, three Sentinels) on loopback
(tests/support/redis_group.py); the edge and a worker follow the master through Sentinel
(gateway/store/connect.py).

The attack: just before the kill the replication stream is cut (the replicas follow the primary
through a TCP proxy), so the writes the primary takes meanwhile are on no replica when it dies — the replication lag a crash exposes, made as
large as it gets. With ``durable_replicas: 1`` the edge answers those 503 (``WAIT`` times out)
and the platform's retries land on the promoted replica; with ``durable_replicas: 0`` they were
acknowledged and are gone. ``OCSGW_FAILOVER_DURABLE_REPLICAS=0`` runs the same test with 0 to
see it fail (figures in docs/OPERATIONS.md); the suite asserts the guarantee with 1.

Also here: a network cut between the gateway and its Redis (a TCP proxy that drops every
connection), during which the edge answers 503 and the worker's steps wait, and after which
everything is answered once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import redis

from adapters.webhook import signing
from gateway.ocs.client import LABEL_SEPARATOR
from tests.conftest import WEBHOOK_SECRET, Stack, wait_for, wait_while_progressing
from tests.support.redis_group import RedisGroup, TcpProxy

CONVERSATIONS = 12
MESSAGES = 8
#: What the test asserts; 0 shows the guarantee failing (the figures in docs/OPERATIONS.md).
DURABLE_REPLICAS = int(os.environ.get("OCSGW_FAILOVER_DURABLE_REPLICAS", "1"))
#: Short leases so that a worker whose step failed over picks its conversation up in seconds.
TUNING = {"lease_ttl_s": 3.0, "stall_grace_s": 1.0, "sweep_interval_s": 0.25, "reconcile_grace_s": 2.0}
#: The edge gives up on a WAIT after this: the platform then retries (a 503).
WAIT_MS = 1000
_EXPECTED = [f"m{n}" for n in range(MESSAGES)]


@dataclass
class Traffic:
    """What the sender saw: the messages acknowledged (200), and every refusal by status."""

    acknowledged: list[tuple[str, int]] = field(default_factory=list)
    refusals: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    #: Acknowledged while the replicas were paused (set by the test).
    during_pause: list[tuple[str, int]] = field(default_factory=list)
    paused: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def _conversation(index: int) -> str:
    return f"fo-{index:02d}"


async def _send(edge_url: str, traffic: Traffic, *, gap_s: float, deadline_s: float = 90) -> None:
    """Each conversation's messages in order, one after the other's 200, as a platform sends:
    a 503 or a dropped connection is retried under the same webhook-id until it is a 200."""
    key = signing.decode_secret(WEBHOOK_SECRET)
    give_up = time.monotonic() + deadline_s

    async def one(client: httpx.AsyncClient, index: int) -> None:
        conversation = _conversation(index)
        await asyncio.sleep(index * gap_s / CONVERSATIONS)
        for n in range(MESSAGES):
            body = httpx.Request("POST", "/", json={
                "conversation_id": conversation, "sender": {"id": f"u-{conversation}"}, "text": f"m{n}",
            }).content  # fmt: skip
            while True:
                headers = signing.signed_headers(key, f"msg_{conversation}_{n}", body)
                try:
                    response = await client.post(f"{edge_url}/webhooks/hooks", content=body, headers=headers)
                    status = response.status_code
                except httpx.TransportError:
                    status = 0
                if status == 200:
                    with traffic.lock:
                        traffic.acknowledged.append((conversation, n))
                        if traffic.paused:
                            traffic.during_pause.append((conversation, n))
                    break
                with traffic.lock:
                    traffic.refusals[status] += 1
                if time.monotonic() > give_up:
                    raise AssertionError(f"{conversation} m{n} still refused ({status}) after {deadline_s}s")
                await asyncio.sleep(0.1)
            await asyncio.sleep(gap_s)

    async with httpx.AsyncClient(timeout=30) as client:
        await asyncio.gather(*(one(client, i) for i in range(CONVERSATIONS)))


def _covered(texts: list[str]) -> list[str]:
    """The user messages these answers answer (a burst's answer echoes them all)."""
    return [m for text in texts for m in text.partition(": ")[2].split("\n\n")]


def _ocs_messages(stack: Stack, conversation: str) -> list[list[str]]:
    """Per OCS session of the conversation that got messages: the user messages it got, split
    where a burst joined several."""
    sessions = [s for s in stack.sim.state.list_sessions()
                if s.remote_id.split(LABEL_SEPARATOR)[0] == f"webhook:{conversation}"]
    return [[m for text in stack.sim.state.user_messages(s.id) for m in text.split("\n\n")]
            for s in sessions if stack.sim.state.user_messages(s.id)]


def _verdict(stack: Stack, traffic: Traffic, conversations: list[str]) -> dict[str, object]:
    """The figures: acknowledged, answered, lost, sent to OCS twice, out of order."""
    lost, twice, disordered = [], [], []
    for conversation in conversations:
        acked = sorted(n for c, n in traffic.acknowledged if c == conversation)
        answered = _covered(stack.receiver.texts(conversation))
        lost += [(conversation, n) for n in acked if f"m{n}" not in answered]
        sent = [m for session in _ocs_messages(stack, conversation) for m in session]
        twice += [(conversation, m) for m in set(sent) if sent.count(m) > 1]
        if sent != sorted(set(sent), key=lambda m: int(m[1:])) or answered != [m for m in sent if m in answered]:
            disordered.append(conversation)
    return {"acknowledged": len(traffic.acknowledged), "acknowledged while the replicas were paused":
            len(traffic.during_pause), "refusals": dict(traffic.refusals), "lost": lost, "sent to OCS twice": twice,
            "out of order": disordered}


@contextlib.contextmanager
def _refusal_reasons() -> Iterator[list[str]]:
    """The edge's reasons for its 503s (its "refusing inbound" log lines)."""
    reasons: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            reasons.append(record.getMessage()[:160])

    handler = Collect(logging.ERROR)
    edge_log = logging.getLogger("ocsgw.edge")
    edge_log.addHandler(handler)
    try:
        yield reasons
    finally:
        edge_log.removeHandler(handler)


def test_sigkill_of_the_primary_under_load_loses_no_acknowledged_message(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    began = time.monotonic()
    stages: dict[str, float] = {}
    with RedisGroup(tmp_path, replicas=2, sentinels=3, proxied_replication=True) as group, \
            _refusal_reasons() as reasons:
        stages["group up"] = time.monotonic() - began
        # A Sentinel down from the start: the other two still make the quorum (2) and the majority.
        group.kill_sentinel(group.sentinel_ports[0])
        stack = make_stack(
            redis_sentinel=group.config(), durable_replicas=DURABLE_REPLICAS, durable_timeout_ms=WAIT_MS,
            worker=TUNING,
        )
        stages["gateway up"] = time.monotonic() - began
        traffic = Traffic()
        conversations = [_conversation(i) for i in range(CONVERSATIONS)]
        old = group.first_primary
        sender = threading.Thread(target=lambda: asyncio.run(_send(stack.url, traffic, gap_s=0.15)), daemon=True)
        sender.start()
        # Under load: a third of the messages acknowledged, then the replicas stop following.
        wait_for(lambda: len(traffic.acknowledged) >= CONVERSATIONS * MESSAGES // 3, timeout=60,
                 what="a third of the messages acknowledged")
        # OCS slows down too, so that what is acknowledged now waits in the inboxes when the
        # primary dies (a fast OCS would have answered it from the doomed primary already).
        stack.sim.state.knobs.reply_latency_s = 3.0
        stages["load"] = time.monotonic() - began
        group.cut_replication()
        traffic.paused = True
        pause_started = len(traffic.acknowledged) + sum(traffic.refusals.values())
        # Long enough for the edge's WAITs to time out (or, with 0, for acknowledgements to pile up).
        wait_for(lambda: len(traffic.acknowledged) + sum(traffic.refusals.values()) >= pause_started + CONVERSATIONS,
                 timeout=30, what="requests answered while the replicas are paused")
        old.kill()  # SIGKILL: whatever only it held is gone
        traffic.paused = False
        stages["killed"] = time.monotonic() - began
        new_port = group.wait_failover(old.port, timeout=45)
        stages["promoted"] = time.monotonic() - began
        stack.sim.state.knobs.reply_latency_s = 0.05
        sender.join(timeout=120)
        stages["all acknowledged"] = time.monotonic() - began
        assert not sender.is_alive(), "the sender did not finish"

        def answered() -> int:
            return sum(len(set(_covered(stack.receiver.texts(c))) & set(_EXPECTED)) for c in conversations)

        wait_while_progressing(answered, len(traffic.acknowledged), stall_s=20)  # what is missing, the verdict says
        stages["answered"] = time.monotonic() - began
        figures = _verdict(stack, traffic, conversations)
        print(f"\nfailover with durable_replicas {DURABLE_REPLICAS}: primary {old.port} -> {new_port}; {figures}; "
              + ", ".join(f"{name} at {at:.1f}s" for name, at in stages.items())
              + f"; the edge's reasons: {sorted(set(reasons))[:8]}")
        with redis.Redis(port=new_port) as promoted:
            assert promoted.execute_command("ROLE")[0] == b"master"
        # While its Redis still runs: a stop requeues the messages the worker prefetched.
        stack.stop_worker()
    assert len(traffic.acknowledged) == CONVERSATIONS * MESSAGES
    assert figures["lost"] == [], f"acknowledged messages lost in the failover: {figures}"
    assert figures["sent to OCS twice"] == [], f"messages sent to OCS twice: {figures}"
    assert figures["out of order"] == [], f"conversations out of order: {figures}"
    if DURABLE_REPLICAS:
        # Nothing was acknowledged that only the dying primary held: the paused replicas made
        # every acknowledgement wait, and the WAITs timed out into 503s.
        assert traffic.refusals.get(503, 0) > 0
        assert figures["acknowledged while the replicas were paused"] == 0


def test_a_network_cut_between_the_gateway_and_redis_is_503_then_everything_is_answered_once(
    make_stack: Callable[..., Stack], redis_url: str
) -> None:
    parts = urlsplit(redis_url)
    with TcpProxy(parts.port or 6379) as proxy:
        stack = make_stack(redis_at=parts._replace(netloc=f"127.0.0.1:{proxy.port}").geturl(), worker=TUNING)
        traffic = Traffic()
        conversations = [_conversation(i) for i in range(CONVERSATIONS)]
        sender = threading.Thread(target=lambda: asyncio.run(_send(stack.url, traffic, gap_s=0.1)), daemon=True)
        sender.start()
        wait_for(lambda: len(traffic.acknowledged) >= CONVERSATIONS * MESSAGES // 3, timeout=60,
                 what="a third of the messages acknowledged")
        proxy.cut()
        refused_before = traffic.refusals.get(503, 0)
        wait_for(lambda: traffic.refusals.get(503, 0) >= refused_before + CONVERSATIONS, timeout=30,
                 what="the edge refusing while Redis is cut off")
        proxy.restore()
        sender.join(timeout=120)
        assert not sender.is_alive(), "the sender did not finish"

        def answered() -> int:
            return sum(len(set(_covered(stack.receiver.texts(c))) & set(_EXPECTED)) for c in conversations)

        wait_while_progressing(answered, len(traffic.acknowledged), stall_s=20)
        figures = _verdict(stack, traffic, conversations)
        print(f"\nnetwork cut: {figures}")
        stack.stop_worker()  # through the proxy, while it still runs
    assert len(traffic.acknowledged) == CONVERSATIONS * MESSAGES
    assert figures["lost"] == [] and figures["sent to OCS twice"] == [] and figures["out of order"] == [], figures
