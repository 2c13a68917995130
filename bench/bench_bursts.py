"""Bursts (issue 16): what a quiet window buys and costs. A user's burst of messages a few hundred
ms apart, through webhook channels that differ only in ``coalesce``: ``mode: off`` (one OCS turn
per message, the code before bursts: the baseline) and ``while_busy`` with ``quiet_ms`` 0, 300 and
600, all in the same rounds on the same bot (fixed 2 s answers, learned first).

Same processes as bench_turns.py (Redis, simulator with 50 ms round trip, receiver, one
``ocs-gateway worker``). Users hold conversations (bench/conversations.py): each sends a burst,
waits for the answer to its last message, pauses 0.5–1.5 s, sends the next. Patterns: a single
message (what most replies are), 3 messages 150 ms apart, 5 messages 100 ms apart (the issue's
own figures).

Per arm and pattern: OCS turns per burst (the simulator's tasks, each tied to the messages it
carried), answers per burst (the receiver's answer callbacks naming one of the burst's messages),
the time from the burst's last message to its last answer and from its first message to its
first answer (p50/p95); per round the ratios against ``off`` and against ``quiet_ms`` 0.

    python bench/bench_bursts.py                     # 3 rounds, ~2 min
    python bench/bench_bursts.py --rounds 2 --convs 4

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

from bench.bench_turns import UNLIMITED_BUDGET, Stack, percentile, stack, write_config
from bench.conversations import Burst, Script, SentBurst, run_conversations

__all__ = ["ARMS", "PATTERNS", "main"]

BOT = "b2"
LATENCY = {"kind": "fixed", "median_s": 2.0, "p95_s": 2.0}
#: arm -> the channel's coalesce settings
ARMS: dict[str, dict[str, Any]] = {
    "off": {"mode": "off"},
    "quiet_0": {"mode": "while_busy", "quiet_ms": 0},
    "quiet_300": {"mode": "while_busy", "quiet_ms": 300},
    "quiet_600": {"mode": "while_busy", "quiet_ms": 600},
}
PATTERNS: dict[str, Burst] = {"single": Burst(1, 0.0), "3x150ms": Burst(3, 0.15), "5x100ms": Burst(5, 0.10)}


def _config(s: Stack) -> Path:
    channels = {f"{BOT}-{arm}": (BOT, {"coalesce": coalesce}) for arm, coalesce in ARMS.items()}
    return write_config(s, "bursts", {BOT: {"budget": UNLIMITED_BUDGET}}, {"watch_interval_s": 3600}, channels)


def _stats(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50_ms": round(percentile(values, 50) * 1000), "p95_ms": round(percentile(values, 95) * 1000)}


def _measure(s: Stack, sent: Sequence[SentBurst]) -> dict[str, dict[str, Any]]:
    """Per ``arm/pattern``: the bursts' turns, answers and latencies."""
    burst_of = {event_id: (b.conversation, b.index) for b in sent for event_id in b.event_ids}
    turns: dict[tuple[str, int], int] = {}
    for text, _, _ in s.sim_tasks().values():
        carried = {burst_of[line] for line in text.split("\n\n") if line in burst_of}
        for key in carried:
            turns[key] = turns.get(key, 0) + 1
    answers: dict[tuple[str, int], list[float]] = {}
    for cb in s.callbacks():
        if cb.kind == "progress":
            continue
        named = {burst_of[e] for e in (cb.in_reply_to_all or (cb.in_reply_to,)) if e in burst_of}
        for key in named:
            answers.setdefault(key, []).append(cb.arrived)
    out: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        for pattern, shape in PATTERNS.items():
            bursts = [b for b in sent if b.channel == f"{BOT}-{arm}" and b.conversation.startswith(f"{pattern}-")
                      and len(b.event_ids) == shape.count]
            ocs_turns = [turns.get((b.conversation, b.index), 0) for b in bursts]
            got = [answers.get((b.conversation, b.index), []) for b in bursts]
            last = [max(a) - b.admitted[-1] for a, b in zip(got, bursts) if a]
            first = [min(a) - b.admitted[0] for a, b in zip(got, bursts) if a]
            n = max(len(bursts), 1)
            out[f"{arm}/{pattern}"] = {
                "bursts": len(bursts), "answered": sum(b.answered for b in bursts),
                "ocs_turns_per_burst": round(sum(ocs_turns) / n, 2),
                "answers_per_burst": round(sum(len(a) for a in got) / n, 2),
                "last_message_to_last_answer": _stats(last),
                "first_message_to_first_answer": _stats(first),
            }
    return out


def _ratios(cells: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Within one round: every quiet arm against ``off`` and against ``quiet_0``, per pattern."""
    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    out: dict[str, Any] = {}
    for baseline in ("off", "quiet_0"):
        for arm in ARMS:
            if arm == baseline or (baseline == "quiet_0" and arm == "off"):
                continue
            for pattern in PATTERNS:
                a, b = cells[f"{arm}/{pattern}"], cells[f"{baseline}/{pattern}"]
                out[f"{arm}/{baseline} {pattern}"] = {
                    "ocs_turns_per_burst": ratio(a["ocs_turns_per_burst"], b["ocs_turns_per_burst"]),
                    "last_to_last_p50": ratio(a["last_message_to_last_answer"].get("p50_ms"),
                                              b["last_message_to_last_answer"].get("p50_ms")),
                    "last_to_last_p95": ratio(a["last_message_to_last_answer"].get("p95_ms"),
                                              b["last_message_to_last_answer"].get("p95_ms")),
                    "first_to_first_p50": ratio(a["first_message_to_first_answer"].get("p50_ms"),
                                                b["first_message_to_first_answer"].get("p50_ms")),
                }
    return out


def _summary(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair, figures in rounds[0]["ratios"].items():
        out[pair] = {}
        for figure in figures:
            values = [r["ratios"][pair][figure] for r in rounds if r["ratios"][pair][figure] is not None]
            if values:
                out[pair][figure] = {"median": round(statistics.median(values), 3),
                                     "range": [round(min(values), 3), round(max(values), 3)]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--convs", type=int, default=6, help="conversations per arm and pattern per round")
    parser.add_argument("--bursts", type=int, default=2, help="bursts per conversation")
    parser.add_argument("--warm", type=int, default=100, help="turns the bot learns from first")
    parser.add_argument("--rtt", type=float, default=0.05)
    args = parser.parse_args()
    results: dict[str, Any] = {"rtt_s": args.rtt, "latency": LATENCY, "arms": ARMS,
                               "patterns": {k: {"messages": v.count, "gap_ms": round(v.gap_s * 1000)} for k, v in PATTERNS.items()},
                               "rounds": []}
    t0 = time.monotonic()
    with stack(args.rtt) as s:
        s.knobs(reply_latency=LATENCY, latency_seed=1)
        s.start_worker(_config(s))
        time.sleep(3)
        warm = [Script(f"{BOT}-off", f"warm-{n}", (Burst(),), think_s=0.0, start_s=n / 20) for n in range(args.warm)]
        asyncio.run(run_conversations(s.redis_url, s.receiver_url, warm))
        all_sent: list[SentBurst] = []
        for r in range(args.rounds):
            rng = random.Random(r)
            scripts = [Script(f"{BOT}-{arm}", f"{pattern}-r{r}-{arm}-{n}", (shape,) * args.bursts,
                              think_s=rng.uniform(0.5, 1.5), start_s=rng.uniform(0.0, 2.0))
                       for n in range(args.convs) for arm in ARMS for pattern, shape in PATTERNS.items()]
            load = os.getloadavg()[0]
            sent = asyncio.run(run_conversations(s.redis_url, s.receiver_url, scripts))
            cells = _measure(s, sent)
            results["rounds"].append({"round": r, "load_1min": round(load, 1), "cells": cells, "ratios": _ratios(cells)})
            print(json.dumps({"round": r, "cells": cells}), file=sys.stderr, flush=True)
            all_sent.extend(sent)
        results["all_rounds"] = _measure(s, all_sent)
        results["ratio_summary"] = _summary(results["rounds"])
    results["seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
