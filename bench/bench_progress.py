"""OCS's progress lines shown (issue 16): what they cost in task polls and reply delay, with a
webhook channel showing them (``show_progress: true``: each new line is a signed progress
callback) beside one that does not (``false``), in the same rounds, on the same bot.

Same processes as bench_turns.py (Redis, simulator with 50 ms round trip, receiver, one
``ocs-gateway worker``). The simulator's tasks report progress lines that change every 5 s from
acceptance, as OCS's do. Users hold conversations (bench/conversations.py): each sends a message,
waits for the answer, pauses 0.5–1.5 s, sends the next.

Four arms play at once in every round, each on its own webhook channel: ``on`` / ``off`` on a bot
with the budget out of the way, ``short-on`` / ``short-off`` on a bot whose budget leaves the
background priority nothing (``background_share`` 1e-7: a cap of one request per window, which the
run's other requests have always used): every progress-only poll is refused there, every other
request goes. The two arms of a bot share its learned schedule.

Phases (``--phases``):

- ``learned``: per latency profile (fixed 12 s, and lognormal median 12 s / p95 20 s), the bots
  first learn (``--warm`` turns each through the ``off`` channels), then ``--rounds`` rounds of
  ``--convs`` conversations per arm, ``--turns`` turns each; the worker's ``poll_max_s`` is the
  default 5 s.
- ``surprise``: ``poll_max_s`` 30 s and a bot that has learned to answer in 0.5 s (``--warm``
  turns) gets, this once, questions that take 75 s (a long tool call; ``--surprise-s``): past its
  plan the schedule polls every ``poll_max_s``, and only there does a progress line bring polls
  of its own. A fresh pair of bots per round, so no round learns from the one before. (With 12 s
  answers the learned schedules poll at least every 5 s anyway: the ``learned`` phase.)

Per arm: task polls per turn (the simulator counts each task's polls), progress callbacks per turn
against the lines OCS had during the task, the lag of a line (it became OCS's → its callback
arrived, lines after the first), reply delay (OCS done → the answer's callback arrived) p50/p95;
per round the ratios on/off and short-on/short-off and the extra polls per turn on − off.

    python bench/bench_progress.py                   # both phases, ~10 min
    python bench/bench_progress.py --phases surprise --rounds 2

Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_turns import UNLIMITED_BUDGET, Callback, Stack, percentile, stack, write_config
from bench.conversations import Burst, Script, SentBurst, run_conversations
from gateway.store.embedded_redis import _free_port

__all__ = ["ARMS", "PROFILES", "PROGRESS_LINES", "main"]

#: What OCS says while a task runs, one line every 5 s (the last one stays).
PROGRESS_LINES = ("Reading your question", "Searching the knowledge base", "Reading three documents",
                  "Comparing what I found", "Asking the pricing tool", "Checking the dates", "Drafting the answer",
                  "Writing the answer", "Checking the answer", "Almost there")
PROGRESS_EVERY_S = 5.0
PROFILES: dict[str, dict[str, Any]] = {
    "fixed_12": {"kind": "fixed", "median_s": 12.0, "p95_s": 12.0},
    "lognormal_12_20": {"kind": "lognormal", "median_s": 12.0, "p95_s": 20.0},
}
SURPRISE_LEARNED = {"kind": "fixed", "median_s": 0.5, "p95_s": 0.5}
def _slow(seconds: float) -> dict[str, Any]:
    return {"kind": "fixed", "median_s": seconds, "p95_s": seconds}
#: The background priority may use one request per window: always used already.
SHORT_BUDGET = {**UNLIMITED_BUDGET, "background_share": 1e-7}
#: arm -> (budget short?, show_progress)
ARMS: dict[str, tuple[bool, bool]] = {"on": (False, True), "off": (False, False),
                                      "short-on": (True, True), "short-off": (True, False)}


def _bot_names(base: str) -> dict[str, str]:
    return {arm: base + ("s" if short else "") for arm, (short, _) in ARMS.items()}


def _config(s: Stack, name: str, bases: Sequence[str], poll_max_s: float, metrics_port: int) -> Path:
    bots: dict[str, dict[str, Any]] = {}
    channels: dict[str, tuple[str, dict[str, Any]]] = {}
    for base in bases:
        for arm, (short, shown) in ARMS.items():
            bot = _bot_names(base)[arm]
            bots[bot] = {"budget": SHORT_BUDGET if short else UNLIMITED_BUDGET, "task_timeout_s": 600}
            channels[f"{base}-{arm}"] = (bot, {"show_progress": shown})
    worker = {"watch_interval_s": 3600, "poll_max_s": poll_max_s, "metrics_port": metrics_port, "metrics_host": "127.0.0.1"}
    return write_config(s, name, bots, worker, channels)


def _refusals(s: Stack, port: int) -> dict[str, float]:
    """``ocsgw_ocs_budget_refusals_total`` per bot, from the worker's /metrics. With the watches
    off, the only background requests are the progress-only polls: on a short bot every one is
    refused (once: the turn then waits for the schedule's own poll)."""
    text = s.http.get(f"http://127.0.0.1:{port}/metrics").text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("ocsgw_ocs_budget_refusals_total{"):
            labels, value = line.rsplit(" ", 1)
            bot = labels.split('bot="', 1)[1].split('"', 1)[0]
            out[bot] = out.get(bot, 0.0) + float(value)
    return out


def _warm(s: Stack, base: str, tag: str, turns: int, rate: float, timeout_s: float) -> None:
    """``turns`` single-message conversations per bot, through the ``off`` channels, ``rate`` per
    second per bot: the bots learn their latency."""
    scripts = [Script(f"{base}-{arm}", f"{tag}-{arm}-{n}", (Burst(),), think_s=0.0, start_s=n / rate)
               for arm in ("off", "short-off") for n in range(turns)]
    sent = asyncio.run(run_conversations(s.redis_url, s.receiver_url, scripts, answer_timeout_s=timeout_s))
    missing = sum(not b.answered for b in sent)
    if missing:
        print(f"warm-up {tag}: {missing} of {len(sent)} turns unanswered", file=sys.stderr, flush=True)


def _plans(s: Stack, bots: Sequence[str], poll_max_s: float, until_s: float = 40.0) -> dict[str, list[float]]:
    """Each bot's poll plan (s after the send, up to ``until_s``) as its histogram in Redis now
    gives it: what the worker's schedule holds, give or take the last few turns it learned."""
    import redis.asyncio as aioredis

    from gateway.core.keys import Keys
    from workers.poll_schedule import HistogramStore, PollSchedule

    async def load() -> dict[str, list[float]]:
        client = aioredis.Redis.from_url(s.redis_url)
        try:
            store = HistogramStore(client, Keys())
            plans = {}
            for bot in bots:
                planned = PollSchedule(await store.load(bot), max_gap_s=poll_max_s).planned_s
                plans[bot] = [round(t, 2) for t in planned if t <= until_s]
            return plans
        finally:
            await client.aclose()

    return asyncio.run(load())


def _round(s: Stack, base: str, tag: str, *, convs: int, turns: int, seed: int, timeout_s: float) -> list[SentBurst]:
    rng = random.Random(seed)
    scripts = [Script(f"{base}-{arm}", f"{tag}-{arm}-{n}", (Burst(),) * turns, think_s=rng.uniform(0.5, 1.5),
                      start_s=rng.uniform(0.0, 3.0))
               for n in range(convs) for arm in ARMS]
    return asyncio.run(run_conversations(s.redis_url, s.receiver_url, scripts, answer_timeout_s=timeout_s))


def _stats(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50_ms": round(percentile(values, 50) * 1000), "p95_ms": round(percentile(values, 95) * 1000)}


def _measure(s: Stack, sent: Sequence[SentBurst], bases: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per arm: the figures of its turns (each burst here is one message, one turn) on the
    channels of ``bases``."""
    tasks = {text: (tid, done, accepted) for tid, (text, done, accepted) in s.sim_tasks().items()}
    polls = s.sim_task_polls()
    answers: dict[str, float] = {}
    progress: dict[str, list[Callback]] = {}
    for cb in s.callbacks():
        if cb.in_reply_to is None:
            continue
        if cb.kind == "progress":
            progress.setdefault(cb.in_reply_to, []).append(cb)
        else:
            answers.setdefault(cb.in_reply_to, cb.arrived)
    out: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        channels = {f"{base}-{arm}" for base in bases}
        turns = [b for b in sent if b.channel in channels]
        task_polls: list[int] = []
        shown: list[int] = []
        had: list[int] = []
        lags: list[float] = []
        delays: list[float] = []
        latencies: list[float] = []
        for burst in turns:
            event_id = burst.event_ids[0]
            tid, done, accepted = tasks.get(event_id, ("", None, 0.0))
            if done is None:
                continue
            task_polls.append(polls.get(tid, 0))
            latencies.append(done - accepted)
            had.append(min(len(PROGRESS_LINES), int((done - accepted) // PROGRESS_EVERY_S) + 1))
            lines = progress.get(event_id, [])
            shown.append(len(lines))
            for cb in lines:
                k = PROGRESS_LINES.index(cb.text) if cb.text in PROGRESS_LINES else 0
                if k:
                    lags.append(cb.arrived - (accepted + k * PROGRESS_EVERY_S))
            if event_id in answers:
                delays.append(answers[event_id] - done)
        n = max(len(task_polls), 1)
        out[arm] = {
            "turns": len(turns), "answered": len(delays),
            "task_polls_per_turn": round(sum(task_polls) / n, 2),
            "progress_lines_shown_per_turn": round(sum(shown) / n, 2),
            "progress_lines_ocs_had_per_turn": round(sum(had) / n, 2),
            "progress_line_lag": _stats(lags),
            "reply_delay": _stats(delays),
            "ocs_latency_mean_s": round(statistics.fmean(latencies), 2) if latencies else None,
        }
    return out


def _ratios(arms: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Within one round: on / off and short-on / short-off, and the polls progress added."""
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    out: dict[str, Any] = {}
    for on, off in (("on", "off"), ("short-on", "short-off"), ("short-on", "on")):
        a, b = arms[on], arms[off]
        out[f"{on}/{off}"] = {
            "task_polls_per_turn": ratio(a["task_polls_per_turn"], b["task_polls_per_turn"]),
            "extra_polls_per_turn": round(a["task_polls_per_turn"] - b["task_polls_per_turn"], 2),
            "reply_delay_p50": ratio(a["reply_delay"].get("p50_ms"), b["reply_delay"].get("p50_ms")),
            "reply_delay_p95": ratio(a["reply_delay"].get("p95_ms"), b["reply_delay"].get("p95_ms")),
        }
    return out


def _summary(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Median and range of each per-round ratio."""
    out: dict[str, Any] = {}
    for pair in rounds[0]["ratios"]:
        out[pair] = {}
        for figure in rounds[0]["ratios"][pair]:
            values = [r["ratios"][pair][figure] for r in rounds if r["ratios"][pair][figure] is not None]
            if values:
                out[pair][figure] = {"median": round(statistics.median(values), 3),
                                     "range": [round(min(values), 3), round(max(values), 3)]}
    return out


def run_learned(s: Stack, profile: str, *, warm: int, rounds: int, convs: int, turns: int, seed: int,
                metrics_port: int) -> dict[str, Any]:
    latency = PROFILES[profile]
    base = {"fixed_12": "f12", "lognormal_12_20": "ln12"}[profile]
    s.knobs(reply_latency=latency, latency_seed=seed)
    timeout_s = 180.0
    t0 = time.monotonic()
    _warm(s, base, f"{base}-warm", warm, rate=10.0, timeout_s=timeout_s)
    result: dict[str, Any] = {"profile": profile, "latency": latency, "poll_max_s": 5.0, "warm_turns_per_bot": warm,
                              "warm_s": round(time.monotonic() - t0, 1),
                              "plans_after_warm_up": _plans(s, sorted(set(_bot_names(base).values())), 5.0), "rounds": []}
    all_sent: list[SentBurst] = []
    for r in range(rounds):
        load = os.getloadavg()[0]
        refused = _refusals(s, metrics_port)
        sent = _round(s, base, f"{base}-r{r}", convs=convs, turns=turns, seed=seed * 100 + r, timeout_s=timeout_s)
        after = _refusals(s, metrics_port)
        arms = _measure(s, sent, [base])
        arms["short-on"]["progress_polls_refused_per_turn"] = round(
            (after.get(base + "s", 0.0) - refused.get(base + "s", 0.0)) / max(arms["short-on"]["answered"], 1), 2)
        result["rounds"].append({"round": r, "load_1min": round(load, 1), "arms": arms, "ratios": _ratios(arms)})
        print(json.dumps({"profile": profile, "round": r, "ratios": result["rounds"][-1]["ratios"]}), file=sys.stderr, flush=True)
        all_sent.extend(sent)
    result["all_rounds"] = _measure(s, all_sent, [base])
    result["ratio_summary"] = _summary(result["rounds"])
    return result


def run_surprise(s: Stack, *, warm: int, rounds: int, convs: int, seed: int, slow_s: float, poll_max_s: float,
                 metrics_port: int) -> dict[str, Any]:
    """Each round: a fresh pair of bots learns 0.5 s answers, then gets one ``slow_s`` question
    per conversation."""
    result: dict[str, Any] = {"learned": SURPRISE_LEARNED, "slow": _slow(slow_s), "poll_max_s": poll_max_s,
                              "warm_turns_per_bot": warm, "rounds": []}
    all_sent: list[SentBurst] = []
    for r in range(rounds):
        base = f"sx{r}"
        s.knobs(reply_latency=SURPRISE_LEARNED, latency_seed=seed + r)
        _warm(s, base, f"{base}-warm", warm, rate=20.0, timeout_s=60.0)
        time.sleep(1.5)  # the schedule is rebuilt from what was learned (at most once a second)
        plans = _plans(s, sorted(set(_bot_names(base).values())), poll_max_s, until_s=slow_s + 2 * poll_max_s)
        s.knobs(reply_latency=_slow(slow_s))
        load = os.getloadavg()[0]
        refused = _refusals(s, metrics_port)
        sent = _round(s, base, f"{base}-m", convs=convs, turns=1, seed=seed * 100 + r, timeout_s=slow_s + 120.0)
        after = _refusals(s, metrics_port)
        arms = _measure(s, sent, [base])
        arms["short-on"]["progress_polls_refused_per_turn"] = round(
            (after.get(base + "s", 0.0) - refused.get(base + "s", 0.0)) / max(arms["short-on"]["answered"], 1), 2)
        result["rounds"].append({"round": r, "load_1min": round(load, 1), "plans_learned": plans, "arms": arms,
                                 "ratios": _ratios(arms)})
        print(json.dumps({"surprise_round": r, "arms": arms}), file=sys.stderr, flush=True)
        all_sent.extend(sent)
    result["all_rounds"] = _measure(s, all_sent, [f"sx{r}" for r in range(rounds)])
    result["ratio_summary"] = _summary(result["rounds"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--phases", default="learned,surprise", help="comma-separated, of: learned,surprise")
    parser.add_argument("--profiles", nargs="*", default=list(PROFILES), choices=list(PROFILES))
    parser.add_argument("--warm", type=int, default=100, help="turns per bot to learn from before measuring")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--convs", type=int, default=15, help="conversations per arm per round (4 arms at once)")
    parser.add_argument("--turns", type=int, default=2, help="turns per conversation (learned phase)")
    parser.add_argument("--surprise-s", type=float, default=75.0, help="the surprise phase's slow answers")
    parser.add_argument("--surprise-poll-max", type=float, default=30.0, help="the surprise phase's poll_max_s")
    parser.add_argument("--rtt", type=float, default=0.05)
    args = parser.parse_args()
    phases = set(args.phases.split(","))
    results: dict[str, Any] = {"rtt_s": args.rtt, "progress_every_s": PROGRESS_EVERY_S, "arms": {
        arm: {"budget": "background_share 1e-7" if short else "out of the way", "show_progress": shown}
        for arm, (short, shown) in ARMS.items()}}
    t0 = time.monotonic()
    with stack(args.rtt) as s:
        port = _free_port()
        s.knobs(progress_every_s=PROGRESS_EVERY_S)
        s.progress_lines(PROGRESS_LINES)
        if "learned" in phases:
            bases = [{"fixed_12": "f12", "lognormal_12_20": "ln12"}[p] for p in args.profiles]
            s.start_worker(_config(s, "progress-learned", bases, poll_max_s=5.0, metrics_port=port))
            time.sleep(3)
            results["learned"] = [run_learned(s, p, warm=args.warm, rounds=args.rounds, convs=args.convs,
                                              turns=args.turns, seed=n + 1, metrics_port=port)
                                  for n, p in enumerate(args.profiles)]
            s.stop_workers()
        if "surprise" in phases:
            s.start_worker(_config(s, "progress-surprise", [f"sx{r}" for r in range(args.rounds)],
                                   poll_max_s=args.surprise_poll_max, metrics_port=port))
            time.sleep(3)
            results["surprise"] = run_surprise(s, warm=args.warm, rounds=args.rounds, convs=args.convs, seed=7,
                                               slow_s=args.surprise_s, poll_max_s=args.surprise_poll_max,
                                               metrics_port=port)
    results["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
