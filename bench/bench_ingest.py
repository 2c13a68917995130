"""Ingest: acknowledged platform requests per second at the edge, against a bare Starlette POST
handler under the same server and the same load tool, in the same run.

Everything is real and on loopback: an embedded redis-server with its append-only file (fsync
``always``, the shipped default, then ``everysec`` for the cost of durable acks), the gateway's
edge (``create_app``: verify, parse, one EVALSHA that stores and enqueues) under uvicorn in its
own process, and the bare handler under uvicorn in another. The load generator speaks HTTP/1.1
over raw asyncio sockets with keep-alive; every request is built and signed before the clock
starts (unique ids, so nothing is taken for a duplicate). No worker runs: this measures the edge.

For each target: throughput with ``--connections`` closed-loop connections for ``--duration``
seconds, then ack latency (p50/p99, measured from each request's scheduled send time) at half
that throughput, open loop.

    python -m bench.bench_ingest                    # about 2 minutes
    python -m bench.bench_ingest --duration 5 --connections 32
    python -m bench.bench_ingest --duration 12 --rounds 6 --compare-tree ../baseline   # before/after
    python -m bench.bench_ingest --phases replicas --targets webhook   # durable_replicas 1 vs 0

The ``replicas`` phase runs a primary and one replica and two edges on it, one with
``durable_replicas: 0`` and one with 1 (``WAIT`` before each 200), taking turns in every round.

With ``--compare-tree`` every target is also served by the edge of that checkout (its own code:
its directory leads the server's ``PYTHONPATH``), each taking its turn right after this tree's in
every round, and the summary adds this tree's rate over the other's: the median of the rounds'
ratios, with their range.

Prints a table and a JSON summary; docs/PERFORMANCE.md records the ratios (the machine is
shared, so absolute figures vary run to run).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import redis
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from adapters.webhook import signing
from gateway.config_loading import GatewayConfig
from gateway.core.config import Secret
from gateway.ocs.simulator import DEMO_CHATBOT_ID
from gateway.store.embedded_redis import EmbeddedRedis
from workers.broker import NAMESPACE, QUEUE

__all__ = ["Measured", "main"]

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TELEGRAM_TOKEN = "777000111:AAHbench-token"
TELEGRAM_SECRET = "bench-s3cret"
SLACK_SIGNING_SECRET = "bench-signing-secret"
SLACK_TOKEN = "xoxb-bench-T1"
QUEUE_KEY = f"{NAMESPACE}:{QUEUE}"
#: Conversations the load is spread over (one inbox each).
CONVERSATIONS = 1000
UVICORN_OPTIONS: dict[str, Any] = {"host": "127.0.0.1", "log_level": "warning"}

Target = Literal["bare", "webhook", "telegram", "slack"]
PATHS: dict[Target, str] = {
    "bare": "/webhooks/hooks", "webhook": "/webhooks/hooks", "telegram": "/telegram/tg", "slack": "/slack/sl/events",
}


# -- the servers (each in its own process) ------------------------------------------------------


async def _bare_handler(request: Request) -> Response:
    await request.body()
    return JSONResponse({"ok": True})


def bare_app() -> Starlette:
    """The baseline: the same route shape, reads the body, answers 200."""
    return Starlette(routes=[Route("/webhooks/{channel}", _bare_handler, methods=["POST"])])


def edge_config(telegram_api: str, slack_api: str, durable_replicas: int = 0) -> GatewayConfig:
    return GatewayConfig.from_mapping({
        # A generous WAIT: a timeout would count as a failed request, not a cheaper one.
        "durable_replicas": durable_replicas, "durable_timeout_ms": 4000,
        "bots": {"demo": {"chatbot_id": DEMO_CHATBOT_ID, "auth": "keyless", "base_url": "http://127.0.0.1:9"}},
        "channels": {
            "hooks": {"type": "webhook", "bot": "demo", "secret": Secret(WEBHOOK_SECRET),
                      "callback_url": "http://127.0.0.1:9/callback"},
            "tg": {"type": "telegram", "bot": "demo", "token": Secret(TELEGRAM_TOKEN),
                   "webhook_secret": Secret(TELEGRAM_SECRET), "api_base_url": telegram_api},
            "sl": {"type": "slack", "bot": "demo", "signing_secret": Secret(SLACK_SIGNING_SECRET),
                   "bot_token": Secret(SLACK_TOKEN), "api_base_url": slack_api},
        },
    })


def _serve(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench_ingest serve")
    parser.add_argument("kind", choices=["bare", "edge"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", default="")
    parser.add_argument("--telegram-api", default="")
    parser.add_argument("--slack-api", default="")
    parser.add_argument("--durable-replicas", type=int, default=0)
    args = parser.parse_args(argv)
    if args.kind == "bare":
        app = bare_app()
    else:
        from gateway.edge.app import create_app

        app = create_app(edge_config(args.telegram_api, args.slack_api, args.durable_replicas), args.redis_url)
    uvicorn.run(app, port=args.port, **UVICORN_OPTIONS)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _spawn(*args: str, tree: Path = ROOT) -> tuple[subprocess.Popen[bytes], int]:
    """Serve from ``tree`` (another checkout holding this file, for before/after figures): its
    directory leads ``PYTHONPATH`` so the server imports that checkout's code, not this one's."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH", "")) if p)}
    process = subprocess.Popen([sys.executable, "-m", "bench.bench_ingest", "serve", *args, "--port", str(port)],
                               cwd=tree, env=env)
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process, port
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server {args} did not start") from None
            time.sleep(0.1)


# -- requests, built and signed before the clock starts ----------------------------------------


def _http(path: str, port: int, body: bytes, headers: dict[str, str]) -> bytes:
    head = [f"POST {path} HTTP/1.1", f"host: 127.0.0.1:{port}", f"content-length: {len(body)}",
            "content-type: application/json", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _webhook(i: int) -> tuple[bytes, dict[str, str]]:
    event_id = f"msg_{i}"
    body = json.dumps({"conversation_id": f"c{i % CONVERSATIONS}", "sender": {"id": f"u{i % CONVERSATIONS}", "name": "Ada"},
                       "text": f"hello number {i}"}).encode()
    ts = int(time.time())
    signature = signing.sign(signing.decode_secret(WEBHOOK_SECRET), event_id, ts, body)
    return body, {"webhook-id": event_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


def _telegram(i: int) -> tuple[bytes, dict[str, str]]:
    chat = 10_000 + i % CONVERSATIONS
    body = json.dumps({"update_id": i, "message": {
        "message_id": i + 1, "date": int(time.time()), "text": f"hello number {i}",
        "chat": {"id": chat, "type": "private", "first_name": "Ada"},
        "from": {"id": chat, "is_bot": False, "first_name": "Ada"},
    }}).encode()
    return body, {"x-telegram-bot-api-secret-token": TELEGRAM_SECRET}


def _slack(i: int) -> tuple[bytes, dict[str, str]]:
    ts = f"{1_700_000_000 + i}.000100"
    event = {"type": "message", "channel": f"D{i % CONVERSATIONS:06d}", "channel_type": "im", "user": f"U{i % CONVERSATIONS:06d}",
             "text": f"hello number {i}", "ts": ts, "event_ts": ts, "team": "T1"}
    body = json.dumps({"token": "x", "team_id": "T1", "api_app_id": "ABENCH", "event": event, "type": "event_callback",
                       "event_id": f"Ev{i}", "event_time": int(time.time())}).encode()
    stamp = str(int(time.time()))
    digest = hmac.new(SLACK_SIGNING_SECRET.encode(), f"v0:{stamp}:".encode() + body, hashlib.sha256).hexdigest()
    return body, {"x-slack-request-timestamp": stamp, "x-slack-signature": f"v0={digest}"}


#: Request builders by target; ``i`` must be unique per target within one Redis (ids are claimed).
BUILDERS: dict[Target, Callable[[int], tuple[bytes, dict[str, str]]]] = {
    "bare": _webhook, "webhook": _webhook, "telegram": _telegram, "slack": _slack,
}


def prepare(target: Target, port: int, first: int, count: int) -> list[bytes]:
    build = BUILDERS[target]
    return [_http(PATHS[target], port, *build(i)) for i in range(first, first + count)]


# -- the load generator -------------------------------------------------------------------------


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> int:
    writer.write(raw)
    status = int((await reader.readline()).split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def _connect(port: int, n: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    return [await asyncio.open_connection("127.0.0.1", port) for _ in range(n)]


async def _close(connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    for _, writer in connections:
        writer.close()
    for _, writer in connections:
        try:
            await writer.wait_closed()
        except OSError:
            pass


async def closed_loop(port: int, requests: list[bytes], *, connections: int, duration_s: float) -> tuple[float, int, int]:
    """Back-to-back requests on ``connections`` connections; (requests/s, ok, failed)."""
    conns = await _connect(port, connections)
    pending = iter(requests)
    counts = {"ok": 0, "failed": 0}
    deadline = time.perf_counter() + duration_s

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for raw in pending:
            status = await _exchange(reader, writer, raw)
            counts["ok" if status == 200 else "failed"] += 1
            if time.perf_counter() >= deadline:
                return

    started = time.perf_counter()
    await asyncio.gather(*(run(*c) for c in conns))
    elapsed = time.perf_counter() - started
    await _close(conns)
    return counts["ok"] / elapsed, counts["ok"], counts["failed"]


async def open_loop(port: int, requests: list[bytes], *, rate: float, connections: int) -> tuple[list[float], int]:
    """Send ``requests`` at ``rate``/s on a pool of connections; latencies (s) from each
    request's scheduled time, so a stall counts against every request it delays."""
    conns = await _connect(port, connections)
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for c in conns:
        idle.put_nowait(c)
    latencies: list[float] = []
    failed = 0

    async def one(raw: bytes, due: float) -> None:
        nonlocal failed
        reader, writer = await idle.get()
        status = await _exchange(reader, writer, raw)
        latencies.append(time.perf_counter() - due)
        failed += status != 200
        idle.put_nowait((reader, writer))

    tasks = []
    start = time.perf_counter()
    for k, raw in enumerate(requests):
        due = start + k / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(one(raw, due)))
    await asyncio.gather(*tasks)
    await _close(conns)
    return latencies, failed


@dataclass
class Measured:
    target: str
    fsync: str
    #: Median over the rounds of closed-loop requests/s.
    requests_per_s: float
    #: Each round's requests/s (targets take turns, so a noisy neighbour hits them alike).
    rounds: list[float]
    failed: int
    p50_ms_at_half_rate: float
    p99_ms_at_half_rate: float
    #: 200s over the warm-up, throughput and latency phases.
    acked: int


@dataclass
class _Server:
    """One target under load: where it listens, its pre-signed requests and its tallies."""

    target: Target
    label: str
    port: int
    next_id: int = 0
    rounds: list[float] = field(default_factory=list)
    acked: int = 0
    failed: int = 0
    next_batch: list[bytes] = field(default_factory=list)

    def take(self, count: int) -> list[bytes]:
        batch = prepare(self.target, self.port, self.next_id, count)
        self.next_id += count
        return batch

    def load(self, requests: list[bytes], *, connections: int, duration_s: float) -> float:
        rps, ok, failed = asyncio.run(closed_loop(self.port, requests, connections=connections, duration_s=duration_s))
        self.acked += ok
        self.failed += failed
        return rps


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def measure_round_robin(servers: list[_Server], fsync: str, *, duration_s: float, rounds: int,
                        connections: int) -> list[Measured]:
    """Warm each server up, then ``rounds`` rounds in which each takes ``duration_s / rounds``
    of closed-loop load in turn; then each one's ack latency at half its median rate."""
    slice_s = duration_s / rounds
    for server in servers:
        # Imports, pools, the Slack identity; and a rate to size the pre-signed batches by.
        rate = server.load(server.take(400), connections=connections, duration_s=1.0)
        server.rounds = []
        server.next_batch = server.take(int(max(rate, 100) * slice_s * 2))
    for _ in range(rounds):
        for server in servers:
            batch = server.next_batch
            server.rounds.append(server.load(batch, connections=connections, duration_s=slice_s))
            server.next_batch = server.take(len(batch))
    measured = []
    for server in servers:
        median = statistics.median(server.rounds)
        paced = server.take(int(median / 2 * min(slice_s, 5.0)))
        latencies, late_failed = asyncio.run(open_loop(server.port, paced, rate=median / 2, connections=connections))
        measured.append(Measured(
            server.label, fsync if server.target != "bare" else "-", round(median, 1), [round(r, 1) for r in server.rounds],
            server.failed + late_failed, round(_percentile(latencies, 0.5) * 1000, 2),
            round(_percentile(latencies, 0.99) * 1000, 2), server.acked + len(latencies) - late_failed,
        ))
    return measured


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        _serve(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="python -m bench.bench_ingest")
    parser.add_argument("--duration", type=float, default=12.0, help="seconds of closed-loop load per target (≤ 20)")
    parser.add_argument("--rounds", type=int, default=4, help="the duration is split into this many turns per target")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--targets", default="webhook,telegram,slack")
    parser.add_argument("--phases", default="fsync,replicas",
                        help="fsync: always vs everysec on one server; replicas: a primary and a replica, "
                             "durable_replicas 1 vs 0 (webhook only)")
    parser.add_argument("--compare-tree", type=Path, default=None,
                        help="also measure every target on the edge of this checkout (its bench/ must hold this "
                             "file's serve command; copy it there if not)")
    args = parser.parse_args(argv)
    duration = min(args.duration, 20.0)
    targets: list[Target] = [t for t in ("webhook", "telegram", "slack") if t in args.targets.split(",")]  # type: ignore[misc]

    from tests.fakes.slack_api import FakeSlack
    from tests.fakes.telegram_api import FakeTelegram

    results: list[Measured] = []
    with tempfile.TemporaryDirectory(prefix="ocsgw-bench-ingest-") as tmp, FakeTelegram() as telegram, FakeSlack() as slack:
        telegram.add_bot(TELEGRAM_TOKEN, username="bench_bot")
        slack.add_workspace("T1", token=SLACK_TOKEN)
        apis = ("--telegram-api", telegram.url, "--slack-api", slack.api_url)
        spawned: list[subprocess.Popen[bytes]] = []
        try:
            bare, bare_port = _spawn("bare")
            spawned.append(bare)
            bare_other_port = 0
            if args.compare_tree:
                # The other tree's bare handler too: its edge's share is of a handler under its own
                # server (another uvicorn, another HTTP parser or loop, when that is what differs).
                bare_other, bare_other_port = _spawn("bare", tree=args.compare_tree)
                spawned.append(bare_other)
            for fsync in ("always", "everysec") if "fsync" in args.phases.split(",") else ():
                with EmbeddedRedis(Path(tmp) / fsync, fsync=fsync) as redis_url:  # type: ignore[arg-type]
                    edge, edge_port = _spawn("edge", "--redis-url", redis_url, *apis)
                    spawned.append(edge)
                    servers = [_Server("bare", "bare", bare_port)]
                    if bare_other_port:
                        servers.append(_Server("bare", f"bare@{args.compare_tree.name}", bare_other_port))
                    other_port = 0
                    if args.compare_tree:
                        # Its own database, so ids claimed by one edge are not duplicates for the other.
                        other, other_port = _spawn("edge", "--redis-url", redis_url.rsplit("/", 1)[0] + "/1", *apis,
                                                   tree=args.compare_tree)
                        spawned.append(other)
                    for t in targets:
                        # Each target's other-tree twin takes its turn right after it, so the two
                        # meet the same neighbours' load in every round.
                        servers.append(_Server(t, t, edge_port))
                        if other_port:
                            servers.append(_Server(t, f"{t}@{args.compare_tree.name}", other_port))
                    queue = redis.Redis.from_url(redis_url)
                    before = int(queue.llen(QUEUE_KEY))
                    measured = measure_round_robin(servers, fsync, duration_s=duration, rounds=args.rounds,
                                                   connections=args.connections)
                    queued = int(queue.llen(QUEUE_KEY)) - before
                    queue.close()
                    acked = sum(m.acked for m in measured if m.target in targets)
                    for m in measured:
                        _report(m)
                    print(f"fsync={fsync}: {acked} acknowledged by the edge, {queued} wake-ups queued", flush=True)
                    results += measured
                    keep = 2 if bare_other_port else 1  # the bare handlers serve both fsync settings
                    for process in spawned[keep:]:
                        process.terminate()
                        process.wait(timeout=30)
                    del spawned[keep:]
            if "replicas" in args.phases.split(","):
                results += _replicated_phase(Path(tmp), bare_port, apis, duration=duration, rounds=args.rounds,
                                             connections=args.connections)
        finally:
            for process in spawned:
                process.terminate()
                process.wait(timeout=30)
    print(json.dumps(_summary(results, args.compare_tree.name if args.compare_tree else None), indent=2))


def _replicated_phase(tmp: Path, bare_port: int, apis: tuple[str, ...], *, duration: float, rounds: int,
                      connections: int) -> list[Measured]:
    """A primary (AOF, fsync everysec: in this topology the replicas carry the guarantee) and
    one replica; an edge with durable_replicas 0 and one with 1 (its own database) take turns."""
    results: list[Measured] = []
    with EmbeddedRedis(tmp / "primary", fsync="everysec") as primary_url:
        primary_port = primary_url.rsplit(":", 1)[1].split("/")[0]
        with EmbeddedRedis(tmp / "replica", fsync="everysec",
                           extra_args=("--replicaof", "127.0.0.1", primary_port, "--repl-diskless-sync-delay", "0")):
            client = redis.Redis.from_url(primary_url)
            deadline = time.monotonic() + 30
            while int(client.info("replication").get("connected_slaves", 0)) < 1:
                if time.monotonic() > deadline:
                    raise RuntimeError("the replica did not connect")
                time.sleep(0.1)
            client.close()
            plain, plain_port = _spawn("edge", "--redis-url", primary_url, *apis)
            waiting, waiting_port = _spawn("edge", "--redis-url", primary_url.rsplit("/", 1)[0] + "/1", *apis,
                                           "--durable-replicas", "1")
            try:
                servers = [_Server("bare", "bare", bare_port), _Server("webhook", "webhook", plain_port),
                           _Server("webhook", "webhook+WAIT", waiting_port)]
                measured = measure_round_robin(servers, "everysec+replica", duration_s=duration, rounds=rounds,
                                               connections=connections)
                for m in measured:
                    _report(m)
                results += measured[1:]  # the bare handler was measured in the fsync phase
                if not any(m.target == "bare" for m in results):
                    results.insert(0, measured[0])
            finally:
                for process in (plain, waiting):
                    process.terminate()
                    process.wait(timeout=30)
    return results


def _report(m: Measured) -> None:
    print(f"{m.target:18} fsync={m.fsync:8} {m.requests_per_s:8.1f} req/s (rounds {m.rounds})  failed={m.failed:<3} "
          f"p50={m.p50_ms_at_half_rate:6.2f} ms  p99={m.p99_ms_at_half_rate:6.2f} ms at half rate", flush=True)


def _summary(results: list[Measured], compared: str | None = None) -> dict[str, Any]:
    """Every figure, plus each edge route's median rate as a share of the bare handler's, from
    the same rounds; with a compared tree, each target's rate over that tree's, round by round."""
    ratios: dict[str, float] = {}
    bares: dict[str, float] = {}  # the latest measured of each bare handler: the same rounds as what follows it
    for m in results:
        if m.target.split("@")[0] == "bare":
            bares[m.target] = m.requests_per_s
            continue
        tree = m.target.partition("@")[2]
        bare_name = f"bare@{tree}" if f"bare@{tree}" in bares else "bare"
        bare_rate = bares.get(bare_name, 0.0)
        if bare_rate:
            ratios[f"{m.target}/{bare_name} (fsync {m.fsync})"] = round(m.requests_per_s / bare_rate, 3)
    by = {(m.target, m.fsync): m.requests_per_s for m in results}
    cost = {t: round(by[(t, "always")] / by[(t, "everysec")], 3) for t in ("webhook", "telegram", "slack")
            if (t, "always") in by and (t, "everysec") in by}
    summary: dict[str, Any] = {"results": [asdict(m) for m in results], "edge_over_bare": ratios, "always_over_everysec": cost}
    replicated = {m.target: m for m in results if m.fsync == "everysec+replica"}
    if "webhook" in replicated and "webhook+WAIT" in replicated:
        mine, theirs = replicated["webhook+WAIT"].rounds, replicated["webhook"].rounds
        each = [a / b for a, b in zip(mine, theirs, strict=True) if b]
        summary["durable_replicas_1_over_0"] = {
            "median_rate": round(replicated["webhook+WAIT"].requests_per_s / replicated["webhook"].requests_per_s, 3),
            "per_round_min": round(min(each), 3), "per_round_max": round(max(each), 3),
            "p50_ms": [replicated["webhook"].p50_ms_at_half_rate, replicated["webhook+WAIT"].p50_ms_at_half_rate],
            "p99_ms": [replicated["webhook"].p99_ms_at_half_rate, replicated["webhook+WAIT"].p99_ms_at_half_rate],
        }
    if compared:
        rounds = {(m.target, m.fsync): m.rounds for m in results}
        versus: dict[str, dict[str, float]] = {}
        for (target, fsync), mine in rounds.items():
            theirs = rounds.get((f"{target}@{compared}", fsync))
            if theirs:
                each = [a / b for a, b in zip(mine, theirs, strict=True) if b]
                versus[f"{target} (fsync {fsync})"] = {
                    "median": round(statistics.median(each), 3), "min": round(min(each), 3), "max": round(max(each), 3)}
        summary[f"this_over_{compared}_per_round"] = versus
    return summary


if __name__ == "__main__":
    main()
