"""Turns in flight and turns/s for ONE worker process against the OCS simulator.

Everything is real and local: an embedded redis-server, the simulator (``ocs-gateway sim``) in its
own process with a fixed reply latency, one ``ocs-gateway worker`` process with production
tuning, and a callback receiver. Turns are injected the way the edge stores them (``admit`` +
enqueue), one per conversation, all at once.

The baseline, measured in the same run on the same Redis and simulator, is the design we did not
build: a Dramatiq actor that holds its thread for the whole turn (start, send, poll with sleeps,
callback), 8 threads — what "Dramatiq actors that wait for OCS" would give.

    python bench/bench_turns.py                      # 1000 turns at 2 s latency, baseline 64 turns
    python bench/bench_turns.py --capacity 1200      # also: peak in flight at 30 s latency

Prints a JSON summary; docs/PERFORMANCE.md records the figures as ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import redis
import redis.asyncio as aioredis
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapters.webhook import signing  # noqa: E402
from gateway.embedded_redis import EmbeddedRedis, _free_port  # noqa: E402
from gateway.inbox import admit  # noqa: E402
from gateway.keys import Keys  # noqa: E402
from gateway.models import ConversationKey, Inbound, InboundKind  # noqa: E402
from gateway.simulator import DEMO_CHATBOT_ID  # noqa: E402
from workers.broker import ADVANCE, enqueue, make_broker  # noqa: E402

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Receiver:
    """Counts callbacks and when they came (verifying each signature, as a real receiver)."""

    def __init__(self) -> None:
        self.replies: dict[str, float] = {}
        self.lock = threading.Lock()
        key = signing.decode_secret(SECRET)

        async def callback(request: Request) -> JSONResponse:
            body = await request.body()
            signing.verify(key, {k.lower(): v for k, v in request.headers.items()}, body)
            with self.lock:
                self.replies.setdefault(json.loads(body)["conversation_id"], time.monotonic())
            return JSONResponse({"ok": True})

        self.port = _free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(Starlette(routes=[Route("/cb", callback, methods=["POST"])]), port=self.port, log_level="error")
        )
        threading.Thread(target=self.server.run, daemon=True).start()
        while not self.server.started:
            time.sleep(0.02)

    def count(self) -> int:
        with self.lock:
            return len(self.replies)


def _wait_http(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def _config(tmp: Path, redis_url: str, sim_url: str, receiver_port: int) -> Path:
    path = tmp / "gateway.yaml"
    path.write_text(
        f"redis_url: {redis_url}\n"
        f"bots:\n  sim:\n    base_url: {sim_url}\n    chatbot_id: {DEMO_CHATBOT_ID}\n"
        "    client_id: demo-client\n    client_secret: ${BENCH_OCS_SECRET}\n    task_timeout_s: 600\n"
        "channels:\n  bench:\n    type: webhook\n    bot: sim\n    secret: ${BENCH_HOOK_SECRET}\n"
        f"    callback_url: http://127.0.0.1:{receiver_port}/cb\n"
        # Production tuning, except that nothing polls for bot-initiated messages mid-run.
        "worker:\n  botpoll_interval_s: 3600\n"
    )
    return path


async def _inject(redis_url: str, convs: list[str], started: dict[str, float]) -> None:
    client = aioredis.Redis.from_url(redis_url)
    broker = make_broker(redis_url, with_asyncio=False)
    keys = Keys()
    for conv in convs:
        inbound = Inbound(
            key=ConversationKey("bench", conv), event_id=f"evt-{conv}", kind=InboundKind.MESSAGE,
            sender_id=conv, text=f"hello from {conv}", route={"conversation_id": conv, "in_reply_to": f"evt-{conv}"},
        )
        await admit(client, keys, inbound, dedup_ttl_s=3600)
        started[conv] = time.monotonic()
        enqueue(broker, ADVANCE, str(inbound.key))
    broker.close()
    await client.aclose()


def _in_flight(client: redis.Redis, convs: list[str]) -> int:
    """Turns OCS has accepted whose reply we are waiting for (ledger state ``sent``)."""
    pipe = client.pipeline(transaction=False)
    for conv in convs:
        pipe.hget(f"ocsgw:turn:bench/{conv}", "state")
    return sum(1 for state in pipe.execute() if state == b"sent")


def _summary(design: str, receiver: Receiver, started: dict[str, float], elapsed: float, peak: int) -> dict[str, Any]:
    latencies = [receiver.replies[c] - started[c] for c in started if c in receiver.replies]
    return {
        "design": design,
        "turns": len(started),
        "delivered": receiver.count(),
        "seconds": round(elapsed, 2),
        "turns_per_s": round(len(started) / elapsed, 2),
        "peak_in_flight": peak,
        "latency_p50_s": round(statistics.median(latencies), 2),
        "latency_p95_s": round(statistics.quantiles(latencies, n=20)[18], 2),
    }


def run_ours(redis_url: str, sim_url: str, turns: int, tmp: Path, tag: str) -> dict[str, Any]:
    redis.Redis.from_url(redis_url).flushdb()
    receiver = Receiver()
    config = _config(tmp, redis_url, sim_url, receiver.port)
    env = {**os.environ, "BENCH_OCS_SECRET": "demo-secret", "BENCH_HOOK_SECRET": SECRET, "LOG_LEVEL": "WARNING"}
    worker = subprocess.Popen([sys.executable, "-m", "gateway.cli", "--config", str(config), "worker"], cwd=ROOT, env=env)
    time.sleep(1.5)
    convs = [f"{tag}-{n}" for n in range(turns)]
    started: dict[str, float] = {}
    client = redis.Redis.from_url(redis_url)
    t0 = time.monotonic()
    injector = threading.Thread(target=lambda: asyncio.run(_inject(redis_url, convs, started)))
    injector.start()
    peak = 0
    deadline = t0 + 900
    while receiver.count() < turns and time.monotonic() < deadline:
        peak = max(peak, _in_flight(client, convs))
        time.sleep(0.1)
    elapsed = max(receiver.replies.values()) - t0
    injector.join()
    worker.terminate()
    worker.wait(timeout=30)
    receiver.server.should_exit = True
    return _summary("ocs-gateway (turn state machine, delayed messages)", receiver, started, elapsed, peak)


def run_baseline(redis_url: str, sim_url: str, turns: int) -> dict[str, Any]:
    redis.Redis.from_url(redis_url).flushdb()
    receiver = Receiver()
    env = {**os.environ, "LOG_LEVEL": "WARNING"}
    args = [sys.executable, str(ROOT / "bench" / "thread_per_turn.py"), redis_url, sim_url, f"http://127.0.0.1:{receiver.port}/cb", SECRET]
    worker = subprocess.Popen(args, cwd=ROOT, env=env)
    time.sleep(1.5)
    from bench.thread_per_turn import enqueue_turn  # noqa: PLC0415

    t0 = time.monotonic()
    started: dict[str, float] = {}
    for n in range(turns):
        started[f"base-{n}"] = time.monotonic()
        enqueue_turn(redis_url, f"base-{n}")
    deadline = t0 + 900
    while receiver.count() < turns and time.monotonic() < deadline:
        time.sleep(0.1)
    elapsed = max(receiver.replies.values()) - t0
    worker.terminate()
    worker.wait(timeout=30)
    receiver.server.should_exit = True
    return _summary("baseline: one Dramatiq thread held per turn (8 threads)", receiver, started, elapsed, 8)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=1000)
    parser.add_argument("--baseline-turns", type=int, default=64)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--capacity", type=int, default=0, help="also measure peak in flight with N turns at 30 s latency")
    args = parser.parse_args()
    results: dict[str, Any] = {"latency_s": args.latency}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        with EmbeddedRedis(tmp / "redis", persist=False) as redis_url:
            sim_port = _free_port()
            sim = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "sim", "--port", str(sim_port), "--latency", str(args.latency)],
                cwd=ROOT, stdout=subprocess.DEVNULL,
            )
            sim_url = f"http://127.0.0.1:{sim_port}"
            try:
                _wait_http(sim_url)
                results["ours"] = run_ours(redis_url, sim_url, args.turns, tmp, "t")
                results["baseline"] = run_baseline(redis_url, sim_url, args.baseline_turns)
            finally:
                sim.terminate()
                sim.wait()
            if args.capacity:
                sim = subprocess.Popen(
                    [sys.executable, "-m", "gateway.cli", "sim", "--port", str(sim_port), "--latency", "30"],
                    cwd=ROOT, stdout=subprocess.DEVNULL,
                )
                try:
                    _wait_http(sim_url)
                    results["capacity_at_30s_latency"] = run_ours(redis_url, sim_url, args.capacity, tmp, "cap")
                finally:
                    sim.terminate()
                    sim.wait()
    ours, base = results["ours"], results["baseline"]
    results["ratio_turns_per_s"] = round(ours["turns_per_s"] / base["turns_per_s"], 1)
    results["ratio_peak_in_flight"] = round(ours["peak_in_flight"] / base["peak_in_flight"], 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
