"""The operator's summary (``gather_summary``, shared by /admin and ``ocs-gateway status``) reads
the truth from Redis: a stuck turn stands out and comes first, live and dead workers are told
apart, each channel's traffic is counted by outcome across the edge, reply delays are measured
from the real delivery, Telegram's webhook drift is reported, and the CLI prints all of it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway import cli
from gateway.core.config import GatewayConfig, Secret
from gateway.edge.admin.summary import Summary, gather_summary
from gateway.services import Services
from gateway.store.reply_delays import BASE_S, GROWTH, bin_upper_s, read_delays, record_delays
from tests.admin.conftest import (
    KEYS,
    STUCK_CONVERSATION,
    WORKER_ID,
    make_dead_letter,
    make_stuck_turn,
    make_worker_beat,
    read_traffic_of,
    run,
)
from tests.conftest import Stack, wait_for
from tests.fakes.telegram_api import FakeTelegram


async def _summary(config: GatewayConfig, redis_url: str, *, platforms: bool = True) -> Summary:
    services = await Services.open(config, redis_url)
    try:
        return await gather_summary(services, platforms=platforms)
    finally:
        await services.aclose()


def summary_of(stack: Stack, **kwargs: bool) -> Summary:
    return run(_summary(stack.config, stack.redis_url, **kwargs))


def test_a_stuck_turn_is_flagged_and_listed_before_younger_ones(console: Stack) -> None:
    stuck = make_stuck_turn(console, waited_s=600)
    fresh = make_stuck_turn(console, waited_s=2, conversation="fresh-1")  # held and young: fine
    summary = summary_of(console)
    by_conv = {t.conversation: t for t in summary.turns}
    assert [t.conversation for t in summary.turns][:2] == [stuck, fresh]
    assert by_conv[stuck].stuck and by_conv[stuck].state == "sent" and by_conv[stuck].owned
    assert by_conv[stuck].age_s >= 600 and by_conv[stuck].attempts == 2
    assert not by_conv[fresh].stuck
    assert "1 turn(s) stuck" in summary.problems()


def test_a_young_turn_nobody_takes_is_stuck_when_no_worker_runs(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(start_worker=False)
    assert stack.say("lonely", "hello").status_code == 200
    # Due now, unowned: it becomes stuck once it is later than a sweeper would have let it be.
    tuning = stack.config.worker
    late = tuning.stall_grace_s + 2 * tuning.sweep_interval_s + 1
    stack.redis.zadd(KEYS.active, {"hooks/lonely": time.time() - late})
    summary = summary_of(stack)
    (turn,) = summary.turns
    assert turn.state == "queued" and not turn.owned and turn.stuck
    assert "no worker is alive: nothing is being answered" in summary.problems()


def test_workers_are_listed_alive_or_dead_by_their_last_beat(console: Stack) -> None:
    make_worker_beat(console, worker_id=WORKER_ID, age_s=1)
    make_worker_beat(console, worker_id="worker-b:99:gone", age_s=120)  # 24 intervals late
    summary = summary_of(console)
    states = {w.worker_id: w.is_alive(summary.generated_at) for w in summary.workers}
    assert states[WORKER_ID] is True and states["worker-b:99:gone"] is False
    assert any("stopped beating" in p for p in summary.problems())


def test_traffic_is_counted_per_channel_by_outcome_and_unknown_channels_are_not(console: Stack) -> None:
    assert console.say("t1", "one").status_code == 200
    assert console.say("t2", "two").status_code == 200
    assert console.say("t3", "forged", secret="whsec_" + "A" * 32).status_code == 401
    assert console.http.post(f"{console.url}/webhooks/nope", content=b"{}").status_code == 404

    def counted() -> dict[str, int] | None:
        traffic = run(read_traffic_of(console.redis_url, ["hooks", "nope"]))
        return traffic if traffic["hooks"].last_5m == {"ok": 2, "4xx": 1, "5xx": 0} else None

    traffic = wait_for(counted, what="the edge's counts in Redis")
    assert traffic["hooks"].errors_60m == 1
    assert traffic["nope"].last_60m == {"ok": 0, "4xx": 0, "5xx": 0}


def test_a_delivered_reply_records_its_delay_for_every_process_to_read(console: Stack) -> None:
    console.sim.state.knobs.reply_latency_s = 0.3
    started = time.time()
    console.say("d1", "hello")
    wait_for(lambda: console.receiver.texts("d1"), what="the reply")
    waited = time.time() - started
    summary = summary_of(console, platforms=False)
    (wait_5, wait_60), (delay_5, _) = summary.waits, summary.delays
    assert wait_5.count == 1 and wait_60.count == 1 and delay_5.count == 1
    assert wait_5.p50_s is not None and 0.3 <= wait_5.p50_s <= waited * GROWTH
    # The gateway's own part of the wait: OCS's 0.3 s is not in it.
    assert delay_5.p50_s is not None and delay_5.p50_s < wait_5.p50_s


async def test_delay_percentiles_come_from_the_bins_of_their_window(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    now = 1_800_000_000.0
    try:
        for delay in [1.0] * 90 + [30.0] * 10:
            await record_delays(client, KEYS, {"wait": delay, "reply": delay / 10}, now=now)
        await record_delays(client, KEYS, {"wait": 500.0}, now=now - 30 * 60)  # only in the hour
        series = await read_delays(client, KEYS, now=now)
        last_5, last_60 = series["wait"]
        reply_5, reply_60 = series["reply"]
    finally:
        await client.aclose()
    assert last_5.count == 100 and last_60.count == 101
    assert 1.0 <= last_5.p50_s <= 1.0 * GROWTH  # type: ignore[operator]
    assert 30.0 <= last_5.p95_s <= 30.0 * GROWTH  # type: ignore[operator]
    assert last_60.p95_s == last_5.p95_s
    assert (reply_5.count, reply_60.count) == (100, 100)  # each series counts its own samples
    assert 3.0 <= reply_5.p95_s <= 3.0 * GROWTH  # type: ignore[operator]
    assert bin_upper_s(0) == BASE_S


def test_telegram_webhook_drift_is_reported_with_pending_updates_and_the_last_error(
    make_stack: Callable[..., Stack],
) -> None:
    with FakeTelegram() as fake:
        bot = fake.add_bot("123:ABC", username="clinic_bot")
        bot.webhook = {"url": "https://old-host.example/telegram/tg", "max_connections": 40}
        bot.pending_update_count = 73
        bot.last_error_message = "Wrong response from the webhook: 502 Bad Gateway"
        stack = make_stack(
            start_worker=False, public_url="https://gw.example.com",
            channels={"tg": {"type": "telegram", "bot": "demo", "token": Secret("123:ABC"),
                             "webhook_secret": Secret("s3cret"), "api_base_url": fake.url}},
        )
        summary = summary_of(stack)
    tg = {c.name: c for c in summary.channels}["tg"]
    assert tg.platform["webhook_url"] == "https://old-host.example/telegram/tg"
    assert tg.platform["expected_url"] == "https://gw.example.com/telegram/tg"
    assert tg.platform["pending_update_count"] == 73
    assert any("expected https://gw.example.com/telegram/tg" in w for w in tg.warnings)
    assert any("502 Bad Gateway" in w for w in tg.warnings)
    assert "123:ABC" not in repr(tg.platform)
    hooks = {c.name: c for c in summary.channels}["hooks"]
    assert hooks.platform == {} and hooks.warnings == []


def test_ocs_gateway_status_prints_the_summary(
    console: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    letter_id = make_dead_letter(console)
    make_stuck_turn(console)
    make_worker_beat(console)
    monkeypatch.setenv("HOOKS_SECRET", console.config.channels["hooks"].secret.reveal())  # type: ignore[union-attr]
    monkeypatch.setenv("DEMO_SECRET", "demo-secret")
    demo = console.config.bots["demo"]
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"redis_url: {console.redis_url}\n"
        f"bots:\n  demo:\n    base_url: {demo.base_url}\n    chatbot_id: {demo.chatbot_id}\n    auth: oauth\n"
        f"    client_id: demo-client\n    client_secret: ${{DEMO_SECRET}}\n    task_timeout_s: 20\n"
        f"channels:\n  hooks:\n    type: webhook\n    bot: demo\n    secret: ${{HOOKS_SECRET}}\n"
        f"    callback_url: http://127.0.0.1:9/callback\n"
    )
    code = cli.main(["--config", str(config), "status"])
    out = capsys.readouterr().out
    assert code == 1  # a stuck turn: a script can tell
    assert f"hooks/{STUCK_CONVERSATION}" in out and "STUCK" in out
    assert WORKER_ID in out and "alive" in out
    assert letter_id in out and "dead letters (1)" in out
    assert "reply delay" in out and "hooks" in out
    assert "is anyone there?" not in out  # never the user's text
