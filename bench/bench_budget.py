"""The OCS request budget under pressure: 1,000 sessions whose bot-initiated polls are due at
once, against a budget scaled down tenfold in time (2,000 / 5 min -> 200 / 30 s, per session
300 -> 30, starts 300 -> 30, bot-message polls every 30 s -> 3 s, "recent" 300 s -> 30 s), while
users keep writing: does the OCS request rate stay inside the budget, and do replies keep flowing?

Same processes as bench_turns.py (Redis, simulator with 50 ms round trip and its emulated WAF set
to the same 200 requests per sliding 30 s, receiver, one ``ocs-gateway worker``).

1. Setup, budget out of the way: ``--sessions`` conversations each get one turn (an OCS session
   each, recently active, so their bot-message polls come due every 3 s).
2. Pressure: the worker is restarted with the small budget; for ``--seconds`` users write
   ``--turn-rate`` messages per second into random conversations of the 1,000. Every second the
   simulator's counters are read: requests per aligned 30 s window (the budget's own windows) and
   per sliding 30 s (the WAF's), and the WAF's refusals.

    python bench/bench_budget.py                     # 1000 sessions, 150 s of pressure

Prints a JSON summary (and ``ocs-gateway budget``'s table at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_turns import (
    HOOK_SECRET,
    ROOT,
    UNLIMITED_BUDGET,
    Stack,
    inject,
    percentile,
    stack,
    write_config,
)
from gateway.core.keys import Keys

__all__ = ["SCALED_TUNING", "main", "window_counts"]

#: The production bot-message pacing, ten times faster.
SCALED_TUNING = {"watch_interval_s": 3.0, "watch_recent_s": 30.0, "watch_max_interval_s": 180.0,
                 "watch_window_s": 8640.0}
SCALED_BUDGET = {"requests_per_window": 200, "session_requests_per_window": 30, "starts_per_window": 30, "window_s": 30}


def _total(counts: dict[str, int]) -> int:
    return sum(v for k, v in counts.items() if k != "waf_blocked")


def window_counts(samples: Sequence[tuple[float, int]], window_s: float) -> tuple[list[tuple[float, int]], int]:
    """From (epoch s, cumulative requests) samples a second apart: requests in each aligned
    window fully covered by the samples, and the most in any sliding window of the same length."""
    aligned: list[tuple[float, int]] = []
    if not samples:
        return aligned, 0
    first, last = samples[0][0], samples[-1][0]

    def at(t: float) -> int:
        # The last sample taken at or before t (counts only grow).
        best = samples[0][1]
        for when, value in samples:
            if when > t:
                break
            best = value
        return best

    start = (first // window_s + 1) * window_s
    while start + window_s <= last:
        aligned.append((start, at(start + window_s) - at(start)))
        start += window_s
    sliding = 0
    j = 0
    for t_end, v_end in samples:
        while samples[j][0] < t_end - window_s:
            j += 1
        sliding = max(sliding, v_end - samples[j][1])
    return aligned, sliding


def _clear_budget(s: Stack) -> int:
    client = s.redis
    keys = list(client.scan_iter(match=f"{Keys().budget_prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    return len(keys)


def _budget_table(config: Path) -> str:
    env = {**os.environ, "BENCH_OCS_SECRET": "demo-secret", "BENCH_HOOK_SECRET": HOOK_SECRET}
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "--config", str(config), "budget"], check=False, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    lines = (done.stdout or done.stderr).splitlines()
    return "\n".join(lines[:8])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--turn-rate", type=float, default=0.5, help="user messages per second during the pressure phase")
    parser.add_argument("--latency", type=float, default=0.5, help="bot reply latency (s)")
    parser.add_argument("--control", action="store_true",
                        help="control run: the pressure phase without the small budget and the WAF (same load)")
    parser.add_argument("--pressure-watch-s", type=float, default=SCALED_TUNING["watch_interval_s"],
                        help="watch_interval_s in the pressure phase (3600: no watches)")
    parser.add_argument("--setup-rate", type=float, default=100.0, help="first messages per second in the setup")
    parser.add_argument("--rtt", type=float, default=0.05)
    parser.add_argument("--redis-pool", type=int, default=0, help="override the workers' Redis pool size (0: the gateway's own)")
    args = parser.parse_args()
    window_s = float(SCALED_BUDGET["window_s"])
    results: dict[str, Any] = {"budget": SCALED_BUDGET, "tuning": SCALED_TUNING, "sessions": args.sessions}
    with stack(args.rtt) as s:
        s.redis_pool = args.redis_pool
        s.knobs(reply_latency_s=args.latency)
        # 1. Setup: every conversation gets a session and a recent turn.
        setup = write_config(s, "setup", {"bench": {"budget": UNLIMITED_BUDGET}}, SCALED_TUNING)
        s.start_worker(setup)
        convs = [f"c{n}" for n in range(args.sessions)]
        t0 = time.time()
        asyncio.run(inject(s.redis_url, [("bench", c, f"hello {c}", f"{c}-0") for c in convs], rate=args.setup_rate))
        got = s.wait_replies(args.sessions, 300)
        results["setup"] = {"turns": args.sessions, "delivered": got, "seconds": round(time.time() - t0, 1),
                            "rate_per_s": args.setup_rate}
        s.stop_workers()
        results["setup"]["budget_keys_cleared"] = _clear_budget(s)
        # 2. Pressure.
        budget: dict[str, Any] = dict(UNLIMITED_BUDGET) if args.control else dict(SCALED_BUDGET)
        if not args.control:
            s.knobs(waf_limit=int(SCALED_BUDGET["requests_per_window"]), waf_window_s=window_s)
        results["pressure_budget"] = budget
        tuning = {**SCALED_TUNING, "watch_interval_s": args.pressure_watch_s}
        results["pressure_tuning"] = tuning
        tight = write_config(s, "tight", {"bench": {"budget": budget, "waf_backoff_s": 6.0}}, tuning)
        s.start_worker(tight)
        base_counts, base_replies = s.sim_counts(), s.reply_count()
        samples: list[tuple[float, int]] = [(time.time(), _total(base_counts))]
        rng = random.Random(7)
        turns = int(args.seconds * args.turn_rate)
        items = [("bench", c, f"again {c} #{n}", f"{c}-p{n}") for n, c in enumerate(rng.choice(convs) for _ in range(turns))]
        admitted: dict[str, float] = {}
        injector = threading.Thread(target=lambda: admitted.update(asyncio.run(inject(s.redis_url, items, rate=args.turn_rate))))
        start = time.time()
        injector.start()
        while time.time() < start + args.seconds or (s.reply_count() - base_replies < turns and time.time() < start + args.seconds + 60):
            time.sleep(max(0.0, 1.0 - (time.time() - samples[-1][0])))
            samples.append((time.time(), _total(s.sim_counts())))
        injector.join()
        counts = s.sim_counts()
        results["budget_cli"] = _budget_table(tight)
        due = s.redis.zcount(Keys().watch, "-inf", time.time())
        s.stop_workers()
        aligned, sliding = window_counts(samples, window_s)
        replies = [r for r in s.replies() if r.in_reply_to in admitted]
        tasks = {text: (done, accepted) for text, done, accepted in s.sim_tasks().values()}
        texts = {event_id: text for _, _, text, event_id in items}
        delays: list[float] = []
        to_ocs: list[float] = []
        turn_times: list[float] = []
        for r in replies:
            event_id = str(r.in_reply_to)
            turn_times.append(r.arrived - admitted[event_id])
            done, accepted = tasks.get(texts[event_id], (None, 0.0))
            if done is not None:
                delays.append(r.arrived - done)
                to_ocs.append(accepted - admitted[event_id])
        elapsed = samples[-1][0] - start
        results["pressure"] = {
            "seconds": round(elapsed, 1),
            "ocs_requests_by_route": {k: counts[k] - base_counts.get(k, 0) for k in counts if counts[k] - base_counts.get(k, 0)},
            "ocs_requests_per_s": round((samples[-1][1] - samples[0][1]) / elapsed, 2),
            "budget_per_s": round(SCALED_BUDGET["requests_per_window"] / window_s, 2),
            "aligned_windows": [n for _, n in aligned],
            "max_aligned_window": max((n for _, n in aligned), default=0),
            "max_sliding_30s": sliding,
            "waf_blocked": counts["waf_blocked"] - base_counts["waf_blocked"],
            "watches_due_at_end": due,
            "user_turns": turns,
            "replied": len(replies),
            "reply_delay_ms": {"p50": round(percentile(delays, 50) * 1000), "p95": round(percentile(delays, 95) * 1000),
                               "max": round(max(delays, default=0) * 1000)},
            "turn_time_s": {"p50": round(percentile(turn_times, 50), 2), "p95": round(percentile(turn_times, 95), 2)},
            "admitted_to_ocs_accept_s": {"p50": round(percentile(to_ocs, 50), 2), "p95": round(percentile(to_ocs, 95), 2)},
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
