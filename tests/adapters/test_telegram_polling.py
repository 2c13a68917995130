"""Telegram long polling (``mode: polling``): getUpdates against the fake Bot API, stored in a
real Redis before the offset confirms it, one poller per bot across replicas.

Each "replica" is its own ``TelegramAdapter`` with its own Bot (as in another process) and the
edge's ``Admitter`` (store only: no worker needed to prove what was stored, and how often).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from adapters.telegram.adapter import TelegramAdapter
from adapters.telegram.cli import delete_webhook
from adapters.telegram.keys import TelegramKeys
from adapters.telegram.polling import OFFSET_TTL_S, Poller, PollerSettings, PollLease
from gateway.config_loading import GatewayConfig
from gateway.core.channel import AdapterServices, Admit
from gateway.core.config import Secret
from gateway.core.keys import Keys
from gateway.core.models import ConversationKey, Inbound
from gateway.store.embedded_redis import EmbeddedRedis
from gateway.store.inbox import Admitter
from tests.adapters._telegram import TOKEN, gateway_config
from tests.conftest import Stack, wait_for
from tests.fakes.telegram_api import FakeTelegram, fake_telegram, message_update  # noqa: F401 - fixture

USER = 4242
KEYS = Keys()
CONV = ConversationKey("tg", f"chat:{USER}")
BOT_ID = TOKEN.split(":")[0]
POLLING = {"mode": "polling", "poll_timeout_s": 1, "poll_lease_ttl_s": 2.0}


async def eventually(predicate: Callable[[], Any], *, timeout: float = 15.0, what: str) -> Any:
    """Poll ``predicate`` (sync, or returning an awaitable) until truthy, without blocking the loop."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Replica:
    """One gateway process's listener for channel ``tg``."""

    adapter: TelegramAdapter
    config: GatewayConfig
    stop: asyncio.Event
    task: asyncio.Task[None]

    async def halt(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, timeout=10)
        await self.adapter.aclose()


@dataclass
class Env:
    fake: FakeTelegram
    redis: aioredis.Redis
    http: httpx.AsyncClient

    async def adapter(self, **settings: Any) -> tuple[TelegramAdapter, GatewayConfig]:
        config = gateway_config(self.fake.url, {"tg": {**POLLING, **settings}})
        services = AdapterServices(config=config, http=self.http, redis=self.redis, keys=KEYS)
        channel = config.channels["tg"]
        assert channel.type == "telegram"
        adapter = TelegramAdapter("tg", channel, config.bots["demo"], services)
        await adapter.startup()
        return adapter, config

    async def start(self, *, admit: Admit | None = None, **settings: Any) -> Replica:
        adapter, config = await self.adapter(**settings)
        stop = asyncio.Event()
        admitter = admit or Admitter(self.redis, KEYS, dedup_ttl_s=3600, wake=None)
        return Replica(adapter, config, stop, asyncio.create_task(adapter.listen(admitter, stop)))

    async def stored(self, conv: ConversationKey = CONV) -> list[str]:
        """Event ids in the conversation's inbox, in order."""
        items = await self.redis.lrange(KEYS.inbox(conv), 0, -1)
        return [Inbound.from_json(item).event_id for item in items]

    def push(self, update_id: int, text: str = "hi") -> None:
        self.fake.push_update(TOKEN, message_update(update_id, chat_id=USER, user_id=USER, text=text))


@pytest.fixture
async def env(fake_telegram: FakeTelegram, redis_url: str) -> AsyncIterator[Env]:
    fake_telegram.add_bot(TOKEN, username="clinic_bot")
    redis = aioredis.Redis.from_url(redis_url)
    async with httpx.AsyncClient() as http:
        yield Env(fake_telegram, redis, http)
    await redis.aclose()


async def test_updates_are_stored_then_confirmed_by_the_next_offset(env: Env) -> None:
    replica = await env.start()
    try:
        env.push(1, "one")
        env.push(2, "two")
        await eventually(lambda: env.fake.pending_updates(TOKEN) == [], what="both updates confirmed")
        assert await env.stored() == ["1", "2"]
        # Confirmed by offset = last update_id + 1 (docs/PLATFORMS.md §1.3); the fake records a long
        # poll when it ends.
        await eventually(lambda: [c for c in env.fake.calls("getUpdates") if c.params.get("offset") == 3],
                         what="a getUpdates with offset 3")
        assert await env.redis.get(TelegramKeys.of(KEYS).poll_offset(TOKEN.split(":")[0])) == b"3"
    finally:
        await replica.halt()


def offsets_sent(fake: FakeTelegram) -> list[int | None]:
    """The ``offset`` of every finished getUpdates call, in order (None: sent without one)."""
    return [c.params.get("offset") for c in fake.calls("getUpdates")]


class Clock:
    """Wall time the test moves by hand (a silent week in no time)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def clocked_poller(env: Env, clock: Clock) -> Replica:
    """The channel's poller as ``TelegramAdapter.listen`` builds it, but on ``clock``."""
    adapter, config = await env.adapter()
    settings = PollerSettings(channel="tg", bot_id=BOT_ID, timeout_s=1, lease_ttl_s=2.0)
    lease = PollLease(env.redis, KEYS, BOT_ID, settings.lease_ttl_s)
    # The adapter's own getUpdates and parse, so the fake sees what a real listener sends.
    poller = Poller(settings, lease, fetch=adapter._get_updates, parse=adapter._parse_raw, clock=clock)
    stop = asyncio.Event()
    admitter = Admitter(env.redis, KEYS, dedup_ttl_s=3600, wake=None)
    return Replica(adapter, config, stop, asyncio.create_task(poller.run(admitter, stop)))


async def test_after_a_silence_past_the_offsets_life_updates_with_restarted_ids_are_still_received(env: Env) -> None:
    clock = Clock()
    replica = await clocked_poller(env, clock)
    try:
        env.push(700, "before the silence")
        await eventually(lambda: 701 in offsets_sent(env.fake), what="update 700 confirmed by offset 701")
        assert await env.stored() == ["700"]
        asked_without = offsets_sent(env.fake).count(None)

        # A week without updates: Telegram's next update_id is random (docs/PLATFORMS.md §1.3), here
        # lower than the offset held, which would confirm (drop) it unseen.
        clock.now += 7 * 24 * 3600
        await eventually(lambda: offsets_sent(env.fake).count(None) > asked_without, what="a poll without an offset")
        env.push(5, "after the silence")
        await eventually(lambda: env.fake.pending_updates(TOKEN) == [], what="update 5 confirmed")
        assert await env.stored() == ["700", "5"]
        assert await env.redis.get(TelegramKeys.of(KEYS).poll_offset(BOT_ID)) == b"6"
    finally:
        await replica.halt()


async def test_a_replica_taking_over_keeps_the_saved_offset_only_for_the_rest_of_its_life(env: Env) -> None:
    # Another replica saved this offset; an hour of its life is left.
    await env.redis.set(TelegramKeys.of(KEYS).poll_offset(BOT_ID), 701, ex=3600)
    clock = Clock()
    replica = await clocked_poller(env, clock)
    try:
        await eventually(lambda: offsets_sent(env.fake), what="a first poll")
        assert set(offsets_sent(env.fake)) == {701}
        clock.now += 2 * 3600
        await eventually(lambda: None in offsets_sent(env.fake), what="a poll without an offset")
        env.push(5, "after the silence")
        await eventually(lambda: env.fake.pending_updates(TOKEN) == [], what="update 5 confirmed")
        assert await env.stored() == ["5"]
    finally:
        await replica.halt()


async def test_updates_fetched_while_redis_is_down_are_not_confirmed_and_stored_once_it_is_back(
    fake_telegram: FakeTelegram, tmp_path: Path
) -> None:
    fake_telegram.add_bot(TOKEN, username="clinic_bot")
    server = EmbeddedRedis(tmp_path / "redis", persist=True)
    server.start()
    redis = aioredis.Redis.from_url(server.url, socket_connect_timeout=0.5, socket_timeout=2)
    async with httpx.AsyncClient() as http:
        env = Env(fake_telegram, redis, http)
        replica = await env.start()
        try:
            env.push(1, "before")
            await eventually(lambda: env.fake.pending_updates(TOKEN) == [], what="update 1 confirmed")

            server.stop()
            env.push(2, "while down")
            await eventually(lambda: 2 in env.fake.fetched_updates(TOKEN), what="update 2 fetched")
            await eventually(lambda: env.fake.fetched_updates(TOKEN).count(2) >= 2, what="update 2 fetched again")
            assert env.fake.pending_updates(TOKEN) == [2]  # fetched, never confirmed

            server = EmbeddedRedis(tmp_path / "redis", port=server.port, persist=True)
            server.start()
            await eventually(lambda: env.fake.pending_updates(TOKEN) == [], what="update 2 confirmed")
            assert await env.stored() == ["1", "2"]
        finally:
            await replica.halt()
            await redis.aclose()
            server.stop()


async def test_a_crash_between_store_and_confirm_stores_the_update_once(env: Env) -> None:
    admitter = Admitter(env.redis, KEYS, dedup_ttl_s=3600, wake=None)

    async def store_then_die(inbound: Inbound) -> bool:
        stored = await admitter(inbound)
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # the process dies here: stored, offset neither saved nor sent
        await asyncio.sleep(0)
        return stored

    first = await env.start(admit=store_then_die)
    env.push(1, "only once")
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(first.task, timeout=15)
    await first.adapter.aclose()
    assert await env.stored() == ["1"]
    assert env.fake.pending_updates(TOKEN) == [1]

    restarted = await env.start()
    try:
        await eventually(lambda: env.fake.pending_updates(TOKEN) == [], what="update 1 confirmed")
        assert env.fake.fetched_updates(TOKEN) == [1, 1]  # handed out again after the crash...
        assert await env.stored() == ["1"]  # ...and stored once
    finally:
        await restarted.halt()


async def test_two_replicas_poll_one_at_a_time_and_the_other_takes_over(env: Env) -> None:
    first = await env.start()
    await eventually(lambda: env.fake.calls("getUpdates"), what="the first replica polling")
    second = await env.start()
    try:
        for update_id in range(1, 7):
            env.push(update_id, f"m{update_id}")
            await asyncio.sleep(0.1)
        await eventually(lambda: env.fake.pending_updates(TOKEN) == [], what="six updates confirmed")
        assert await env.stored() == [str(n) for n in range(1, 7)]
        # Two pollers at once would end each other's calls with 409 (docs/PLATFORMS.md §1.3).
        assert [c for c in env.fake.calls("getUpdates") if c.status == 409] == []

        await first.halt()
        for update_id in range(7, 10):
            env.push(update_id, f"m{update_id}")
        await eventually(lambda: env.fake.pending_updates(TOKEN) == [], what="the second replica polling")
        assert await env.stored() == [str(n) for n in range(1, 10)]
    finally:
        if not first.task.done():
            await first.halt()
        await second.halt()


async def test_the_poll_lease_is_held_by_one_owner_and_checked_before_renew_and_release(env: Env) -> None:
    one = PollLease(env.redis, KEYS, "777", ttl_s=5)
    two = PollLease(env.redis, KEYS, "777", ttl_s=5)
    assert await one.acquire()
    assert not await two.acquire()
    assert not await two.renew()
    await two.release()  # not its own: nothing happens
    assert await one.renew()
    assert not await two.save_offset(9)
    assert await one.save_offset(9)
    saved = await two.load_offset()
    assert saved is not None and saved.next_id == 9 and 0 < saved.ttl_s <= OFFSET_TTL_S
    await one.release()
    assert await two.acquire()


async def test_a_webhook_still_set_is_reported_with_the_fix_and_polling_starts_once_deleted(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="adapters.telegram.polling")
    env.fake.bots[TOKEN].webhook = {"url": "https://old-host.example/telegram/tg", "max_connections": 40}
    replica = await env.start()
    try:
        await eventually(
            lambda: [c for c in env.fake.calls("getUpdates") if c.status == 409], what="getUpdates refused"
        )
        await eventually(lambda: "delete-webhook --channel tg" in caplog.text, what="the fix logged")
        assert not replica.task.done()  # the listener keeps trying

        report = await delete_webhook(replica.config, "tg", http=env.http)
        assert "Webhook deleted" in report and "a webhook is set" not in report
        env.push(1, "after the fix")
        await eventually(lambda: env.fake.pending_updates(TOKEN) == [], what="update 1 confirmed")
        assert await env.stored() == ["1"]
    finally:
        await replica.halt()


def test_a_polling_channel_answers_end_to_end_and_refuses_webhook_posts(
    fake_telegram: FakeTelegram, make_stack: Callable[..., Stack]
) -> None:
    fake_telegram.add_bot(TOKEN, username="clinic_bot")
    stack = make_stack(channels={"tg": {
        "type": "telegram", "bot": "demo", "token": Secret(TOKEN), "api_base_url": fake_telegram.url, **POLLING,
    }})
    fake_telegram.push_update(TOKEN, message_update(1, chat_id=USER, user_id=USER, text="hello"))
    texts = wait_for(lambda: fake_telegram.sent_texts(USER, token=TOKEN), what="a reply")
    assert texts == ["Echo #1: hello"]
    posted = stack.http.post(f"{stack.url}/telegram/tg", json=message_update(2, chat_id=USER, user_id=USER, text="x"))
    assert posted.status_code in (401, 403)



def test_the_quickstart_polls_telegram_when_given_only_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.cli.demo import DEMO_TELEGRAM_CHANNEL, TELEGRAM_TOKEN_ENV, demo_config

    monkeypatch.delenv(TELEGRAM_TOKEN_ENV, raising=False)
    assert DEMO_TELEGRAM_CHANNEL not in demo_config("http://127.0.0.1:8000", tmp_path, None).channels
    monkeypatch.setenv(TELEGRAM_TOKEN_ENV, TOKEN)
    channel = demo_config("http://127.0.0.1:8000", tmp_path, None).channels[DEMO_TELEGRAM_CHANNEL]
    assert channel.type == "telegram" and channel.mode == "polling" and channel.bot == "simulator"
    assert channel.token.reveal() == TOKEN


def test_the_delete_webhook_command_clears_the_webhook_and_can_drop_pending_updates(
    fake_telegram: FakeTelegram, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli import main

    fake_telegram.add_bot(TOKEN, username="clinic_bot")
    fake_telegram.bots[TOKEN].webhook = {"url": "https://old-host.example/telegram/tg", "max_connections": 40}
    fake_telegram.push_update(TOKEN, message_update(1, chat_id=USER, user_id=USER, text="stale"))
    monkeypatch.setenv("TG_TOKEN", TOKEN)
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "bots:\n  demo: {chatbot_id: 6f1c2a9e-3b7d-4c1e-9a52-0d4e8b7f1a23, auth: keyless}\n"
        f"channels:\n  tg: {{type: telegram, bot: demo, mode: polling, token: '${{TG_TOKEN}}', api_base_url: '{fake_telegram.url}'}}\n"
    )
    args = ["--config", str(config), "telegram", "delete-webhook", "--channel", "tg", "--drop-pending-updates"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Webhook deleted for channel 'tg' (pending updates dropped)" in printed
    assert TOKEN not in printed
    assert fake_telegram.bots[TOKEN].webhook == {} and fake_telegram.pending_updates(TOKEN) == []


def test_a_webhook_channel_needs_its_secret_and_a_polling_one_does_not() -> None:
    from gateway.core.errors import ConfigError

    channel = {"type": "telegram", "bot": "demo", "token": Secret(TOKEN)}
    bots = {"demo": {"chatbot_id": "6f1c2a9e-3b7d-4c1e-9a52-0d4e8b7f1a23", "auth": "keyless"}}
    polling = GatewayConfig.from_mapping({"bots": bots, "channels": {"tg": {**channel, "mode": "polling"}}})
    assert polling.channels["tg"].webhook_secret is None  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="webhook_secret"):
        GatewayConfig.from_mapping({"bots": bots, "channels": {"tg": channel}})
