"""Capacity of ONE worker process (the asyncio turn runner) against the OCS simulator, with the
thread-per-turn design as the baseline in the same run.

Everything is real and local, each part in its own process so the worker's CPU is its own: an
embedded redis-server, the simulator (``serve-sim`` below: ``SimulatorState.demo`` under uvicorn,
50 ms round trip on every exchange, fixed bot latency), a callback receiver (``serve-receiver``:
verifies every signature, records each callback's arrival), and ``ocs-gateway worker``
subprocesses with production tuning (the OCS request budget raised out of the way, no
bot-initiated polls). Turns are admitted the way the edge stores them (one ``Admitter`` EVALSHA per
event, the Dramatiq wake-up included), one conversation each, all at once.

Phases, in one run (``--phases``): one worker (turns/s, peak turns waiting on OCS, RSS, CPU per
turn per process, Redis commands per turn from INFO commandstats, the admission's share
subtracted), the same worker idle after that work, two workers (ratio to one), the baseline (a
Dramatiq actor holding one of 8 threads for a whole turn), a worker idle on an empty Redis, Redis
client commands per turn counted by MONITOR (script-internal commands apart), optionally a worker
sampled by ``profile_worker``, and with ``--capacity N`` N turns at 30 s latency.

    python bench/bench_turns.py --turns 5000 --baseline-turns 64 --idle-s 20 --capacity 5000 --monitor-turns 500
    python bench/bench_turns.py --phases profile --turns 3000 --idle-s 0 --monitor-turns 0

The harness helpers here (processes, config, injection, counters) are shared with
bench_reply_delay.py and bench_budget.py. Prints a JSON summary.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.core.keys import Keys
from gateway.core.models import ConversationKey, Inbound, InboundKind
from gateway.ocs.simulator import DEMO_CHATBOT_ID
from gateway.store.embedded_redis import EmbeddedRedis, _free_port
from gateway.store.inbox import Admitter, WakeQueue
from workers.broker import ADVANCE, NAMESPACE, QUEUE

__all__ = [
    "HOOK_SECRET",
    "Callback",
    "Reply",
    "Stack",
    "commandstats",
    "cpu_s",
    "inject",
    "main",
    "percentile",
    "profile_worker",
    "rss_mb",
    "serve_receiver",
    "serve_sim",
    "stack",
    "write_config",
]

HOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#: Out of the way of a capacity run (the budget has its own benchmark).
UNLIMITED_BUDGET = {"requests_per_window": 100_000_000, "session_requests_per_window": 1_000_000,
                    "starts_per_window": 100_000_000}
_SCRIPT = str(Path(__file__).resolve())


# -- the simulator and the receiver, each served in a process of its own ---------------------

def serve_sim(port: int) -> None:
    """The simulator, plus ``GET /_bench/tasks``: ``{task_id: [user text, completed_at|null,
    accepted_at]}`` (epoch s),
    so a benchmark can tie a task to the turn that sent it, ``GET /_bench/polls``: ``{task_id:
    polls}``, the task polls each task received (counted as they come in), and ``POST
    /_bench/progress_lines`` (a JSON list): the ``progress_lines`` knob."""
    import uvicorn
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from gateway.ocs.simulator import SimulatorState, create_simulator_app

    state = SimulatorState.demo(f"http://127.0.0.1:{port}")
    app = create_simulator_app(state)

    async def tasks(request: Request) -> JSONResponse:
        done = state.completed_tasks()
        return JSONResponse({tid: [task.text, done.get(tid), task.accepted_at.timestamp()]
                             for tid, task in list(state.tasks.items())})

    polls: dict[str, int] = {}

    async def task_polls(request: Request) -> JSONResponse:
        return JSONResponse(polls)

    async def progress_lines(request: Request) -> JSONResponse:
        # POST /_simulator/knobs refuses this knob (its checks know no tuple), so set it here.
        state.knobs.progress_lines = tuple(str(line) for line in json.loads(await request.body()))
        return JSONResponse(list(state.knobs.progress_lines))

    app.router.routes.append(Route("/_bench/tasks", tasks, methods=["GET"]))
    app.router.routes.append(Route("/_bench/polls", task_polls, methods=["GET"]))
    app.router.routes.append(Route("/_bench/progress_lines", progress_lines, methods=["POST"]))

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        # /api/chat/{session}/{task}/poll/: counted on arrival, whatever the simulator answers.
        parts = scope.get("path", "").strip("/").split("/") if scope["type"] == "http" else []
        if len(parts) == 5 and parts[:2] == ["api", "chat"] and parts[4] == "poll":
            polls[parts[3]] = polls.get(parts[3], 0) + 1
        await app(scope, receive, send)

    uvicorn.run(counting, host="127.0.0.1", port=port, log_level="warning")


def serve_receiver(port: int) -> None:
    """A callback receiver: verifies each signature and records ``[conversation_id, in_reply_to,
    arrival epoch s, text]`` for the first callback of each turn (by ``in_reply_to``, else the
    conversation). ``GET /count``: turns answered, callbacks in all, and repeats (a second callback
    for a turn: same ``webhook-id``, which a receiver may drop, or a new one, which it cannot).
    ``GET /replies``: the first callbacks. Progress callbacks (``type: progress``) are no answer:
    they are only in ``GET /all?since=N``, every callback from the N-th on as ``[type,
    conversation_id, in_reply_to, in_reply_to_all, arrival epoch s, text]``."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from adapters.webhook import signing

    key = signing.decode_secret(HOOK_SECRET)
    got: dict[str, list[Any]] = {}
    ids: dict[str, set[str]] = {}
    tally = {"callbacks": 0, "same_id_repeats": 0, "new_id_repeats": 0}
    every: list[list[Any]] = []

    async def callback(request: Request) -> JSONResponse:
        arrived = time.time()  # the request line and headers are in: the send's first byte is long past
        body = await request.body()
        headers = {k.lower(): v for k, v in request.headers.items()}
        signing.verify(key, headers, body)
        data = json.loads(body)
        kind = str(data.get("type", "message"))
        every.append([kind, data["conversation_id"], data.get("in_reply_to"), data.get("in_reply_to_all", []),
                      arrived, data.get("text", "")])
        if kind == "progress":
            return JSONResponse({"ok": True})
        turn = str(data.get("in_reply_to") or data["conversation_id"])
        tally["callbacks"] += 1
        seen = ids.setdefault(turn, set())
        if turn in got:
            tally["same_id_repeats" if headers["webhook-id"] in seen else "new_id_repeats"] += 1
        else:
            got[turn] = [data["conversation_id"], data.get("in_reply_to"), arrived, data.get("text", "")]
        seen.add(headers["webhook-id"])
        return JSONResponse({"ok": True})

    async def count(request: Request) -> JSONResponse:
        return JSONResponse({"count": len(got), **tally})

    async def replies(request: Request) -> JSONResponse:
        return JSONResponse(list(got.values()))

    async def all_callbacks(request: Request) -> JSONResponse:
        return JSONResponse(every[int(request.query_params.get("since", "0")):])

    app = Starlette(routes=[
        Route("/cb", callback, methods=["POST"]),
        Route("/count", count, methods=["GET"]),
        Route("/replies", replies, methods=["GET"]),
        Route("/all", all_callbacks, methods=["GET"]),
    ])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="error")


_GROUPS = (("httpx", "http client"), ("httpcore", "http client"), ("h11", "http client"), ("anyio", "http client"),
           ("sniffio", "http client"), ("redis", "redis client"), ("dramatiq", "dramatiq"),
           ("pydantic", "pydantic"), ("/gateway/", "gateway"), ("/workers/", "workers"), ("/adapters/", "adapters"))


def _group(filename: str) -> str | None:
    for needle, group in _GROUPS:
        if f"/{needle}/" in filename or (needle.startswith("/") and needle in filename):
            return group
    return None


def profile_worker(config: str, out: str, interval_s: float = 0.005) -> None:
    """``ocs-gateway worker`` with a sampler on the turn runner's thread (the event loop): every
    ``interval_s`` it records which package the innermost non-stdlib frame belongs to (stdlib
    calls such as json or ssl count for the library that made them) and the innermost function.
    Written to ``out`` (JSON) when the worker stops."""
    from collections import Counter

    from gateway.cli import main as cli_main

    by_group: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    stop = threading.Event()

    def sample() -> None:
        runner_id = None
        while not stop.is_set():
            time.sleep(interval_s)
            if runner_id is None:
                runner_id = next((t.ident for t in threading.enumerate() if t.name == "ocsgw-runner"), None)
                continue
            frame = sys._current_frames().get(runner_id)
            if frame is None:
                continue
            top = frame
            if top.f_code.co_name == "select" and "selectors" in top.f_code.co_filename:
                by_group["idle (waiting in select)"] += 1
                continue
            group = None
            while frame is not None and group is None:
                group = _group(frame.f_code.co_filename)
                frame = frame.f_back
            by_group[group or "stdlib (asyncio loop, other)"] += 1
            code = top.f_code
            by_function[f"{Path(code.co_filename).name}:{code.co_name}"] += 1

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        cli_main(["--config", config, "worker"])
    finally:
        stop.set()
        total = sum(by_group.values()) or 1
        Path(out).write_text(json.dumps({
            "samples": total,
            "share_by_package": {k: round(v / total, 3) for k, v in by_group.most_common()},
            "top_functions": {k: round(v / total, 3) for k, v in by_function.most_common(25)},
        }, indent=2))


@dataclass(frozen=True)
class Reply:
    conversation: str
    in_reply_to: str | None
    arrived: float
    text: str


@dataclass(frozen=True)
class Callback:
    """One callback as the receiver got it: ``kind`` is ``message`` or ``progress``."""

    kind: str
    conversation: str
    in_reply_to: str | None
    in_reply_to_all: tuple[str, ...]
    arrived: float
    text: str


def _wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@dataclass
class Stack:
    """The processes of one benchmark run, and how to read them."""

    tmp: Path
    redis_url: str
    sim_url: str
    receiver_url: str
    http: httpx.Client
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: The simulator's and the receiver's process ids.
    servers: dict[str, int] = field(default_factory=dict)
    #: Overrides the workers' Redis pool size (URL options beat ``from_url``'s arguments); 0 keeps
    #: the gateway's own (gateway/services.py).
    redis_pool: int = 0

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    # simulator
    def knobs(self, **knobs: Any) -> dict[str, Any]:
        response = self.http.post(f"{self.sim_url}/_simulator/knobs", json=knobs)
        response.raise_for_status()
        return dict(response.json())

    def sim_counts(self) -> dict[str, int]:
        stats = self.http.get(f"{self.sim_url}/_simulator/stats").json()
        return {**stats["request_counts"], "waf_blocked": stats["waf_blocked"]}

    def sim_tasks(self) -> dict[str, tuple[str, float | None, float]]:
        """Every task OCS accepted: its user text, when its answer became pollable (None while
        running) and when it was accepted (epoch s)."""
        tasks = self.http.get(f"{self.sim_url}/_bench/tasks", timeout=60).json()
        return {tid: (text, done, accepted) for tid, (text, done, accepted) in tasks.items()}

    def progress_lines(self, lines: Sequence[str]) -> None:
        """The simulator's ``progress_lines`` knob (the lines a running task reports in turn)."""
        self.http.post(f"{self.sim_url}/_bench/progress_lines", json=list(lines)).raise_for_status()

    def sim_task_polls(self) -> dict[str, int]:
        """Task polls each task has received so far, by task id."""
        return {tid: int(n) for tid, n in self.http.get(f"{self.sim_url}/_bench/polls", timeout=60).json().items()}

    # receiver
    def callbacks(self, since: int = 0) -> list[Callback]:
        """Every callback from the ``since``-th on, answers and progress alike, in arrival order."""
        rows = self.http.get(f"{self.receiver_url}/all", params={"since": since}, timeout=60).json()
        return [Callback(kind, conv, reply_to, tuple(reply_to_all), arrived, text)
                for kind, conv, reply_to, reply_to_all, arrived, text in rows]

    def reply_count(self) -> int:
        """Turns answered (repeated callbacks for a turn not counted)."""
        return int(self.http.get(f"{self.receiver_url}/count").json()["count"])

    def callback_tally(self) -> dict[str, int]:
        """Callbacks in all, and repeats for turns already answered (same or new webhook-id)."""
        return {k: int(v) for k, v in self.http.get(f"{self.receiver_url}/count").json().items() if k != "count"}

    def replies(self) -> list[Reply]:
        return [Reply(*row) for row in self.http.get(f"{self.receiver_url}/replies", timeout=60).json()]

    # workers
    def start_worker(self, config: Path, profile_out: Path | None = None) -> subprocess.Popen[bytes]:
        """``ocs-gateway worker`` in a process of its own; with ``profile_out``, sampled (``profile_worker``)."""
        env = {**os.environ, "BENCH_OCS_SECRET": "demo-secret", "BENCH_HOOK_SECRET": HOOK_SECRET, "LOG_LEVEL": "WARNING"}
        args = [sys.executable, "-m", "gateway.cli", "--config", str(config), "worker"]
        if profile_out is not None:
            args = [sys.executable, _SCRIPT, "profile-worker", str(config), str(profile_out)]
        worker = subprocess.Popen(args, cwd=ROOT, env=env)
        self.workers.append(worker)
        return worker

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.terminate()
        for worker in self.workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        self.workers.clear()

    def wait_replies(self, total: int, timeout: float, on_tick: Callable[[], None] | None = None, tick_s: float = 0.2) -> int:
        """Until the receiver has ``total`` callbacks (or the timeout); returns the count."""
        deadline = time.monotonic() + timeout
        count = self.reply_count()
        while count < total and time.monotonic() < deadline:
            if on_tick is not None:
                on_tick()
            time.sleep(tick_s)
            count = self.reply_count()
        return count


@contextmanager
def stack(rtt_s: float = 0.05) -> Iterator[Stack]:
    """Redis, the simulator (``rtt_s`` on every exchange) and the receiver, torn down on exit."""
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        with EmbeddedRedis(tmp / "redis", persist=False) as redis_url:
            sim_port, receiver_port = _free_port(), _free_port()
            procs = [
                subprocess.Popen([sys.executable, _SCRIPT, "serve-sim", str(sim_port)], cwd=ROOT),
                subprocess.Popen([sys.executable, _SCRIPT, "serve-receiver", str(receiver_port)], cwd=ROOT),
            ]
            s = Stack(tmp, redis_url, f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{receiver_port}",
                      httpx.Client(timeout=30))
            s.servers = {"simulator": procs[0].pid, "receiver": procs[1].pid,
                         "redis": int(redis.Redis.from_url(redis_url).info("server")["process_id"])}
            try:
                _wait_http(f"{s.sim_url}/_simulator/stats")
                _wait_http(f"{s.receiver_url}/count")
                s.knobs(rtt_s=rtt_s)
                yield s
            finally:
                s.stop_workers()
                for proc in procs:
                    proc.terminate()
                for proc in procs:
                    proc.wait(timeout=30)
                s.http.close()


def write_config(s: Stack, name: str, bots: Mapping[str, Mapping[str, Any]], worker: Mapping[str, Any],
                 channels: Mapping[str, tuple[str, Mapping[str, Any]]] | None = None) -> Path:
    """A gateway config: one webhook channel per bot (named like the bot) calling back the
    receiver; ``bots`` maps a name to extra bot settings (``budget``, ...). ``channels``, when
    given, replaces those channels: a name to its bot and extra channel settings (``coalesce``,
    ``show_progress``, ...). ``s.redis_pool``, when set, becomes the workers' Redis pool size
    (redis-py reads ``max_connections`` from the URL)."""
    url = f"{s.redis_url}?max_connections={s.redis_pool}" if s.redis_pool else s.redis_url
    lines = [f"redis_url: {url}", "bots:"]
    for bot, extra in bots.items():
        lines += [f"  {bot}:", f"    base_url: {s.sim_url}", f"    chatbot_id: {DEMO_CHATBOT_ID}",
                  "    client_id: demo-client", "    client_secret: ${BENCH_OCS_SECRET}"]
        lines += [f"    {k}: {json.dumps(v)}" for k, v in extra.items()]
    lines.append("channels:")
    for channel, (bot, settings) in (channels or {bot: (bot, {}) for bot in bots}).items():
        lines += [f"  {channel}:", "    type: webhook", f"    bot: {bot}", "    secret: ${BENCH_HOOK_SECRET}",
                  f"    callback_url: {s.receiver_url}/cb"]
        lines += [f"    {k}: {json.dumps(v)}" for k, v in settings.items()]
    lines.append("worker:")
    lines += [f"  {k}: {json.dumps(v)}" for k, v in worker.items()]
    path = s.tmp / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


# -- driving and measuring -------------------------------------------------------------------

def _inbound(channel: str, conv: str, text: str, event_id: str) -> Inbound:
    return Inbound(key=ConversationKey(channel, conv), event_id=event_id, kind=InboundKind.MESSAGE, sender_id=conv,
                   text=text, route={"conversation_id": conv, "in_reply_to": event_id}, received_at=time.time())


async def inject(redis_url: str, items: Sequence[tuple[str, str, str, str]], *, rate: float | None = None,
                 queue: str = QUEUE, concurrency: int = 64) -> dict[str, float]:
    """Admit ``(channel, conversation, text, event_id)`` items as the edge does; ``rate`` per
    second, or all at once. Returns each event id's admission time (epoch s)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    admitter = Admitter(client, Keys(), dedup_ttl_s=3600, wake=WakeQueue.new(namespace=NAMESPACE, queue=queue, actor=ADVANCE))
    admitted: dict[str, float] = {}
    gate = asyncio.Semaphore(concurrency)
    start = time.monotonic()

    async def one(n: int, item: tuple[str, str, str, str]) -> None:
        channel, conv, text, event_id = item
        if rate:
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        async with gate:
            await admitter(_inbound(channel, conv, text, event_id))
            admitted[event_id] = time.time()

    try:
        await asyncio.gather(*(one(n, item) for n, item in enumerate(items)))
    finally:
        await client.aclose()
    return admitted


def inject_in_thread(
    redis_url: str, items: Sequence[tuple[str, str, str, str]], *, rate: float | None = None
) -> tuple[threading.Thread, dict[str, float]]:
    admitted: dict[str, float] = {}
    thread = threading.Thread(target=lambda: admitted.update(asyncio.run(inject(redis_url, items, rate=rate))), daemon=True)
    thread.start()
    return thread, admitted


def commandstats(client: redis.Redis) -> dict[str, int]:
    """Calls per command since start-up (commands run inside scripts included), minus INFO."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items() if name != "cmdstat_info"}


def _delta(after: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}


def rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def _turn_times(replies: Sequence[Reply], admitted: Mapping[str, float]) -> dict[str, float]:
    times = [r.arrived - admitted[r.in_reply_to] for r in replies if r.in_reply_to is not None and r.in_reply_to in admitted]
    return {"p50_s": round(statistics.median(times), 2), "p95_s": round(percentile(times, 95), 2)} if times else {}


def _admit_cost(s: Stack, turns: int = 200) -> dict[str, float]:
    """Redis commands one admission costs (the edge's share, subtracted from the worker's):
    admissions onto a queue no worker reads, in a database then flushed."""
    client = s.redis
    client.flushdb()
    before = commandstats(client)
    items = [("bench", f"calib-{n}", "calibration", f"calib-{n}") for n in range(turns)]
    asyncio.run(inject(s.redis_url, items, queue="bench-calibration"))
    cost = _delta(commandstats(client), before)
    client.flushdb()
    return {k: v / turns for k, v in cost.items()}


def _capacity_config(s: Stack, name: str, latency_s: float) -> Path:
    bot = {"budget": UNLIMITED_BUDGET, "task_timeout_s": max(600.0, latency_s * 5)}
    return write_config(s, name, {"bench": bot}, {"watch_interval_s": 3600})


def _warm_up(s: Stack, tag: str) -> None:
    """One turn through every worker's path (OAuth token, schedule, connections) before counting."""
    count = s.reply_count()
    asyncio.run(inject(s.redis_url, [("bench", f"{tag}-warm", "warm up", f"{tag}-warm")]))
    if s.wait_replies(count + 1, 60) < count + 1:
        raise RuntimeError("the warm-up turn got no reply in 60 s: is the worker running?")


def run_workers(s: Stack, *, processes: int, turns: int, latency_s: float, tag: str,
                admit_cost: Mapping[str, float], idle_s: float = 0.0, profile: bool = False) -> dict[str, Any]:
    """``turns`` first messages at once into ``processes`` worker processes (the first one
    sampled by ``profile_worker`` when ``profile``)."""
    s.redis.flushdb()
    s.knobs(reply_latency_s=latency_s, reply_latency=None)
    config = _capacity_config(s, f"{tag}-config", latency_s)
    profile_out = s.tmp / f"{tag}-profile.json" if profile else None
    workers = [s.start_worker(config, profile_out if n == 0 else None) for n in range(processes)]
    _warm_up(s, tag)
    client = s.redis
    base_replies, base_sim, base_redis, base_tally = s.reply_count(), s.sim_counts(), commandstats(client), s.callback_tally()
    items = [("bench", f"{tag}-{n}", f"hello from {tag}-{n}", f"{tag}-{n}") for n in range(turns)]
    t0 = time.time()
    injector, admitted = inject_in_thread(s.redis_url, items)
    peak_waiting, peak_rss = 0, 0.0

    def sample() -> None:
        nonlocal peak_waiting, peak_rss
        sent = s.sim_counts()["message"] - base_sim["message"]
        peak_waiting = max(peak_waiting, sent - (s.reply_count() - base_replies))
        peak_rss = max(peak_rss, sum(rss_mb(w.pid) for w in workers))

    load_before = os.getloadavg()[0]
    pids = {**s.servers, **{f"worker{n}": w.pid for n, w in enumerate(workers)}}
    cpu_before = {name: cpu_s(pid) for name, pid in pids.items()}
    got = s.wait_replies(base_replies + turns, 900, sample, tick_s=0.25) - base_replies
    injector.join()
    replies = [r for r in s.replies() if r.in_reply_to in admitted]
    last = max((r.arrived for r in replies), default=time.time())
    elapsed = last - t0
    cpu = {name: cpu_s(pid) - cpu_before[name] for name, pid in pids.items()}
    redis_delta = _delta(commandstats(client), base_redis)
    sim_delta = _delta(s.sim_counts(), base_sim)
    worker_cmds = {k: v - admit_cost.get(k, 0.0) * turns for k, v in redis_delta.items()}
    result: dict[str, Any] = {
        "worker_processes": processes,
        "turns": turns,
        "delivered": got,
        "repeated_callbacks": _delta(s.callback_tally(), base_tally),
        "machine_load_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "admission_s": round(max(admitted.values()) - t0, 2),
        "seconds": round(elapsed, 2),
        "turns_per_s": round(got / elapsed, 1),
        "peak_waiting_on_ocs": peak_waiting,
        "turn_time": _turn_times(replies, admitted),
        "cpu_ms_per_turn": {name: round(v * 1000 / max(got, 1), 2) for name, v in cpu.items()},
        "cpu_busy_share": {name: round(v / elapsed, 2) for name, v in cpu.items()},
        "worker_rss_peak_mb": round(peak_rss, 1),
        "worker_rss_hwm_mb": round(sum(rss_mb(w.pid, "VmHWM") for w in workers), 1),
        "redis_commands_per_turn": round(sum(worker_cmds.values()) / turns, 1),
        "redis_scripts_per_turn": round(sum(v for k, v in worker_cmds.items() if k in ("evalsha", "eval")) / turns, 1),
        "redis_top_commands_per_turn": dict(sorted(((k, round(v / turns, 2)) for k, v in worker_cmds.items()),
                                                   key=lambda kv: -kv[1])[:12]),
        "ocs_requests_per_turn": {k: round(v / turns, 2) for k, v in sim_delta.items()},
    }
    if idle_s:
        time.sleep(3)  # leases released, last acks
        result["idle_after_work"] = _idle(s, idle_s)
    s.stop_workers()
    if profile_out is not None and profile_out.exists():
        result["profile"] = json.loads(profile_out.read_text())
    return result


def _idle(s: Stack, seconds: float) -> dict[str, Any]:
    client = s.redis
    before_redis, before_sim = commandstats(client), s.sim_counts()
    time.sleep(seconds)
    redis_delta = _delta(commandstats(client), before_redis)
    return {
        "seconds": seconds,
        "redis_commands_per_s": round(sum(redis_delta.values()) / seconds, 2),
        "redis_commands": redis_delta,
        "ocs_requests": _delta(s.sim_counts(), before_sim),
    }


def _script_names() -> dict[str, str]:
    """SHA → ``module.NAME`` of every ``LuaScript`` the gateway declares (for MONITOR's counts)."""
    import importlib
    import pkgutil

    import adapters
    import gateway
    import workers
    from gateway.store.lua import LuaScript

    names: dict[str, str] = {}
    for package in (gateway, workers, adapters):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if "simulator" in info.name or ".cli" in info.name or ".admin" in info.name:
                continue
            try:
                module = importlib.import_module(info.name)
            except ImportError:
                continue
            for attr, value in vars(module).items():
                if isinstance(value, LuaScript):
                    names[value.sha] = f"{info.name.rsplit('.', 1)[-1]}.{attr}"
    return names


_SCRIPT_NAMES: dict[str, str] = {}


class _Monitor(threading.Thread):
    """Counts the commands Redis receives (``MONITOR``): from clients, by command, apart from
    those run inside scripts (``[0 lua]``), which ``INFO commandstats`` cannot tell apart."""

    def __init__(self, redis_url: str) -> None:
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(redis_url)
        self.by_client: dict[str, int] = {}
        #: EVALSHA calls by the script's name (``_script_names``; Dramatiq's own and unknown ones by SHA).
        self.by_script: dict[str, int] = {}
        self.in_scripts = 0
        self.done = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        conn = self.client.connection_pool.get_connection()
        conn.send_command("MONITOR")
        conn.read_response()
        self.ready.set()
        while not self.done.is_set():
            line = conn.read_response()  # stop(): done is set, then a PING wakes this up
            text = line.decode(errors="replace") if isinstance(line, bytes) else str(line)
            if "[0 lua]" in text:
                self.in_scripts += 1
                continue
            command = text.split("] ", 1)[1].split(" ", 1)[0].strip('"').lower() if "] " in text else "?"
            if command != "info":
                self.by_client[command] = self.by_client.get(command, 0) + 1
            if command == "evalsha":
                sha = text.split("] ", 1)[1].split(" ", 2)[1].strip('"')
                name = _SCRIPT_NAMES.get(sha, sha[:12])
                self.by_script[name] = self.by_script.get(name, 0) + 1
        conn.disconnect()


def run_monitor(s: Stack, turns: int, latency_s: float) -> dict[str, Any]:
    """Redis calls per turn as the worker makes them: ``turns`` first messages at once into one
    worker while MONITOR counts client commands (each admission's one EVALSHA subtracted)."""
    s.redis.flushdb()
    s.knobs(reply_latency_s=latency_s, reply_latency=None)
    s.start_worker(_capacity_config(s, "monitor-config", latency_s))
    _warm_up(s, "mon")
    if not _SCRIPT_NAMES:
        _SCRIPT_NAMES.update(_script_names())
    monitor = _Monitor(s.redis_url)
    monitor.start()
    monitor.ready.wait(10)
    base, base_sim = s.reply_count(), s.sim_counts()
    items = [("bench", f"mon-{n}", f"hello from mon-{n}", f"mon-{n}") for n in range(turns)]
    asyncio.run(inject(s.redis_url, items))
    got = s.wait_replies(base + turns, 600) - base
    time.sleep(1)
    monitor.done.set()
    s.redis.ping()
    monitor.join(5)
    s.stop_workers()
    calls = dict(monitor.by_client)
    calls["evalsha"] = calls.get("evalsha", 0) - turns
    sim_delta = {k: v - base_sim.get(k, 0) for k, v in s.sim_counts().items() if v - base_sim.get(k, 0)}
    return {
        "turns": turns, "delivered": got,
        "client_commands_per_turn": round(sum(calls.values()) / turns, 1),
        "script_calls_per_turn": round((calls.get("evalsha", 0) + calls.get("eval", 0)) / turns, 1),
        "commands_inside_scripts_per_turn": round(monitor.in_scripts / turns, 1),
        "client_commands_by_name_per_turn": dict(sorted(((k, round(v / turns, 2)) for k, v in calls.items() if v),
                                                        key=lambda kv: -kv[1])),
        # Each OCS request is booked first (budget._ACQUIRE): these are what the bookings are for.
        "ocs_requests_per_turn": {k: round(v / turns, 2) for k, v in sim_delta.items()},
        # The admissions' own EVALSHA is in ``inbox._ADMIT``: subtract one per turn to read the worker's.
        "scripts_by_name_per_turn": dict(sorted(((k, round(v / turns, 2)) for k, v in monitor.by_script.items()),
                                                key=lambda kv: -kv[1])),
    }


def run_idle_empty(s: Stack, seconds: float) -> dict[str, Any]:
    s.redis.flushdb()
    s.start_worker(_capacity_config(s, "idle-config", 2.0))
    time.sleep(5)  # start-up done (its first sweep and renewal have run)
    result = _idle(s, seconds)
    s.stop_workers()
    return result


def run_baseline(s: Stack, turns: int, latency_s: float) -> dict[str, Any]:
    from bench.thread_per_turn import enqueue_turn

    s.redis.flushdb()
    s.knobs(reply_latency_s=latency_s, reply_latency=None)
    args = [sys.executable, str(ROOT / "bench" / "thread_per_turn.py"), s.redis_url, s.sim_url, f"{s.receiver_url}/cb", HOOK_SECRET]
    worker = subprocess.Popen(args, cwd=ROOT, env={**os.environ, "LOG_LEVEL": "WARNING"})
    s.workers.append(worker)
    time.sleep(2)
    base = s.reply_count()
    t0 = time.time()
    for n in range(turns):
        enqueue_turn(s.redis_url, f"base-{n}")
    got = s.wait_replies(base + turns, 900) - base
    replies = [r for r in s.replies() if r.conversation.startswith("base-")]
    elapsed = max(r.arrived for r in replies) - t0
    s.stop_workers()
    return {"design": "one Dramatiq thread held per turn, 8 threads", "turns": turns, "delivered": got,
            "seconds": round(elapsed, 2), "turns_per_s": round(got / elapsed, 2), "peak_waiting_on_ocs": 8,
            "turn_time": _turn_times([Reply(r.conversation, r.conversation, r.arrived, r.text) for r in replies],
                                     {f"base-{n}": t0 for n in range(turns)})}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=5000)
    parser.add_argument("--baseline-turns", type=int, default=64)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--rtt", type=float, default=0.05)
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument("--capacity", type=int, default=0, help="also: N turns at 30 s latency (peak waiting on OCS)")
    parser.add_argument("--phases", default="one,two,baseline,idle,monitor",
                        help="comma-separated, of: one,two,baseline,idle,monitor,profile (capacity: see --capacity)")
    parser.add_argument("--redis-pool", type=int, default=0, help="override the workers' Redis pool size (0: the gateway's own)")
    parser.add_argument("--monitor-turns", type=int, default=500, help="Redis calls per turn counted by MONITOR (0: skip)")
    args = parser.parse_args()
    results: dict[str, Any] = {"latency_s": args.latency, "rtt_s": args.rtt, "cpus": os.cpu_count()}
    results["redis_pool"] = args.redis_pool or "the gateway's own"
    with stack(args.rtt) as s:
        s.redis_pool = args.redis_pool
        cost = _admit_cost(s)
        results["admit_redis_commands"] = round(sum(cost.values()), 2)
        phases = set(args.phases.split(","))
        if "one" in phases:
            results["one"] = run_workers(s, processes=1, turns=args.turns, latency_s=args.latency, tag="one",
                                         admit_cost=cost, idle_s=args.idle_s)
            print(json.dumps(results["one"]), file=sys.stderr, flush=True)
        if "two" in phases:
            results["two"] = run_workers(s, processes=2, turns=args.turns, latency_s=args.latency, tag="two", admit_cost=cost)
            print(json.dumps(results["two"]), file=sys.stderr, flush=True)
        if "baseline" in phases:
            results["baseline"] = run_baseline(s, args.baseline_turns, args.latency)
        if "idle" in phases:
            results["idle_empty"] = run_idle_empty(s, args.idle_s)
        if "monitor" in phases and args.monitor_turns:
            results["redis_calls_monitor"] = run_monitor(s, args.monitor_turns, args.latency)
        if "profile" in phases:
            results["profile"] = run_workers(s, processes=1, turns=args.turns, latency_s=args.latency, tag="prof",
                                             admit_cost=cost, profile=True)
        if args.capacity:
            results["capacity_30s"] = run_workers(s, processes=1, turns=args.capacity, latency_s=30.0, tag="cap", admit_cost=cost)
    one, base = results.get("one"), results.get("baseline")
    if one and base:
        results["ratio_turns_per_s_vs_baseline"] = round(one["turns_per_s"] / base["turns_per_s"], 1)
    if one and "two" in results:
        results["ratio_two_vs_one"] = round(results["two"]["turns_per_s"] / one["turns_per_s"], 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "serve-sim":
        serve_sim(int(sys.argv[2]))
    elif len(sys.argv) == 3 and sys.argv[1] == "serve-receiver":
        serve_receiver(int(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "profile-worker":
        profile_worker(sys.argv[2], sys.argv[3])
    else:
        main()
