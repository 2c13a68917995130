"""bench_turns.py run in this checkout and in another one, alternating (A, B, A, B, ...), in one
session: the machine is shared, so a before/after comparison is only worth the ratios of runs
that met the same neighbours.

Each run is that checkout's own ``bench/bench_turns.py`` with its directory leading
``PYTHONPATH`` (the worker it starts imports that checkout's code). Prints each run's figures,
then per figure: both medians, this tree's over the other's (ratio of medians) and the range of
the per-round ratios.

    python bench/compare_turns.py --other ../baseline --rounds 3 -- --phases one,monitor \\
        --turns 2000 --idle-s 0 --monitor-turns 300
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: A figure's name and how to read it from bench_turns' JSON summary (None when the phase is absent).
Figure = Callable[[Mapping[str, Any]], float | None]


def _at(*path: str) -> Figure:
    def read(summary: Mapping[str, Any]) -> float | None:
        node: Any = summary
        for step in path:
            if not isinstance(node, Mapping) or step not in node:
                return None
            node = node[step]
        return float(node)
    return read


FIGURES: dict[str, Figure] = {
    "turns/s": _at("one", "turns_per_s"),
    "worker CPU ms/turn": _at("one", "cpu_ms_per_turn", "worker0"),
    "redis CPU ms/turn": _at("one", "cpu_ms_per_turn", "redis"),
    "simulator CPU ms/turn": _at("one", "cpu_ms_per_turn", "simulator"),
    "redis commands/turn (commandstats)": _at("one", "redis_commands_per_turn"),
    "redis scripts/turn": _at("one", "redis_scripts_per_turn"),
    "redis client calls/turn (MONITOR)": _at("redis_calls_monitor", "client_commands_per_turn"),
    "redis commands inside scripts/turn (MONITOR)": _at("redis_calls_monitor", "commands_inside_scripts_per_turn"),
    "worker RSS peak MB": _at("one", "worker_rss_peak_mb"),
    "worker RSS high-water MB": _at("one", "worker_rss_hwm_mb"),
    "turn time p50 s": _at("one", "turn_time", "p50_s"),
    "turn time p95 s": _at("one", "turn_time", "p95_s"),
    "peak waiting on OCS": _at("one", "peak_waiting_on_ocs"),
    "OCS task polls/turn": _at("one", "ocs_requests_per_turn", "task_poll"),
}


def run_once(tree: Path, bench_args: list[str]) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(tree / "bench" / "bench_turns.py"), *bench_args], cwd=tree, env=env,
                          stdout=subprocess.PIPE, check=True)
    summary: dict[str, Any] = json.loads(done.stdout)
    summary["wall_s"] = round(time.monotonic() - started, 1)
    return summary


def compare(mine: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for name, read in FIGURES.items():
        a = [v for v in map(read, mine) if v is not None]
        b = [v for v in map(read, theirs) if v is not None]
        if not a or not b:
            continue
        paired = [x / y for x, y in zip(a, b, strict=False) if y]
        table[name] = {
            "this": a, "other": b,
            "this_median": round(statistics.median(a), 2), "other_median": round(statistics.median(b), 2),
            "ratio_of_medians": round(statistics.median(a) / statistics.median(b), 3) if statistics.median(b) else None,
            "per_round_ratio_range": [round(min(paired), 3), round(max(paired), 3)] if paired else None,
        }
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--other", type=Path, required=True, help="the other checkout (the baseline)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("bench_args", nargs="*", help="bench_turns.py's arguments (after --)")
    args = parser.parse_args()
    other = args.other.resolve()
    mine: list[dict[str, Any]] = []
    theirs: list[dict[str, Any]] = []
    for n in range(args.rounds):
        for tree, into in ((ROOT, mine), (other, theirs)):
            into.append(run_once(tree, args.bench_args))
            figures = {name: read(into[-1]) for name, read in FIGURES.items()}
            print(f"round {n + 1} {tree.name}: wall {into[-1]['wall_s']} s, load {into[-1].get('one', {}).get('machine_load_1min')}, "
                  + json.dumps({k: v for k, v in figures.items() if v is not None}), file=sys.stderr, flush=True)
    print(json.dumps({"this": ROOT.name, "other": other.name, "rounds": args.rounds, "bench_args": args.bench_args,
                      "figures": compare(mine, theirs), "runs": {"this": mine, "other": theirs}}, indent=2))


if __name__ == "__main__":
    main()
