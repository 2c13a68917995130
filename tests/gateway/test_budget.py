"""The shared OCS request budget (gateway.ocs.budget) against a real Redis: limits, priorities,
all-or-nothing bookings, blocks, window rollover, and the ``ocs-gateway budget`` view."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.cli import main
from gateway.config_loading import GatewayConfig
from gateway.core.config import BudgetLimits
from gateway.core.errors import ConfigError
from gateway.core.keys import Keys
from gateway.core.metrics import Metrics
from gateway.ocs.budget import (
    BudgetScope,
    BudgetUsage,
    Grant,
    Priority,
    RequestBudget,
    format_usage,
    origin_of,
)

OCS = "https://ocs.example.com"
CHATBOT = "6f1c2a9e-3b7d-4c1e-9a52-0d4e8b7f1a23"


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def make_budget(client: aioredis.Redis, metrics: Metrics | None = None, **limits: Any) -> RequestBudget:
    chosen = BudgetLimits(**limits)
    return RequestBudget(client, Keys(), lambda bot: chosen, metrics)


def refusals(metrics: Metrics, scope: str) -> float:
    value = metrics.registry.get_sample_value("ocsgw_ocs_budget_refusals_total", {"bot": "b", "scope": scope})
    return value or 0.0


async def redis_now(client: aioredis.Redis) -> float:
    seconds, micros = await client.time()
    return seconds + micros / 1_000_000


async def room_in_window(client: aioredis.Redis, window_s: int, need_s: float) -> float:
    """Wait (by Redis TIME) until the current window has ``need_s`` left, so a test's bookings
    all fall in one window; returns the window's end."""
    while True:
        now = await redis_now(client)
        end = now - now % window_s + window_s
        if end - now >= need_s:
            return end
        await asyncio.sleep(0.02)


async def eventually(check: Callable[[], Awaitable[Any]], *, timeout_s: float = 10.0, what: str) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def take(budget: RequestBudget, priority: Priority, **where: Any) -> int:
    """Book until refused; returns how many were granted."""
    granted = 0
    while (await budget.acquire(bot="b", base_url=where.pop("base_url", OCS), priority=priority, **where)).granted:
        granted += 1
        assert granted < 10_000
    return granted


def usage_of(rows: list[BudgetUsage], scope: BudgetScope, name: str) -> BudgetUsage:
    found = [row for row in rows if row.scope == scope and row.name == name]
    assert len(found) == 1, rows
    return found[0]


# -- limits -------------------------------------------------------------------------------------


def test_budget_scopes_keep_the_names_the_budget_table_shows() -> None:
    assert [scope.value for scope in BudgetScope] == ["base_url", "session", "starts", "blocked"]
    assert format_usage([BudgetUsage(BudgetScope.SESSION, "s-1", 1, 300, 60.0, 0.0)]).splitlines()[1].startswith("session ")


async def test_grants_up_to_the_limit_then_refuses_until_the_window_ends(aredis: aioredis.Redis) -> None:
    budget = make_budget(aredis, requests_per_window=5)
    end = await room_in_window(aredis, 300, 5.0)
    grants = [await budget.acquire(bot="b", base_url=OCS, priority=Priority.WAITING) for _ in range(5)]
    assert grants == [Grant(True, 0.0)] * 5
    before = await redis_now(aredis)
    refused = await budget.acquire(bot="b", base_url=OCS, priority=Priority.WAITING)
    after = await redis_now(aredis)
    assert (refused.granted, refused.scope) == (False, "base_url")
    assert end - after - 0.002 <= refused.wait_s <= end - before + 0.002
    assert usage_of(await budget.usage(), BudgetScope.BASE_URL, OCS).used == 5  # the refusal booked nothing


async def test_requests_beyond_the_limit_are_counted_as_refused_and_admitted_only_once_the_window_ends(
    aredis: aioredis.Redis,
) -> None:
    metrics = Metrics()
    budget = make_budget(aredis, metrics, requests_per_window=1000, session_requests_per_window=3, window_s=2)
    end = await room_in_window(aredis, 2, 1.0)
    assert await take(budget, Priority.WAITING, session_id="s-1") == 3  # take's last ask was refused
    before = await redis_now(aredis)
    refused = [await budget.acquire(bot="b", base_url=OCS, priority=Priority.WAITING, session_id="s-1") for _ in range(2)]
    after = await redis_now(aredis)
    assert [(grant.granted, grant.scope) for grant in refused] == [(False, "session")] * 2
    assert (refusals(metrics, "session"), refusals(metrics, "origin")) == (3, 0)
    # A refusal names the window's end (by Redis TIME) as the earliest it may ask again.
    assert end - after - 0.002 <= refused[-1].wait_s <= end - before + 0.002

    async def window_ended() -> bool:
        return await redis_now(aredis) >= end

    await eventually(window_ended, what="the session's window to end")
    assert (await budget.acquire(bot="b", base_url=OCS, priority=Priority.WAITING, session_id="s-1")).granted
    assert refusals(metrics, "session") == 3  # admitted, not counted again
    await budget.block(OCS, 30, reason="429")
    assert not (await budget.acquire(bot="b", base_url=OCS, priority=Priority.WAITING)).granted
    assert refusals(metrics, "blocked") == 1


async def test_a_refused_session_books_nothing_in_the_base_url_bucket(aredis: aioredis.Redis) -> None:
    budget = make_budget(aredis, requests_per_window=100, session_requests_per_window=2)
    await room_in_window(aredis, 300, 5.0)
    assert await take(budget, Priority.WAITING, session_id="s-1") == 2
    refused = await budget.acquire(bot="b", base_url=OCS, priority=Priority.WAITING, session_id="s-1")
    assert (refused.granted, refused.scope) == (False, "session")
    assert usage_of(await budget.usage(), BudgetScope.BASE_URL, OCS).used == 2
    assert (await budget.acquire(bot="b", base_url=OCS, priority=Priority.WAITING, session_id="s-2")).granted


async def test_starts_are_counted_per_channel(aredis: aioredis.Redis) -> None:
    budget = make_budget(aredis, starts_per_window=2)
    await room_in_window(aredis, 300, 5.0)
    assert await take(budget, Priority.SEND, start_channel="tg") == 2
    refused = await budget.acquire(bot="b", base_url=OCS, priority=Priority.SEND, start_channel="tg")
    assert refused.scope is BudgetScope.STARTS
    assert (await budget.acquire(bot="b", base_url=OCS, priority=Priority.SEND, start_channel="slack")).granted


async def test_bot_initiated_polls_yield_first_then_sends_while_waiting_turns_use_it_all(
    aredis: aioredis.Redis,
) -> None:
    budget = make_budget(aredis, requests_per_window=10, background_share=0.6, send_share=0.9)
    await room_in_window(aredis, 300, 5.0)
    assert await take(budget, Priority.BACKGROUND) == 6
    assert await take(budget, Priority.SEND) == 3
    assert (await budget.acquire(bot="b", base_url=OCS, priority=Priority.BACKGROUND)).scope == "base_url"
    assert await take(budget, Priority.WAITING) == 1
    assert usage_of(await budget.usage(), BudgetScope.BASE_URL, OCS).used == 10


async def test_a_session_bucket_keeps_the_same_reserve_for_waiting_turns(aredis: aioredis.Redis) -> None:
    budget = make_budget(aredis, session_requests_per_window=5, background_share=0.6)
    await room_in_window(aredis, 300, 5.0)
    assert await take(budget, Priority.BACKGROUND, session_id="s-1") == 3
    assert (await budget.acquire(bot="b", base_url=OCS, priority=Priority.BACKGROUND, session_id="s-1")).scope == "session"
    assert await take(budget, Priority.WAITING, session_id="s-1") == 2


async def test_two_processes_share_one_count(aredis: aioredis.Redis, redis_url: str) -> None:
    other_client = aioredis.Redis.from_url(redis_url)
    try:
        first, second = make_budget(aredis, requests_per_window=6), make_budget(other_client, requests_per_window=6)
        await room_in_window(aredis, 300, 5.0)
        results = await asyncio.gather(
            *(b.acquire(bot="b", base_url=OCS, priority=Priority.WAITING) for b in [first, second] * 5)
        )
        assert sum(grant.granted for grant in results) == 6
        assert not (await first.acquire(bot="b", base_url=OCS, priority=Priority.WAITING)).granted
        assert not (await second.acquire(bot="b", base_url=OCS, priority=Priority.WAITING)).granted
    finally:
        await other_client.aclose()


async def test_bots_on_one_origin_share_its_bucket_and_its_key_holds_no_credentials(aredis: aioredis.Redis) -> None:
    budget = make_budget(aredis, requests_per_window=3)
    await room_in_window(aredis, 300, 5.0)
    for url in ("https://user:pa55word@OCS.example.com/a", f"{OCS}/b/", OCS):
        assert (await budget.acquire(bot="b", base_url=url, priority=Priority.WAITING)).granted
    assert not (await budget.acquire(bot="b", base_url=OCS, priority=Priority.WAITING)).granted
    keys = [key async for key in aredis.scan_iter(match="*")]
    assert keys and not any(b"pa55word" in key or b"example" in key for key in keys)
    assert origin_of("http://[::1]:8100/api") == "http://[::1]:8100"


# -- blocks -------------------------------------------------------------------------------------


async def test_block_refuses_every_process_until_it_ends(aredis: aioredis.Redis, redis_url: str) -> None:
    other_client = aioredis.Redis.from_url(redis_url)
    try:
        first, second = make_budget(aredis), make_budget(other_client)
        started = await redis_now(aredis)
        await first.block(OCS, 0.5, reason="waf-403")
        for budget in (first, second):
            refused = await budget.acquire(bot="b", base_url=OCS, priority=Priority.WAITING, session_id="s-1")
            assert (refused.granted, refused.scope) == (False, "blocked")
            assert 0 < refused.wait_s <= 0.5
        assert (await second.acquire(bot="b", base_url="https://other.example.com", priority=Priority.WAITING)).granted

        async def granted() -> bool:
            return (await second.acquire(bot="b", base_url=OCS, priority=Priority.WAITING)).granted

        await eventually(granted, what="the block to lapse")
        assert await redis_now(aredis) - started >= 0.5 - 0.002
        assert usage_of(await first.usage(), BudgetScope.BASE_URL, OCS).used == 1  # nothing booked while blocked
    finally:
        await other_client.aclose()


async def test_a_shorter_block_never_cuts_a_longer_one_short(aredis: aioredis.Redis) -> None:
    budget = make_budget(aredis)
    await budget.block(OCS, 30, reason="429")
    await budget.block(OCS, 1, reason="429")
    row = usage_of(await budget.usage(), BudgetScope.BASE_URL, OCS)
    assert row.blocked_for_s > 29 and row.reason == "429"
    assert (row.used, row.limit) == (0, 0)


async def test_a_blocked_session_stops_only_that_session(aredis: aioredis.Redis) -> None:
    budget = make_budget(aredis)
    await budget.block_session("s-1", 30)
    refused = await budget.acquire(bot="b", base_url=OCS, priority=Priority.WAITING, session_id="s-1")
    assert (refused.scope, refused.wait_s > 29) == ("blocked", True)
    assert (await budget.acquire(bot="b", base_url=OCS, priority=Priority.WAITING, session_id="s-2")).granted
    assert (await budget.acquire(bot="b", base_url=OCS, priority=Priority.WAITING)).granted


# -- windows ------------------------------------------------------------------------------------


async def test_a_session_bucket_grants_again_in_the_next_aligned_window(aredis: aioredis.Redis) -> None:
    # OCS's own limiter counts in aligned windows: so does the session bucket.
    budget = make_budget(aredis, requests_per_window=1000, session_requests_per_window=2, window_s=1)
    end = await room_in_window(aredis, 1, 0.6)
    assert await take(budget, Priority.WAITING, session_id="s-1") == 2

    async def rolled_over() -> bool:
        return await redis_now(aredis) >= end

    await eventually(rolled_over, what="the next window")
    assert await take(budget, Priority.WAITING, session_id="s-1") == 2


async def test_the_origin_bucket_slides_so_a_window_boundary_cannot_spend_the_limit_twice(aredis: aioredis.Redis) -> None:
    # The WAF counts over a sliding window: right after a boundary, the previous window's
    # requests still count for the part of it that a sliding window would still cover.
    budget = make_budget(aredis, requests_per_window=4, window_s=4)
    end = await room_in_window(aredis, 4, 2.0)
    assert await take(budget, Priority.WAITING) == 4

    async def into_next_window() -> bool:
        # A little past the boundary: exactly on it the previous window still counts whole.
        return await redis_now(aredis) >= end + 0.2

    await eventually(into_next_window, what="the next window")
    granted = await take(budget, Priority.WAITING)
    late_s = await redis_now(aredis) - end
    # The previous window's 4 still count for (1 - late/4) of it: one request fits while that
    # share is above 3 (late < 1 s); a slow machine that got here later may see one more.
    assert 1 <= granted < 4  # fixed windows would grant all 4 again
    if late_s <= 1.0:
        assert granted == 1
    refused = await budget.acquire(bot="b", base_url=OCS, priority=Priority.WAITING)
    assert refused.scope == "base_url" and 0 < refused.wait_s <= 4
    rows = await budget.usage()
    assert usage_of(rows, BudgetScope.BASE_URL, OCS).used == granted  # the current window only


# -- round trips and the operator's view ------------------------------------------------------------


async def test_acquire_is_one_evalsha_round_trip_even_after_a_script_flush(aredis: aioredis.Redis) -> None:
    budget = make_budget(aredis)
    await budget.acquire(bot="b", base_url=OCS, priority=Priority.WAITING)
    await aredis.config_resetstat()
    for _ in range(10):
        await budget.acquire(bot="b", base_url=OCS, priority=Priority.SEND, session_id="s-1", start_channel="c")
    stats = await aredis.info("commandstats")
    # Redis 6.2+ counts subcommands apart ("config|resetstat"): the command is what is checked.
    calls: dict[str, int] = {}
    for name, row in stats.items():
        command = name.removeprefix("cmdstat_").split("|", 1)[0]
        calls[command] = calls.get(command, 0) + row["calls"]
    # Redis counts the commands a script runs too; the client itself sent only EVALSHA.
    assert calls.pop("evalsha") == 10
    allowed = {"time", "pttl", "hget", "hincrby", "hset", "pexpireat", "zincrby", "sadd", "info", "config"}
    assert set(calls) <= allowed  # no SCAN, no KEYS: the indexes are kept as it books
    await aredis.script_flush()  # what a Redis restart does to the script cache
    assert (await budget.acquire(bot="b", base_url=OCS, priority=Priority.WAITING)).granted


async def test_usage_reports_what_was_booked_and_what_is_blocked(aredis: aioredis.Redis) -> None:
    budget = make_budget(aredis)
    await room_in_window(aredis, 300, 5.0)
    for _ in range(3):
        await budget.acquire(bot="b", base_url=OCS, priority=Priority.WAITING, session_id="s-1")
    await budget.acquire(bot="b", base_url=OCS, priority=Priority.SEND, start_channel="tg")
    await budget.block_session("s-2", 60, reason="429")
    rows = await budget.usage()
    assert [(r.scope, r.name, r.used, r.limit) for r in rows] == [
        ("base_url", OCS, 4, 2000),
        ("starts", "tg", 1, 300),
        ("session", "s-1", 3, 300),
        ("session", "s-2", 0, 0),
    ]
    assert all(0 < r.resets_in_s <= 300 for r in rows[:3])
    assert rows[3].blocked_for_s > 59 and rows[0].blocked_for_s == 0
    table = format_usage(rows)
    assert "4 / 2000" in table and re.search(r"\b(59|60)\.\d s \(429\)", table)


def test_cli_prints_used_and_limit_per_bucket(redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        f"redis_url: {redis_url}\nbots:\n  b:\n    base_url: {OCS}\n    chatbot_id: {CHATBOT}\n    auth: keyless\n"
        "    budget:\n      requests_per_window: 50\n"
    )
    assert main(["--config", str(path), "budget"]) == 0
    assert "no OCS requests booked" in capsys.readouterr().out

    async def book() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            budget = RequestBudget(client, Keys(), lambda bot: BudgetLimits(requests_per_window=50))
            for _ in range(2):
                await budget.acquire(bot="b", base_url=OCS, priority=Priority.WAITING, session_id="s-1")
            await budget.block(OCS, 60, reason="waf-403")
        finally:
            await client.aclose()

    asyncio.run(book())
    assert main(["--config", str(path), "budget"]) == 0
    out = capsys.readouterr().out
    assert "used / limit" in out and "2 / 50" in out and "2 / 300" in out
    assert OCS in out and "(waf-403)" in out


# -- configuration ------------------------------------------------------------------------------


def test_budget_is_configured_per_bot_with_the_ocs_defaults() -> None:
    config = GatewayConfig.from_mapping({"bots": {
        "a": {"chatbot_id": CHATBOT, "auth": "keyless"},
        "b": {"chatbot_id": CHATBOT, "auth": "keyless", "budget": {"requests_per_window": 500, "window_s": 60}},
    }})
    assert config.bots["a"].budget == BudgetLimits()
    assert (BudgetLimits().requests_per_window, BudgetLimits().session_requests_per_window) == (2000, 300)
    assert (config.bots["b"].budget.requests_per_window, config.bots["b"].budget.window_s) == (500, 60)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("background_share", 0, "greater than 0"),
        ("send_share", 1.5, "less than or equal to 1"),
        ("requests_per_window", 0, "greater than or equal to 1"),
        ("starts_per_window", -1, "greater than or equal to 1"),
        ("window_s", 0, "greater than or equal to 1"),
        ("background_share", 0.95, "background_share must not exceed send_share"),
    ],
)
def test_out_of_range_budget_is_refused_naming_the_field(field: str, value: float, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"bots\.b\.budget.*{message}"):
        GatewayConfig.from_mapping({"bots": {"b": {"chatbot_id": CHATBOT, "auth": "keyless", "budget": {field: value}}}})


# -- indexes (review R2 #2) -----------------------------------------------------------------------


async def test_usage_reads_the_indexes_without_a_scan_and_they_expire_with_the_buckets(aredis: aioredis.Redis) -> None:
    budget = make_budget(aredis, window_s=300)
    await room_in_window(aredis, 300, 5.0)
    await budget.acquire(bot="b", base_url=OCS, priority=Priority.WAITING, session_id="s-1", start_channel="tg")
    await budget.block_starts("tg", 30, reason="429")
    await aredis.config_resetstat()
    rows = await budget.usage()
    stats = await aredis.info("commandstats")
    assert "cmdstat_scan" not in stats and "cmdstat_keys" not in stats
    assert [(r.scope, r.name, r.used, r.blocked_for_s > 29) for r in rows] == [
        ("base_url", OCS, 1, False),
        ("starts", "tg", 1, True),
        ("session", "s-1", 1, False),
    ]
    # Every key the budget wrote, indexes included, lapses on its own.
    keys = [key async for key in aredis.scan_iter(match=f"{Keys().budget_prefix}*")]
    assert len(keys) == 9  # three buckets, one block, three indexes, the windows and the blocks sets
    assert [key for key in keys if await aredis.pttl(key) <= 0] == []
