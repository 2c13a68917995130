"""The web process's health endpoints: ``/livez`` answers while the process serves, whatever
Redis does; ``/readyz`` (and its older name ``/healthz``) says 503 while Redis is away, with a
reason that names no host or port, and 200 again once Redis is back; ``/metrics`` still answers
with what the process has."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from gateway.core.config import Secret
from gateway.edge.app import create_app
from gateway.observe.gauges import REFRESH_MAX_AGE_S
from gateway.store.embedded_redis import EmbeddedRedis
from tests.conftest import SimServer, stack_config, wait_for
from tests.support.scrape import scrape
from tests.support.servers import UvicornThread
from workers.http import RunnerProbe, WorkerHttp


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A Redis of this test's own, to stop and start again (the shared one serves other tests)."""
    server = EmbeddedRedis(tmp_path / "redis", persist=False)
    server.start()
    yield server
    server.stop()


def _status(url: str) -> int:
    return httpx.get(url, timeout=10).status_code


def test_readyz_follows_redis_while_livez_stays_up(own_redis: EmbeddedRedis, sim: SimServer, tmp_path: Path) -> None:
    config = stack_config(sim.url, "http://127.0.0.1:9")
    edge = UvicornThread(create_app(config, own_redis.url))
    url = edge.start()
    try:
        assert httpx.get(f"{url}/readyz").json() == {"status": "ok"}
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
        assert _status(f"{url}/livez") == 200
        before = scrape(url)

        own_redis.stop()
        wait_for(lambda: _status(f"{url}/readyz") == 503, what="readyz to fail without Redis")
        refused = httpx.get(f"{url}/readyz")
        assert refused.json() == {"status": "unavailable", "reason": "redis unreachable"}
        assert str(own_redis.port) not in refused.text and "127.0.0.1" not in refused.text
        assert _status(f"{url}/healthz") == 503
        assert _status(f"{url}/livez") == 200
        # Metrics still answer, with the counters as they are and the gauges' last values; the
        # outage is counted once the refresh cached before it (REFRESH_MAX_AGE_S) has expired.
        errors_before = before.value("ocsgw_gauges_refresh_errors_total")
        wait_for(lambda: scrape(url).value("ocsgw_gauges_refresh_errors_total") >= errors_before + 1,
                 timeout=REFRESH_MAX_AGE_S + 10, what="the refresh failure counted")

        restarted = EmbeddedRedis(tmp_path / "redis", port=own_redis.port, persist=False)
        restarted.start()
        try:
            wait_for(lambda: _status(f"{url}/readyz") == 200, timeout=20, what="readyz once Redis is back")
            assert _status(f"{url}/livez") == 200
        finally:
            restarted.stop()
    finally:
        edge.stop()


def test_metrics_parse_before_any_traffic(own_redis: EmbeddedRedis, sim: SimServer) -> None:
    edge = UvicornThread(create_app(stack_config(sim.url, "http://127.0.0.1:9"), own_redis.url))
    url = edge.start()
    try:
        scraped = scrape(url)
        assert scraped.series("ocsgw_inbound_requests_total") == {}
        assert scraped.value("ocsgw_ocs_budget_limit", bot="demo", scope="session") == 300
        assert scraped.value("ocsgw_inbox_depth") == 0
    finally:
        edge.stop()


def test_readyz_fails_while_redis_answers_ping_but_refuses_writes(own_redis: EmbeddedRedis, sim: SimServer) -> None:
    """A full Redis under noeviction still answers PING while every webhook gets 503: readiness
    writes a small expiring key (at most every few seconds) and says so, naming no host."""
    edge = UvicornThread(create_app(stack_config(sim.url, "http://127.0.0.1:9"), own_redis.url))
    url = edge.start()
    admin = redis.Redis.from_url(own_redis.url)
    try:
        assert httpx.get(f"{url}/readyz").json() == {"status": "ok"}
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")  # below what Redis already uses: every write is refused
        assert admin.ping()
        wait_for(lambda: _status(f"{url}/readyz") == 503, what="readyz to see the refused writes")
        refused = httpx.get(f"{url}/readyz")
        assert refused.json() == {"status": "unavailable", "reason": "redis refuses writes"}
        assert str(own_redis.port) not in refused.text and "127.0.0.1" not in refused.text
        assert _status(f"{url}/livez") == 200

        admin.config_set("maxmemory", "0")
        wait_for(lambda: _status(f"{url}/readyz") == 200, what="readyz once Redis takes writes again")
    finally:
        admin.close()
        edge.stop()


def test_a_metrics_token_guards_metrics_and_leaves_the_probes_open(
    own_redis: EmbeddedRedis, sim: SimServer, tmp_path: Path
) -> None:
    token = "m-" + "7" * 30
    config = stack_config(sim.url, "http://127.0.0.1:9", metrics_token=Secret(token))
    edge = UvicornThread(create_app(config, own_redis.url))
    url = edge.start()
    try:
        assert _status(f"{url}/metrics") == 401
        wrong = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer " + "8" * 32})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        allowed = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {token}"})
        assert allowed.status_code == 200
        assert any(f.name == "ocsgw_inbound_requests" for f in text_string_to_metric_families(allowed.text))
        assert _status(f"{url}/livez") == 200 and _status(f"{url}/readyz") == 200  # orchestrators ask without credentials
    finally:
        edge.stop()
    # The worker's listener is guarded by the same token.
    probe = RunnerProbe(lambda: None)
    listener = WorkerHttp(probe, host="127.0.0.1", port=0, metrics_token=token)
    listener.start()
    try:
        assert _status(f"{listener.url}/metrics") == 401
        assert httpx.get(f"{listener.url}/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        listener.stop()
