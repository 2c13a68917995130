"""The metrics move by exactly what happened: one signed webhook through the edge, a worker, the
OCS simulator and the callback; a forged one; a redelivered one; an unknown channel; an oversized
body. Read from the web process's and the worker's ``/metrics`` as Prometheus would."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.core.config import BotConfig
from gateway.core.errors import OCSRejected, OCSUnavailable, StoreUnavailable
from gateway.core.keys import Keys
from gateway.core.metrics import Metrics, ocs_status_label
from gateway.core.models import ConversationKey, Inbound, InboundKind
from gateway.edge.inbound_metrics import counted_admit
from gateway.ocs.client import OCSClient
from gateway.store.embedded_redis import EmbeddedRedis
from gateway.store.inbox import Admitter
from gateway.store.traffic import ChannelTraffic, TrafficRecorder, read_traffic
from tests.conftest import Stack, settled, wait_for
from tests.support.scrape import Scrape, scrape
from tests.support.servers import free_port

#: A budget window no test run straddles (windows are aligned to the epoch).
_LONG_WINDOW = {"bots": {"demo": {"budget": {"window_s": 1_000_000}}}}
_WORKER_HTTP = {"worker": {"metrics_port": 0, "metrics_host": "127.0.0.1"}}


def _worker_url(stack: Stack) -> str:
    http: Any = getattr(stack.worker, "http", None)
    assert http is not None, "the worker's HTTP listener is not running"
    return str(http.url)


def _inbound(s: Scrape) -> dict[frozenset[tuple[str, str]], float]:
    return s.series("ocsgw_inbound_requests_total")


def _moved(
    before: dict[frozenset[tuple[str, str]], float], after: dict[frozenset[tuple[str, str]], float]
) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: after[labels] - before.get(labels, 0.0) for labels in after if after[labels] != before.get(labels, 0.0)}


def _labels(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


def test_one_turn_moves_each_counter_by_exactly_its_share(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(**_LONG_WINDOW, **_WORKER_HTTP)
    worker_url = _worker_url(stack)

    assert stack.say("m1", "hello").status_code == 200
    wait_for(lambda: stack.receiver.texts("m1"), what="the answer")
    settled(stack.redis)
    edge, worker = scrape(stack.url), scrape(worker_url)

    assert _inbound(edge) == {_labels(channel="hooks", kind="webhook", outcome="accepted"): 1.0}
    assert edge.value("ocsgw_inbound_ack_seconds_count", channel="hooks") == 1

    ocs = {labels: v for labels, v in worker.series("ocsgw_ocs_requests_total").items()}
    by_endpoint: dict[str, float] = {}
    for labels, count in ocs.items():
        found = dict(labels)
        assert found["bot"] == "demo" and found["status"].startswith("2"), found
        by_endpoint[found["endpoint"]] = by_endpoint.get(found["endpoint"], 0) + count
    polls = by_endpoint.pop("task")
    assert by_endpoint == {"token": 1, "start": 1, "send": 1}
    assert polls >= 1
    assert worker.value("ocsgw_ocs_token_refreshes_total", bot="demo") == 1
    assert worker.value("ocsgw_task_polls_per_turn_count", bot="demo") == 1
    assert worker.value("ocsgw_task_polls_per_turn_sum", bot="demo") == polls

    assert worker.series("ocsgw_platform_sends_total") == {_labels(channel="hooks", outcome="ok"): 1.0}
    assert worker.value("ocsgw_reply_delay_seconds_count", bot="demo") == 1
    assert worker.series("ocsgw_turn_seconds_count") == {_labels(bot="demo", outcome="answered"): 1.0}
    assert worker.value("ocsgw_housekeeping_errors_total", task="sweep") == 0
    assert worker.value("ocsgw_housekeeping_ticks_total", task="sweep") >= 1
    # The worker received no HTTP request: the edge counts inbound, the worker does not.
    assert _inbound(worker) == {}

    # The budget gauges read back what gateway/ocs/budget.py booked for those requests.
    for scraped in (edge, worker):
        assert scraped.value("ocsgw_ocs_budget_used", bot="demo", scope="origin") == sum(ocs.values())
        assert scraped.value("ocsgw_ocs_budget_used", bot="demo", scope="session") == 1 + polls
        assert scraped.value("ocsgw_ocs_budget_used", bot="demo", scope="starts") == 1
        assert scraped.value("ocsgw_ocs_budget_limit", bot="demo", scope="origin") == 2000
        assert scraped.value("ocsgw_workers_alive") == 1
        assert scraped.value("ocsgw_inbox_depth") == 0
        assert scraped.value("ocsgw_watched_sessions") == 1  # the answered session is watched now


def test_a_callback_429_counts_as_rate_limited_and_a_503_as_an_error(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(**_WORKER_HTTP)
    # Retry-After: 0, so the retries wait only the engine's short test backoff.
    stack.receiver.fail_headers = {"Retry-After": "0"}
    stack.receiver.fail_with = [429, 503]
    assert stack.say("m1", "hello").status_code == 200
    wait_for(lambda: stack.receiver.texts("m1"), what="the answer after a 429 and a 503")
    settled(stack.redis)
    assert scrape(_worker_url(stack)).series("ocsgw_platform_sends_total") == {
        _labels(channel="hooks", outcome="rate_limited"): 1.0,
        _labels(channel="hooks", outcome="error"): 1.0,
        _labels(channel="hooks", outcome="ok"): 1.0,
    }


def test_a_forged_signature_moves_invalid_signature_by_one_and_nothing_else(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(start_worker=False)
    before = scrape(stack.url)
    forged = stack.say("m1", "hello", secret="whsec_" + "A" * 32)
    assert forged.status_code == 401
    after = scrape(stack.url)
    assert _moved(_inbound(before), _inbound(after)) == {
        _labels(channel="hooks", kind="webhook", outcome="invalid_signature"): 1.0
    }
    assert stack.redis.zcard(Keys().active) == 0


def test_a_redelivered_event_moves_duplicate_by_one(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(start_worker=False)
    assert stack.say("m1", "once", msg_id="msg_same").status_code == 200
    before = scrape(stack.url)
    assert stack.say("m1", "once", msg_id="msg_same").status_code == 200
    after = scrape(stack.url)
    assert _moved(_inbound(before), _inbound(after)) == {_labels(channel="hooks", kind="webhook", outcome="duplicate"): 1.0}


def test_refusals_are_counted_under_bounded_labels(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(start_worker=False, max_body_bytes=2048)
    unknown = stack.say("m1", "hi", channel="no-such-channel-4711")
    assert unknown.status_code == 404
    too_large = stack.say("m1", "x" * 4096)
    assert too_large.status_code == 413
    bad_body = stack.post_webhook(b"[1, 2, 3]")
    assert bad_body.status_code == 400
    counted = _inbound(scrape(stack.url))
    assert counted == {
        # A channel name the sender made up never becomes a label.
        _labels(channel="-", kind="webhook", outcome="unknown_channel"): 1.0,
        _labels(channel="hooks", kind="webhook", outcome="too_large"): 1.0,
        _labels(channel="hooks", kind="webhook", outcome="invalid_payload"): 1.0,
    }


def test_the_redis_gauges_show_waiting_work(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(start_worker=False)
    for conversation, text in (("a", "one"), ("a", "two"), ("b", "three")):
        assert stack.say(conversation, text).status_code == 200
    edge = scrape(stack.url)
    assert edge.value("ocsgw_inbox_depth") == 3
    assert edge.value("ocsgw_active_conversations") == 2
    assert edge.value("ocsgw_turns_in_flight", state="queued") == 2
    assert edge.value("ocsgw_turns_in_flight", state="sent") == 0
    assert 0 <= edge.value("ocsgw_oldest_waiting_turn_age_seconds") < 60
    assert edge.value("ocsgw_workers_alive") == 0
    assert edge.value("ocsgw_dead_letters") == 0


def test_listener_events_are_counted_where_they_are_stored(redis_url: str) -> None:
    """Socket Mode and long polling have no HTTP request: their events count as they are admitted,
    in Prometheus and in the console's per-minute traffic alike."""
    metrics = Metrics()

    async def admit_twice_then_fail() -> ChannelTraffic:
        client = aioredis.Redis.from_url(redis_url)
        keys = Keys("listener-counts")
        traffic = TrafficRecorder(client, keys, ["tg"])
        admit = counted_admit(Admitter(client, keys, dedup_ttl_s=60, wake=None), metrics, traffic, channel="tg", kind="telegram")
        event = Inbound(ConversationKey("tg", "42"), event_id="u1", kind=InboundKind.MESSAGE, sender_id="7")
        nowhere = aioredis.Redis(port=free_port(), socket_connect_timeout=2)  # nothing listens there
        try:
            assert await admit(event) is True
            assert await admit(event) is False
            with pytest.raises(StoreUnavailable):
                await counted_admit(
                    Admitter(nowhere, keys, dedup_ttl_s=60, wake=None), metrics, traffic, channel="tg", kind="telegram"
                )(event)
            await traffic.flush()
            return (await read_traffic(client, keys, ["tg"]))["tg"]
        finally:
            await nowhere.aclose()
            await client.aclose()

    seen = asyncio.run(admit_twice_then_fail())
    count = metrics.registry.get_sample_value
    for outcome in ("accepted", "duplicate", "unavailable"):
        assert count("ocsgw_inbound_requests_total", {"channel": "tg", "kind": "telegram", "outcome": outcome}) == 1
    assert seen.last_5m == {"ok": 2, "4xx": 0, "5xx": 1}


def test_a_client_hanging_up_mid_body_counts_as_client_disconnected_not_as_a_failure(
    make_stack: Callable[..., Stack], caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone who knows a channel's URL can start a body and hang up: that is the sender's doing,
    so it is neither the ``error`` the critical alert watches nor a 5xx in the console."""
    stack = make_stack(start_worker=False)
    port = int(stack.url.rsplit(":", 1)[1])
    half = (
        b"POST /webhooks/hooks HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5000\r\n\r\n{\"conversation_id\":"
    )
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(half)
    disconnected = _labels(channel="hooks", kind="webhook", outcome="client_disconnected")
    counted = wait_for(lambda: _inbound(scrape(stack.url)).get(disconnected) == 1.0 and _inbound(scrape(stack.url)),
                       what="the hang-up to be counted")
    assert counted == {disconnected: 1.0}

    async def console() -> ChannelTraffic:
        client = aioredis.Redis.from_url(stack.redis_url)
        try:
            return (await read_traffic(client, Keys(), ["hooks"]))["hooks"]
        finally:
            await client.aclose()

    seen = wait_for(lambda: (t := asyncio.run(console())).last_5m != {"ok": 0, "4xx": 0, "5xx": 0} and t,
                    timeout=20, what="the traffic recorder's flush")
    assert seen.last_5m == {"ok": 0, "4xx": 1, "5xx": 0}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a hang-up logged an error"


async def test_ocs_status_codes_outside_the_known_set_count_under_their_class(redis_url: str) -> None:
    """A proxy in front of OCS may answer any three digits; each must not become a series."""
    answers = iter([418, 521, 599, 503])

    async def start(request: Request) -> Response:
        return JSONResponse({"detail": "no"}, status_code=next(answers))

    metrics = Metrics()
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=Starlette(routes=[Route("/api/chat/start/", start, methods=["POST"])])))
    redis = aioredis.Redis.from_url(redis_url)
    bot = BotConfig(base_url="http://ocs.test", chatbot_id=str(uuid.uuid4()), auth="keyless")
    client = OCSClient(name="demo", bot=bot, http=http, redis=redis, keys=Keys("status-fold"), metrics=metrics)
    try:
        for _ in range(4):
            with pytest.raises((OCSRejected, OCSUnavailable)):
                await client.start_session(remote_id="r-1", name=None)
    finally:
        await http.aclose()
        await redis.aclose()
    counted = {
        dict(sample.labels)["status"]: sample.value
        for family in metrics.registry.collect() if family.name == "ocsgw_ocs_requests"
        for sample in family.samples if sample.name.endswith("_total")
    }
    assert counted == {"4xx": 1.0, "5xx": 2.0, "503": 1.0}
    assert [ocs_status_label(code) for code in (200, 429, 507, 99, 1000)] == ["200", "429", "5xx", "other", "other"]


def test_traffic_counts_wait_out_a_redis_outage_only_for_the_window_they_are_read_in(tmp_path: Path) -> None:
    """While Redis is away the counts stay in memory; those older than the 60 minutes the
    summary reads are dropped instead of piling up for the whole outage."""
    server = EmbeddedRedis(tmp_path / "redis", persist=False)
    server.start()
    keys = Keys("traffic-outage")
    now = time.time()

    async def through_an_outage() -> dict[str, ChannelTraffic]:
        client = aioredis.Redis.from_url(server.url, socket_connect_timeout=2)
        recorder = TrafficRecorder(client, keys, ["hooks"])
        try:
            server.stop()
            recorder.note("hooks", 200, now=now - 2 * 3600)  # noted two hours into the outage's past
            recorder.note("hooks", 503, now=now - 30 * 60)
            recorder.note("hooks", 200, now=now)
            await recorder.flush(now=now)  # Redis away: kept for later
            restarted = EmbeddedRedis(tmp_path / "redis", port=server.port, persist=False)
            restarted.start()
            try:
                await recorder.flush(now=now)
                old_minute = int((now - 2 * 3600) // 60)
                assert await client.exists(keys.traffic("hooks", old_minute)) == 0
                return await read_traffic(client, keys, ["hooks"], now=now)
            finally:
                await client.aclose()
                restarted.stop()
        finally:
            server.stop()

    seen = asyncio.run(through_an_outage())["hooks"]
    assert seen.last_60m == {"ok": 1, "4xx": 0, "5xx": 1}
