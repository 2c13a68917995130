"""CPU per Redis call of redis-py's asyncio client, its pure-Python reply parser against
hiredis's (``redis[hiredis]``), in the same run, on the calls a turn makes.

The calls (``--concurrency`` at once, like the turn runner's conversations): the ledger's load
(one pipeline: HGETALL of a turn-sized hash, HGETALL of a conversation record, LRANGE of the
inbox), an EVALSHA returning a three-item list (the budget's booking), and a fenced write's
EVALSHA. Redis is an embedded redis-server in its own process; CPU is this process's
``time.process_time``. Each parser runs once per round, in turn; the summary gives each one's
CPU per call over the Python parser's in the same round (median of the rounds, with the range).

    python -m bench.bench_redis                      # about 30 seconds
    python -m bench.bench_redis --rounds 5 --calls 20000

hiredis is used when importable (redis-py picks it by itself); without it only the Python
parser runs. Prints a table and a JSON summary; docs/PERFORMANCE.md records the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser
from redis.utils import HIREDIS_AVAILABLE

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.store.embedded_redis import EmbeddedRedis

__all__ = ["main"]

BOOK = "return {1, 0, ''}"
FENCED = "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return 1"
TURN: dict[Any, Any] = {
    "id": "9f" * 16, "inbound_raw": json.dumps({"text": "hello " * 20, "user": "u1", "event_id": "e" * 24}),
    "state": "sent", "session_id": "s" * 36, "task_id": "t" * 36, "sending_at": "1733350000.123", "sent_at": "1733350000.2",
    "next_at": "1733350001.5", "polls": "1", "attempts": "0", "expect_count": "1", "last_poll_s": "0.9",
}
RECORD: dict[Any, Any] = {"session_id": "s" * 36, "session_token": "k" * 40, "started_at": "1733350000.1", "bot": "demo", "turns": "12"}


async def _run(url: str, parser: type[Any], calls: int, concurrency: int) -> float:
    client = aioredis.Redis.from_url(url, parser_class=parser, max_connections=concurrency + 4)
    try:
        await client.hset("turn:c", mapping=TURN)
        await client.hset("conv:c", mapping=RECORD)
        await client.delete("inbox:c")
        await client.rpush("inbox:c", TURN["inbound_raw"])
        book = await client.script_load(BOOK)
        fenced = await client.script_load(FENCED)

        async def one_turn() -> None:
            async with client.pipeline(transaction=False) as pipe:
                pipe.hgetall("turn:c")
                pipe.hgetall("conv:c")
                pipe.lrange("inbox:c", 0, 0)
                await pipe.execute()
            await client.evalsha(book, 0)
            await client.evalsha(fenced, 1, "turn:c", "polls", "2")

        for _ in range(concurrency):
            await one_turn()
        left = calls // 3

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await one_turn()

        cpu = time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return (time.process_time() - cpu) / (calls // 3 * 3)
    finally:
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=12000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    parsers: dict[str, type[Any]] = {"python": _AsyncRESP2Parser}
    if HIREDIS_AVAILABLE:
        parsers["hiredis"] = _AsyncHiredisParser
    per_round: dict[str, list[float]] = {name: [] for name in parsers}
    with tempfile.TemporaryDirectory() as data, EmbeddedRedis(data, persist=False) as url:
        for _ in range(args.rounds):
            for name, parser_class in parsers.items():
                per_round[name].append(asyncio.run(_run(url, parser_class, args.calls, args.concurrency)))
    summary: dict[str, Any] = {"calls": args.calls, "concurrency": args.concurrency, "parsers": {}}
    print(f"{'parser':10} {'CPU µs/call (median)':>22} {'÷ python (median, range)':>28}")
    for name, values in per_round.items():
        ratios = [v / base for v, base in zip(values, per_round["python"], strict=True)]
        print(f"{name:10} {statistics.median(values) * 1e6:22.1f} {statistics.median(ratios):16.2f} "
              f"({min(ratios):.2f}–{max(ratios):.2f})")
        summary["parsers"][name] = {"cpu_us_per_call": round(statistics.median(values) * 1e6, 1),
                                    "ratio": round(statistics.median(ratios), 3)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
