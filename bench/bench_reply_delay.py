"""Reply delay: from the moment OCS has the answer (the simulator's ``task_completed_at``) to the
callback's arrival at the receiver, for the learning poll schedule, and for a fixed 1 s poller
(OCS's own widget) against the same simulator in the same run.

Same processes as bench_turns.py (Redis, simulator with 50 ms round trip, receiver, one
``ocs-gateway worker``). One bot per latency profile, so each learns its own histogram: fixed
0.5 s, 2 s, 7 s, and lognormal (median 3 s, p95 12 s). Per profile: ``--warm`` turns to learn
(reported as the cold-start figures), then ``--turns`` measured turns at ``--rate`` per second,
while the 1 s poller runs as many turns of its own at the same rate. Task polls per turn come from
the simulator's counters (the poller's own polls, counted by it, subtracted).

    python bench/bench_reply_delay.py                    # 300 warm + 300 measured per profile
    python bench/bench_reply_delay.py --profiles fixed_2 --warm 100 --turns 100

Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_turns import (
    UNLIMITED_BUDGET,
    Stack,
    inject,
    percentile,
    stack,
    write_config,
)
from gateway.ocs.simulator import DEMO_CHATBOT_ID

__all__ = ["PROFILES", "PollerTurn", "main", "run_fixed_poller", "run_profile"]

#: name -> (bot name, the simulator's reply_latency knob)
PROFILES: dict[str, tuple[str, dict[str, Any]]] = {
    "fast_0.25": ("f025", {"kind": "lognormal", "median_s": 0.25, "p95_s": 0.3}),
    "fixed_0.5": ("f05", {"kind": "fixed", "median_s": 0.5, "p95_s": 0.5}),
    "fixed_2": ("f2", {"kind": "fixed", "median_s": 2.0, "p95_s": 2.0}),
    "fixed_7": ("f7", {"kind": "fixed", "median_s": 7.0, "p95_s": 7.0}),
    "lognormal_3_12": ("ln3", {"kind": "lognormal", "median_s": 3.0, "p95_s": 12.0}),
}


@dataclass
class PollerTurn:
    task_id: str = ""
    polls: int = 0
    #: When the poll that saw the answer came back (epoch s).
    seen_at: float = 0.0


async def _poller_turn(http: httpx.AsyncClient, sim_url: str, token: str, name: str, turn: PollerTurn) -> None:
    start = (await http.post(f"{sim_url}/api/chat/start/", headers={"Authorization": f"Bearer {token}"},
                             json={"chatbot_id": DEMO_CHATBOT_ID, "participant_remote_id": name})).json()
    session = {"X-Session-Token": start["session_token"]}
    sid = start["session_id"]
    task = (await http.post(f"{sim_url}/api/chat/{sid}/message/", headers=session, json={"message": name})).json()
    turn.task_id = task["task_id"]
    sent = time.monotonic()
    while True:
        turn.polls += 1
        await asyncio.sleep(max(0.0, sent + turn.polls - time.monotonic()))  # every 1 s after the send
        result = (await http.get(f"{sim_url}/api/chat/{sid}/{turn.task_id}/poll/", headers=session)).json()
        if result["status"] != "processing":
            turn.seen_at = time.time()
            return


async def run_fixed_poller(sim_url: str, names: Sequence[str], rate: float) -> list[PollerTurn]:
    """The reference client: per turn a new session, one send, then a poll every 1 s."""
    async with httpx.AsyncClient(timeout=30, headers={"User-Agent": "bench-fixed-poller"},
                                 limits=httpx.Limits(max_connections=200)) as http:
        token = (await http.post(f"{sim_url}/o/token/", data={
            "grant_type": "client_credentials", "client_id": "demo-client", "client_secret": "demo-secret",
            "scope": "chat:start"})).json()["access_token"]
        turns = [PollerTurn() for _ in names]
        t0 = time.monotonic()

        async def paced(n: int) -> None:
            await asyncio.sleep(max(0.0, t0 + n / rate - time.monotonic()))
            await _poller_turn(http, sim_url, token, names[n], turns[n])

        await asyncio.gather(*(paced(n) for n in range(len(names))))
    return turns


def _stats(delays: Sequence[float]) -> dict[str, float]:
    if not delays:
        return {"n": 0}
    return {"n": len(delays), "p50_ms": round(percentile(delays, 50) * 1000), "p95_ms": round(percentile(delays, 95) * 1000),
            "max_ms": round(max(delays) * 1000)}


def _gateway_turns(s: Stack, bot: str, tag: str, count: int, rate: float, wait_s: float) -> dict[str, Any]:
    """``count`` first messages at ``rate``/s into new conversations of ``bot``'s channel; their
    reply delays and task polls per turn (the simulator's whole task_poll delta)."""
    items = [(bot, f"{tag}-{n}", f"hello {tag}-{n}", f"{tag}-{n}") for n in range(count)]
    before_replies, before = s.reply_count(), s.sim_counts()
    admitted = asyncio.run(inject(s.redis_url, items, rate=rate))
    got = s.wait_replies(before_replies + count, wait_s) - before_replies
    return {"items": items, "admitted": admitted, "delivered": got, "polls": s.sim_counts()["task_poll"] - before["task_poll"]}


def _delays(s: Stack, run: Mapping[str, Any]) -> list[float]:
    completed = {text: done for text, done, _ in s.sim_tasks().values()}
    by_event = {r.in_reply_to: r.arrived for r in s.replies()}
    delays = []
    for _, _, text, event_id in run["items"]:
        done, arrived = completed.get(text), by_event.get(event_id)
        if done is not None and arrived is not None:
            delays.append(arrived - done)
    return delays


def run_profile(s: Stack, name: str, *, warm: int, turns: int, rate: float, seed: int) -> dict[str, Any]:
    bot, latency = PROFILES[name]
    s.knobs(reply_latency=latency, latency_seed=seed)
    tail_s = 120.0 if latency["kind"] == "lognormal" else latency["median_s"] * 3 + 30
    result: dict[str, Any] = {"profile": name, "latency": latency}
    if warm:
        cold = _gateway_turns(s, bot, f"{bot}-warm", warm, rate * 2, warm / (rate * 2) + tail_s)
        result["learning"] = {"turns": warm, "delivered": cold["delivered"], "delay": _stats(_delays(s, cold)),
                              "task_polls_per_turn": round(cold["polls"] / warm, 2)}
    # The measured turns and the 1 s poller's, interleaved on the same simulator.
    names = [f"poller-{bot}-{n}" for n in range(turns)]
    poller: list[PollerTurn] = []
    polls_before = s.sim_counts()["task_poll"]
    thread = threading.Thread(target=lambda: poller.extend(asyncio.run(run_fixed_poller(s.sim_url, names, rate))))
    thread.start()
    measured = _gateway_turns(s, bot, f"{bot}-m", turns, rate, turns / rate + tail_s)
    thread.join()
    poller_polls = sum(t.polls for t in poller)
    gateway_polls = s.sim_counts()["task_poll"] - polls_before - poller_polls
    completed = {tid: done for tid, (_, done, _) in s.sim_tasks().items()}
    poller_delays = [t.seen_at - done for t in poller if (done := completed.get(t.task_id)) is not None]
    result["gateway"] = {"turns": turns, "delivered": measured["delivered"], "delay": _stats(_delays(s, measured)),
                         "task_polls_per_turn": round(gateway_polls / turns, 2)}
    result["fixed_1s_poller"] = {"turns": turns, "delay": _stats(poller_delays),
                                 "task_polls_per_turn": round(poller_polls / turns, 2)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profiles", nargs="*", default=list(PROFILES), choices=list(PROFILES))
    parser.add_argument("--warm", type=int, default=300, help="turns per profile to learn from before measuring")
    parser.add_argument("--turns", type=int, default=300, help="measured turns per profile (and as many for the 1 s poller)")
    parser.add_argument("--rate", type=float, default=10.0, help="measured turns per second (warm-up runs at twice this)")
    parser.add_argument("--rtt", type=float, default=0.05)
    args = parser.parse_args()
    results: dict[str, Any] = {"rtt_s": args.rtt, "rate_per_s": args.rate, "profiles": []}
    with stack(args.rtt) as s:
        bots = {PROFILES[p][0]: {"budget": UNLIMITED_BUDGET, "task_timeout_s": 600} for p in args.profiles}
        s.start_worker(write_config(s, "reply-delay", bots, {"watch_interval_s": 3600}))
        time.sleep(3)
        for n, name in enumerate(args.profiles):
            profile = run_profile(s, name, warm=args.warm, turns=args.turns, rate=args.rate, seed=n + 1)
            print(json.dumps(profile), file=sys.stderr, flush=True)
            results["profiles"].append(profile)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
