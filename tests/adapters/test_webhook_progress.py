"""Webhook progress (issue 16): with ``show_progress: true`` each new progress line is one signed
``progress`` callback (the receiver verifies it); off by default; never retried, never raised."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from adapters.webhook.adapter import WebhookAdapter, progress_id
from gateway.config_loading import GatewayConfig
from gateway.core.channel import AdapterServices
from gateway.core.config import Secret
from gateway.core.keys import Keys
from gateway.core.models import Delivery, Outgoing
from tests.support.receiver import CallbackReceiver
from tests.support.servers import UvicornThread

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CHATBOT_ID = "6f1c2a9e-3b7d-4c1e-9a52-0d4e8b7f1a23"
ROUTE = {"conversation_id": "ticket-4711", "in_reply_to": "msg_1"}

MakeAdapter = Callable[..., WebhookAdapter]


@pytest.fixture
def receiver() -> Iterator[tuple[CallbackReceiver, str]]:
    receiver = CallbackReceiver(secret=SECRET)
    with UvicornThread(receiver.app()) as url:
        yield receiver, f"{url}/callback"


@pytest.fixture
async def make_adapter(receiver: tuple[CallbackReceiver, str], redis_url: str) -> AsyncIterator[MakeAdapter]:
    redis = aioredis.Redis.from_url(redis_url)
    http = httpx.AsyncClient()

    def build(**channel: Any) -> WebhookAdapter:
        config = GatewayConfig.from_mapping({
            "bots": {"demo": {"chatbot_id": CHATBOT_ID, "auth": "keyless"}},
            "channels": {"hook": {"type": "webhook", "bot": "demo", "secret": Secret(SECRET),
                                  "callback_url": receiver[1], **channel}},
        })
        services = AdapterServices(config=config, http=http, redis=redis, keys=Keys())
        channel_config = config.channels["hook"]
        assert channel_config.type == "webhook"
        return WebhookAdapter("hook", channel_config, config.bots["demo"], services)

    yield build
    await http.aclose()
    await redis.aclose()


async def test_progress_is_off_unless_the_channel_opts_in(
    make_adapter: MakeAdapter, receiver: tuple[CallbackReceiver, str]
) -> None:
    adapter = make_adapter()
    assert adapter.config.show_progress is False
    assert await adapter.show_progress(ROUTE, "Searching the knowledge base", "turn-1") is False
    assert receiver[0].attempts == 0


async def test_each_new_line_is_one_signed_progress_callback(
    make_adapter: MakeAdapter, receiver: tuple[CallbackReceiver, str]
) -> None:
    adapter = make_adapter(show_progress=True)
    for line in ("Searching the knowledge base", "Searching the knowledge base", "Writing the answer"):
        assert await adapter.show_progress(ROUTE, line, "turn-1") is True
    got = receiver[0]
    assert got.attempts == 2  # the repeat is not sent again
    assert got.received[0] == {
        "type": "progress", "kind": "progress", "conversation_id": "ticket-4711", "in_reply_to": "msg_1",
        "text": "Searching the knowledge base",
    }
    assert got.webhook_ids == [progress_id("turn-1", "Searching the knowledge base"), progress_id("turn-1", "Writing the answer")]
    await adapter.send(ROUTE, Outgoing(text="Yes.", hints={"kind": "answer"}), Delivery(id="reply-1.0"))
    assert got.texts() == ["Yes."] and got.progress() == ["Searching the knowledge base", "Writing the answer"]


async def test_a_progress_id_is_stable_per_turn_and_line() -> None:
    assert progress_id("turn-1", "a") == progress_id("turn-1", "a")
    assert len({progress_id("turn-1", "a"), progress_id("turn-1", "b"), progress_id("turn-2", "a")}) == 3


async def test_a_failing_receiver_is_told_each_line_once_and_nothing_is_raised(
    make_adapter: MakeAdapter, receiver: tuple[CallbackReceiver, str]
) -> None:
    got = receiver[0]
    got.fail_with = [503, 503, 503]
    adapter = make_adapter(show_progress=True)
    assert await adapter.show_progress(ROUTE, "Searching", "turn-1") is False
    assert await adapter.show_progress(ROUTE, "Searching", "turn-1") is True  # sent once; not retried at every poll
    assert got.attempts == 1
    assert await adapter.show_progress(ROUTE, "Writing", "turn-1") is False
    assert got.attempts == 2


async def test_an_unreachable_receiver_answers_false(make_adapter: MakeAdapter) -> None:
    adapter = make_adapter(show_progress=True, callback_url="http://127.0.0.1:9/callback")
    assert await adapter.show_progress(ROUTE, "Searching", "turn-1") is False


async def test_a_blank_line_sends_nothing(make_adapter: MakeAdapter, receiver: tuple[CallbackReceiver, str]) -> None:
    adapter = make_adapter(show_progress=True)
    assert await adapter.show_progress(ROUTE, " \n", "turn-1") is False
    assert receiver[0].attempts == 0
