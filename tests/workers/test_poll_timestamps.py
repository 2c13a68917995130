"""Learning completion times from OCS's own stamps (workers/server_clock.py): the clock offset from
HTTP Date bounds, a stamp read through it, robustness to skew, clock steps and absurd stamps; the
fast-bot and first-turn targets in seeded Monte-Carlo turns (bench/poll_sim.py, no clock); the
stamped ring in real Redis; the schedule cache's planning kept off the loop's common path."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable
from datetime import timedelta

import httpx
import pytest
import redis.asyncio as aioredis

from bench.poll_sim import POLLS_ONLY, STAMPED, LatencyProfile, Stamps, compare, fixed_poller, run_turn
from gateway.core.keys import Keys
from gateway.ocs.messages import parse_http_date
from gateway.ocs.simulator import SimulatorState, create_simulator_app
from gateway.ocs.simulator.state import utc_now
from workers.poll_schedule import CompletionHistogram, HistogramStore, PollSchedule, Stamped, materially_different
from workers.schedules import ScheduleCache
from workers.server_clock import ServerClock, completion_interval, stamped_histogram

RTT_S = 0.05
FAST = LatencyProfile.between(0.2, 0.3)


def _clock_with_dates(skew_s: float, polls: int, *, seed: int = 1) -> ServerClock:
    """A ServerClock fed ``polls`` Date headers of an OCS whose clock runs ``skew_s`` ahead."""
    rng = random.Random(seed)
    clock, now = ServerClock(), 1_700_000_000.0
    for _ in range(polls):
        now += rng.uniform(0.3, 2.5)
        clock.saw_date(math.floor(now + skew_s), now)
    return clock


@pytest.mark.parametrize("skew_s", [-7.3, 0.0, 42.6], ids=["behind", "agreeing", "ahead"])
def test_date_bounds_read_a_stamp_to_within_tens_of_ms_whatever_the_skew(skew_s: float) -> None:
    clock = _clock_with_dates(skew_s, 100)
    sent_at, latency = 1_700_100_000.0, 0.237
    window = clock.window()
    assert window is not None and window.low <= skew_s

    low, high = completion_interval(0.0, 0.9, created_at_s=sent_at + latency + skew_s, sent_at=sent_at, window=window)

    assert low <= latency <= high
    assert high - latency < 0.05  # the polls alone said (0, 0.9]
    assert high - low < 0.1


def test_absurd_stamp_is_not_believed_and_the_polls_interval_stands() -> None:
    clock = _clock_with_dates(0.0, 50)
    sent_at = 1_700_100_000.0
    absurd = sent_at - 3600.0

    believed = clock.saw_completion(absurd, sending_at=sent_at - 0.02, looked_at=sent_at + 0.9)
    interval = completion_interval(0.1, 0.9, created_at_s=absurd, sent_at=sent_at, window=clock.window())

    assert not believed
    assert interval == (0.1, 0.9)


def test_a_stamp_never_takes_the_observation_outside_what_the_polls_saw() -> None:
    clock = _clock_with_dates(0.0, 50)
    window = clock.window()
    sent_at = 1_700_100_000.0
    for offset in (-5.0, -0.5, -0.05, 0.05, 0.5, 5.0):  # stamps wrong by this much
        low, high = completion_interval(0.3, 0.6, created_at_s=sent_at + 0.45 + offset, sent_at=sent_at, window=window)
        assert 0.3 <= low <= high <= 0.6


def test_a_stepped_ocs_clock_is_followed_once_its_new_dates_contradict_the_old() -> None:
    clock = _clock_with_dates(0.0, 60)
    now = 1_700_200_000.0
    for n in range(60):  # OCS's clock stepped 2 s ahead
        clock.saw_date(math.floor(now + n * 1.3 + 2.0), now + n * 1.3)
    sent_at = now + 100.0
    clock.saw_completion(sent_at + 0.25 + 2.0, sending_at=sent_at - 0.02, looked_at=sent_at + 0.3)
    window = clock.window()

    assert window is not None and 1.9 <= window.low <= 2.0 <= window.high


def test_stamped_completions_are_reread_through_the_sharper_offset() -> None:
    # Early stamps read through a poor offset would keep the plan's one poll late for hundreds of
    # turns; kept as stamps, they sharpen with the offset.
    stamps = [Stamped(0.25 + 3.0, 0.0, 0.9, 1.0)]  # OCS 3 s ahead
    rough, sharp = _clock_with_dates(3.0, 1).window(), _clock_with_dates(3.0, 100).window()

    rough_top = stamped_histogram(stamps, rough).quantile(1.0)
    sharp_top = stamped_histogram(stamps, sharp).quantile(1.0)

    assert rough_top is not None and sharp_top is not None
    assert sharp_top < rough_top
    assert 0.25 <= sharp_top <= 0.3


def test_polls_alone_reproduce_the_issue_a_fast_bot_answered_near_one_second() -> None:
    # The real OCS: reply ready at ~0.25 s, the learnt schedule's one poll near 0.9 s.
    result = compare(FAST, learn_turns=300, measure_turns=300, rtt_s=RTT_S, seed=5, stamps=POLLS_ONLY)

    assert result.fixed_50ms is not None
    assert result.learnt.wait_mean_s > 2.5 * result.fixed_50ms.wait_mean_s


@pytest.mark.parametrize(
    "stamps",
    [STAMPED, Stamps(skew_s=-7.3), Stamps(skew_s=3600.4), Stamps(absurd=0.2)],
    ids=["agreeing", "ocs-behind", "ocs-an-hour-ahead", "a-fifth-absurd"],
)
def test_fast_bot_learnt_from_stamps_answers_near_a_50ms_poller_at_the_widgets_polls(stamps: Stamps) -> None:
    result = compare(FAST, learn_turns=300, measure_turns=300, rtt_s=RTT_S, seed=5, stamps=stamps)

    assert result.fixed_50ms is not None
    # At most a miss in fifty (measured 1.00-1.013: a draw above every stamp the plan has seen).
    assert result.learnt.polls_per_turn <= result.fixed_1s.polls_per_turn + 0.02
    # Target 15 %; measured 1.13-1.16 across seeds and skews (docs/PERFORMANCE.md). The margin
    # keeps the test about the mechanism, not the last percent.
    assert result.learnt.wait_mean_s <= 1.25 * result.fixed_50ms.wait_mean_s


def test_cold_plan_never_polls_more_than_the_widget_at_any_latency() -> None:
    schedule = PollSchedule(CompletionHistogram.empty())
    for k in range(1, 400):
        latency = k * 0.05
        ours = run_turn(latency, schedule.next_delay, rtt_s=RTT_S).polls
        widget = run_turn(latency, fixed_poller(1.0), rtt_s=RTT_S).polls
        assert ours <= widget, f"{ours} polls at {latency:.2f} s where the widget makes {widget}"


@pytest.mark.parametrize(
    "profile",
    [FAST, LatencyProfile.fixed(2.3), LatencyProfile.lognormal(3.0, 12.0), LatencyProfile.lognormal(1.0, 4.0)],
    ids=["0.2-0.3s", "2.3s", "lognormal-3-12", "lognormal-1-4"],
)
def test_a_new_bots_first_turns_poll_no_more_than_the_widget(profile: LatencyProfile) -> None:
    result = compare(profile, learn_turns=25, measure_turns=50, rtt_s=RTT_S, seed=9, first_turns=25)

    assert result.first is not None and result.first_fixed_1s is not None
    assert result.first.polls_per_turn <= result.first_fixed_1s.polls_per_turn


def test_lognormal_bot_learnt_from_stamps_is_near_the_offline_optimal_plan_at_equal_polls() -> None:
    result = compare(LatencyProfile.lognormal(1.0, 4.0), learn_turns=300, measure_turns=500, rtt_s=RTT_S, seed=7,
                     same_polls=True)

    assert result.oracle_same_polls is not None
    assert result.learnt.polls_per_turn <= result.fixed_1s.polls_per_turn
    assert result.learnt.delay_mean_s <= 1.15 * result.oracle_same_polls.delay_mean_s


def test_material_change_ignores_a_little_more_of_the_same() -> None:
    base = CompletionHistogram.empty()
    for _ in range(40):
        base.add(0.24, 0.26)
    more = CompletionHistogram(base.counts)
    more.add(0.24, 0.26)
    slower = CompletionHistogram(base.counts)
    for _ in range(10):
        slower.add(1.9, 2.1)

    assert not materially_different(base, more)
    assert materially_different(base, slower)
    assert materially_different(CompletionHistogram.empty(), base)


async def test_store_keeps_the_stamped_completions_with_their_decay(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        store = HistogramStore(client, Keys())
        for n in range(5):
            await store.record("stamps", 0.2, 0.3, stamped=(3.25 + n / 100, 0.0, 0.9))
        await store.record("stamps", 0.1, 0.9)  # no stamp: the histogram only
        learnt = await store.load_learnt("stamps")
    finally:
        await client.aclose()

    assert [round(s.y_s, 2) for s in learnt.stamped] == [3.25, 3.26, 3.27, 3.28, 3.29]
    assert all(s.low_s == 0.0 and s.high_s == 0.9 for s in learnt.stamped)
    weights = [s.weight for s in learnt.stamped]
    assert weights == sorted(weights) and weights[-1] < 1.0  # the unstamped record aged them too
    assert learnt.histogram.total == pytest.approx(6, rel=0.05)


async def test_schedule_cache_plans_the_cold_start_once_and_skips_unchanged_refreshes(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        cache = ScheduleCache(client, Keys(namespace="cachetest"), max_gap_s=5.0)
        first, second = cache.schedule("bot-a"), cache.schedule("bot-b")
        # Each new bot's refresh reads an empty histogram: the same as the cold plan's.
        await _until(lambda: cache.plans_reused >= 2, timeout_s=30.0)
    finally:
        await client.aclose()

    assert first is second
    assert cache.plans_built == 1
    assert cache.plans_reused == 2


async def _until(condition: Callable[[], bool], *, timeout_s: float) -> None:
    """Wait for a positive signal on the running loop (the cache's refresh is a task on it)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the schedule cache never refreshed"
        await asyncio.sleep(0.01)


async def test_simulator_dates_its_answers_by_its_own_clock() -> None:
    state = SimulatorState.demo("http://sim.test")
    state.clock = lambda: utc_now() + timedelta(seconds=3600)
    transport = httpx.ASGITransport(app=create_simulator_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://sim.test") as http:
        response = await http.post("/o/token/", data={"grant_type": "client_credentials"})
    served = parse_http_date(response.headers.get_list("date"))

    assert served is not None
    assert abs(served - (utc_now().timestamp() + 3600)) < 2.0
