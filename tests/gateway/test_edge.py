"""The HTTP edge refuses bad input with a clear 4xx, and never acknowledges what it did not
store."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
import redis

from gateway.edge.app import create_app
from gateway.store.embedded_redis import EmbeddedRedis
from tests.conftest import SimServer, Stack, stack_config
from tests.support.servers import UvicornThread

BODY = {"conversation_id": "c1", "sender": {"id": "u1"}, "text": "hi"}


@pytest.fixture
def edge(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(start_worker=False)


def _inbox_len(stack: Stack, conversation: str = "c1") -> int:
    return int(stack.redis.llen(f"ocsgw:inbox:hooks/{conversation}"))


def test_valid_message_is_stored_before_the_200(edge: Stack) -> None:
    assert edge.post_webhook(BODY).status_code == 200
    assert _inbox_len(edge) == 1


def test_bad_signature_is_refused_with_401_and_nothing_stored(edge: Stack) -> None:
    response = edge.post_webhook(BODY, secret="whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB")
    assert response.status_code == 401
    assert "signature" in response.json()["error"]
    assert _inbox_len(edge) == 0


def test_stale_timestamp_is_refused_with_401(edge: Stack) -> None:
    response = edge.post_webhook(BODY, timestamp=int(time.time()) - 600)
    assert response.status_code == 401
    assert "too old" in response.json()["error"]


def test_oversized_body_is_refused_with_413(edge: Stack) -> None:
    big = {**BODY, "text": "x" * (edge.config.max_body_bytes + 1)}
    response = edge.post_webhook(big)
    assert response.status_code == 413
    assert _inbox_len(edge) == 0


def test_malformed_json_is_refused_with_400_and_a_reason(edge: Stack) -> None:
    response = edge.post_webhook(b'{"conversation_id": "c1", ')
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]


def test_missing_field_is_refused_with_400_naming_it(edge: Stack) -> None:
    response = edge.post_webhook({"sender": {"id": "u1"}, "text": "hi"})
    assert response.status_code == 400
    assert "conversation_id" in response.json()["error"]


def test_empty_message_is_refused_with_400(edge: Stack) -> None:
    response = edge.post_webhook({**BODY, "text": "  "})
    assert response.status_code == 400


def test_unknown_channel_is_404(edge: Stack) -> None:
    response = edge.post_webhook(BODY, channel="nope")
    assert response.status_code == 404


def test_redelivered_webhook_id_is_acknowledged_but_stored_once(edge: Stack) -> None:
    assert edge.post_webhook(BODY, msg_id="msg_same").status_code == 200
    assert edge.post_webhook(BODY, msg_id="msg_same").status_code == 200
    assert _inbox_len(edge) == 1


def test_redis_down_at_ingest_gives_503_and_the_retry_is_stored(tmp_path, sim: SimServer) -> None:
    server = EmbeddedRedis(tmp_path / "redis", persist=False)
    url = server.start()
    config = stack_config(sim.url, "http://127.0.0.1:9")
    edge = UvicornThread(create_app(config, url))
    base = edge.start()
    try:
        stack = Stack(base, sim, None, redis.Redis.from_url(url), config, url)  # type: ignore[arg-type]
        server.stop()
        response = stack.post_webhook(BODY, msg_id="msg_retry")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "5"
        # The platform retries once Redis is back: the same id is not taken for a duplicate.
        server = EmbeddedRedis(tmp_path / "redis", port=server.port, persist=False)
        server.start()
        deadline = time.monotonic() + 10
        while True:
            response = stack.post_webhook(BODY, msg_id="msg_retry")
            if response.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert response.status_code == 200
        assert stack.redis.llen("ocsgw:inbox:hooks/c1") == 1
    finally:
        edge.stop()
        server.stop()


def test_health_reports_redis(edge: Stack) -> None:
    assert httpx.get(f"{edge.url}/healthz").json() == {"status": "ok"}


# -- the channel listing at / --------------------------------------------------------------------

METRICS_TOKEN = "m-" + "5" * 30


def test_with_a_metrics_token_the_channel_listing_needs_it_and_a_refusal_names_nothing(
    make_stack: Callable[..., Stack],
) -> None:
    from gateway.core.config import Secret

    guarded = make_stack(start_worker=False, metrics_token=Secret(METRICS_TOKEN))
    wrong = {"Authorization": "Bearer " + "6" * 32}
    for headers in ({}, wrong, {"Authorization": METRICS_TOKEN}):  # none, wrong, not a bearer
        refused = httpx.get(f"{guarded.url}/", headers=headers)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert "hooks" not in refused.text and "webhooks" not in refused.text and "channels" not in refused.json()
        assert refused.json()["service"] == "ocs-gateway"
    # The same answer /metrics gives without the token: one check guards both.
    assert httpx.get(f"{guarded.url}/metrics").json() == httpx.get(f"{guarded.url}/").json()
    allowed = httpx.get(f"{guarded.url}/", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert allowed.status_code == 200 and allowed.json()["channels"]["hooks"]["path"] == "/webhooks/hooks"


def test_without_a_metrics_token_the_listing_is_open_like_metrics(edge: Stack) -> None:
    listing = httpx.get(f"{edge.url}/")
    assert listing.status_code == 200 and "hooks" in listing.json()["channels"]
    assert httpx.get(f"{edge.url}/metrics").status_code == 200  # the same names, as open
